"""A small typed client for the controller's gRPC API, blocking (`Client`) and asyncio (`AsyncClient`).

    from banditspec.client import Client

    with Client("localhost:50050") as client:
        result = client.generate("Write a haiku about rain.", max_new_tokens=64)
        print(result.text, result.finish_reason, result.stats.tokens_per_second)
        for update in client.stream(messages=[{"role": "user", "content": "Tell me a story."}]):
            if isinstance(update, Round):
                print(update.text, end="", flush=True)

Results are plain dataclasses; a failed call raises `ClientError` with the gRPC status code.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import grpc

from banditspec.channels import open_aio_channel, open_channel
from banditspec.policy_names import POLICY_WIRE_VALUES
from banditspec.security import API_KEY_ENV, ClientTLS, bearer_metadata
from banditspec.v1 import generation_pb2, generation_pb2_grpc

__all__ = [
    "ArmInfo",
    "ArmStats",
    "AsyncClient",
    "Client",
    "ClientError",
    "GenerateOptions",
    "Result",
    "Round",
    "Stats",
    "build_request",
    "result_from_pb",
]

DEFAULT_ADDRESS = "127.0.0.1:50050"
DEFAULT_TIMEOUT = 300.0
FINISH_REASONS = {
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_EOS: "eos",
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_CONTEXT: "context",
}


class ClientError(Exception):
    """A call the controller refused or failed: `code` is its gRPC status, `details` its message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ArmStats:
    arm: str
    pulls: int
    drafted_tokens: int
    accepted_tokens: int
    mean_reward: float
    wall_seconds: float
    counterfactual_observations: int


@dataclass(frozen=True)
class Stats:
    rounds: int
    generated_tokens: int
    prompt_tokens: int
    wall_seconds: float
    tokens_per_second: float
    prefill_seconds: float
    controller_overhead_seconds: float
    controller_overhead_median_seconds: float
    policy: str
    seed: int
    arms: list[ArmStats]


@dataclass(frozen=True)
class Result:
    """A finished generation: `finish_reason` is one of length, eos, stop, context."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: Stats


@dataclass(frozen=True)
class Round:
    """One round of a stream: the arm played and the newly verified tokens and their text."""

    round: int
    arm: str
    drafted: int
    accepted: int
    token_ids: list[int]
    text: str
    wall_seconds: float
    service_seconds: float


@dataclass(frozen=True)
class ArmInfo:
    name: str
    draft_service: str
    drafter: str
    num_tokens: int


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of generate() and stream(), as build_request takes them."""

    messages: Sequence[Mapping[str, str]] | None
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    top_k: int
    seed: int | None
    stop: Sequence[str]
    policy: str | None
    allowed_arms: Sequence[str]
    request_id: str


def build_request(
    prompt: str | Sequence[int] | None = None,
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    max_new_tokens: int = 128,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int = 0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    policy: str | None = None,
    allowed_arms: Sequence[str] = (),
    request_id: str = "",
) -> generation_pb2.GenerateRequest:
    """The GenerateRequest for a text prompt, token ids, or chat `messages` (role and content)."""
    if (prompt is None) == (messages is None):
        raise ValueError("give either a prompt (text or token ids) or chat messages")
    request = generation_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens, top_k=top_k, stop=list(stop), allowed_arms=list(allowed_arms)
    )
    request.request_id = request_id
    if messages is not None:
        for message in messages:
            request.chat.messages.add(role=message["role"], content=message["content"])
    elif isinstance(prompt, str):
        request.text = prompt
    else:
        request.token_ids.ids.extend(prompt or [])
    if temperature is not None:
        request.temperature = temperature
    if top_p is not None:
        request.top_p = top_p
    if seed is not None:
        request.seed = seed
    if policy is not None:
        if policy not in POLICY_WIRE_VALUES:
            raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICY_WIRE_VALUES)}")
        request.policy = POLICY_WIRE_VALUES[policy]  # type: ignore[assignment]  # an enum int
    return request


def result_from_pb(pb: generation_pb2.GenerateResponse) -> Result:
    s = pb.stats
    stats = Stats(
        rounds=s.rounds,
        generated_tokens=s.generated_tokens,
        prompt_tokens=s.prompt_tokens,
        wall_seconds=s.wall_seconds,
        tokens_per_second=s.tokens_per_second,
        prefill_seconds=s.prefill_seconds,
        controller_overhead_seconds=s.controller_overhead_seconds,
        controller_overhead_median_seconds=s.controller_overhead_median_seconds,
        policy=s.policy,
        seed=s.seed,
        arms=[
            ArmStats(
                arm=a.arm,
                pulls=a.pulls,
                drafted_tokens=a.drafted_tokens,
                accepted_tokens=a.accepted_tokens,
                mean_reward=a.mean_reward,
                wall_seconds=a.wall_seconds,
                counterfactual_observations=a.counterfactual_observations,
            )
            for a in s.arms
        ],
    )
    return Result(
        request_id=pb.request_id,
        text=pb.text,
        token_ids=list(pb.token_ids),
        finish_reason=FINISH_REASONS.get(pb.finish_reason, "unspecified"),
        stats=stats,
    )


def _update(pb: generation_pb2.GenerateStreamResponse) -> Round | Result:
    if pb.HasField("final"):
        return result_from_pb(pb.final)
    r = pb.round
    return Round(
        round=r.round,
        arm=r.arm,
        drafted=r.drafted,
        accepted=r.accepted,
        token_ids=list(r.token_ids),
        text=r.text,
        wall_seconds=r.wall_seconds,
        service_seconds=r.service_seconds,
    )


def _arms(pb: generation_pb2.ListArmsResponse) -> list[ArmInfo]:
    return [ArmInfo(a.name, a.draft_service, a.drafter, a.num_tokens) for a in pb.arms]


def _error(error: grpc.RpcError) -> ClientError:
    return ClientError(error.code(), error.details() or "")


class _Base:
    def __init__(self, api_key: str | None, timeout: float | None) -> None:
        self.metadata = bearer_metadata(api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None)
        self.timeout = timeout

    def _call(self, timeout: float | None) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": timeout if timeout is not None else self.timeout}


class Client(_Base):
    """Blocking client. `tls`: a ClientTLS (CA, and a client certificate for mutual TLS), None for
    plaintext; `api_key`: None reads $BANDITSPEC_API_KEY; `timeout`: seconds per call (None: no deadline)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: ClientTLS | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(api_key, timeout)
        self.channel = open_channel(address, tls)
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)

    def generate(
        self,
        prompt: str | Sequence[int] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Result:
        """Options: messages, max_new_tokens, temperature, top_p, top_k, seed, stop, policy, allowed_arms,
        request_id (build_request)."""
        request = build_request(prompt, **options)
        try:
            return result_from_pb(self.stub.Generate(request, **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    def stream(
        self,
        prompt: str | Sequence[int] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Iterator[Round | Result]:
        """One Round per round, then the Result."""
        request = build_request(prompt, **options)
        call = self.stub.GenerateStream(request, **self._call(timeout))
        try:
            for update in call:
                yield _update(update)
        except grpc.RpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()  # a caller that stops early ends the generation

    def arms(self, *, timeout: float | None = None) -> list[ArmInfo]:
        try:
            return _arms(self.stub.ListArms(generation_pb2.ListArmsRequest(), **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio client: the same methods, awaited (`stream` is an async iterator)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: ClientTLS | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(api_key, timeout)
        self.channel = open_aio_channel(address, tls)
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)

    async def generate(
        self,
        prompt: str | Sequence[int] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Result:
        request = build_request(prompt, **options)
        try:
            return result_from_pb(await self.stub.Generate(request, **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    async def stream(
        self,
        prompt: str | Sequence[int] | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncIterator[Round | Result]:
        request = build_request(prompt, **options)
        call = self.stub.GenerateStream(request, **self._call(timeout))
        try:
            async for update in call:
                yield _update(update)
        except grpc.RpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()

    async def arms(self, *, timeout: float | None = None) -> list[ArmInfo]:
        try:
            return _arms(await self.stub.ListArms(generation_pb2.ListArmsRequest(), **self._call(timeout)))
        except grpc.RpcError as error:
            raise _error(error) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
