"""The controller's side of the wire: connections to the target and the draft services, and one
request's sessions on them.

Protobuf stays in this module. The round loop calls `TargetSession.verify(context, draft) -> Verdict`
and `DraftSession.propose(...) -> Proposal` and sees dataclasses only. A session owns what keeps it in
step with its service: the context length the service holds, the session's seed, reopening a session
the service lost (SESSION_LOST), the round stream, and the release. Every call has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from banditspec.channels import open_aio_channel
from banditspec.errors import is_session_lost
from banditspec.sampling import SamplingParams
from banditspec.security import ClientTLS
from banditspec.v1 import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from banditspec.verify_lengths import effective_forward_seconds
from services.controller.arms import Arm
from services.controller.domain import Deadline, Proposal, Verdict

log = structlog.get_logger()

RELEASE_TIMEOUT_SECONDS = 5.0


class DrafterFailed(Exception):
    """A draft service could not propose: its drafter's arms leave the request, which goes on."""


def session_seed(request_seed: int, context_length: int) -> int:
    """A session (re)opened at another context length gets fresh random streams: replaying the
    request's stream from its start would correlate new draws with tokens already in the context."""
    return (request_seed * 0x9E3779B97F4A7C15 + context_length) & 0x7FFF_FFFF_FFFF_FFFF


# target ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetInfo:
    model_name: str
    vocab_fingerprint: str
    vocab_size: int
    max_context: int
    max_sessions: int
    eos_token_ids: frozenset[int]
    decode_step_seconds: float
    forward_seconds: list[float]  # [k-1]: a cached forward of k tokens, measured at start-up
    verify_lengths: list[int]  # [n-1]: the forward length the target runs to verify n tokens
    verify_seconds: list[float]  # [n-1]: a verify of n tokens, padding included
    batch_forward_seconds: dict[int, float]  # tokens in a batched forward → seconds, measured at start-up

    @classmethod
    def from_pb(cls, pb: target_pb2.TargetInfoResponse) -> TargetInfo:
        forward, lengths = list(pb.forward_seconds), list(pb.verify_lengths)
        return cls(
            model_name=pb.model_name,
            vocab_fingerprint=pb.vocab_fingerprint,
            vocab_size=pb.vocab_size,
            max_context=pb.max_context,
            max_sessions=pb.max_sessions,
            eos_token_ids=frozenset(pb.eos_token_ids),
            decode_step_seconds=pb.decode_step_seconds,
            forward_seconds=forward,
            verify_lengths=lengths,
            verify_seconds=effective_forward_seconds(forward, lengths),
            batch_forward_seconds=dict(zip(pb.batch_forward_tokens, pb.batch_forward_seconds, strict=False)),
        )


class TargetClient:
    def __init__(self, address: str, tls: ClientTLS | None = None) -> None:
        self.address = address
        self.channel = open_aio_channel(address, tls)
        self.stub = target_pb2_grpc.TargetServiceStub(self.channel)
        self._info: TargetInfo | None = None

    async def connect(self, timeout: float) -> TargetInfo:
        await asyncio.wait_for(self.channel.channel_ready(), timeout)
        self._info = TargetInfo.from_pb(await self.stub.Info(target_pb2.TargetInfoRequest(), timeout=timeout))
        return self._info

    @property
    def info(self) -> TargetInfo:
        if self._info is None:
            raise RuntimeError("the target is not connected yet")
        return self._info

    def session(self, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline) -> TargetSession:
        return TargetSession(self, session_id, sampling, seed, deadline)

    async def close(self) -> None:
        await self.channel.close()


class TargetSession:
    """One request's session on the target: opened with the prompt, then one verify per round."""

    def __init__(
        self, client: TargetClient, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.sampling = sampling.to_pb()
        self.seed = seed
        self.deadline = deadline
        self.stream = RoundStream(client.stub.VerifyStream, deadline.stream_timeout())

    def _open_request(self, context: list[int]) -> target_pb2.OpenSessionRequest:
        return target_pb2.OpenSessionRequest(
            session_id=self.session_id,
            context_ids=context,
            sampling=self.sampling,
            seed=session_seed(self.seed, len(context)),
        )

    async def open(self, context: list[int]) -> float:
        """Prefill the prompt; returns the target's compute seconds."""
        response = await self.client.stub.OpenSession(self._open_request(context), timeout=self.deadline.timeout())
        return float(response.compute_seconds)

    async def verify(self, context: list[int], draft: Proposal) -> Verdict:
        """Verify `draft` after `context` (what the session holds); a lost session is reopened with the
        full context inside the retried verify, so no other request can evict it in between."""
        request = target_pb2.VerifyRequest(
            session_id=self.session_id,
            context_length=len(context),
            draft_ids=draft.token_ids,
            draft_probs=draft.probs,
        )
        try:
            response = await self.stream.exchange(request, self.deadline.timeout())
        except grpc.aio.AioRpcError as error:
            if not is_session_lost(error):
                raise
            log.warning("target lost the session; reopening with the full context", tokens=len(context))
            request.reopen.CopyFrom(self._open_request(context))
            response = await self.stream.exchange(request, self.deadline.timeout())
        return Verdict(
            list(response.token_ids),
            response.accepted,
            response.compute_seconds,
            response.batch_rows,
            response.batch_tokens,
            response.batch_forward_seconds,
        )

    async def release(self) -> None:
        """Free the session; a failure only costs memory until the target evicts it."""
        await self.stream.close()
        release = target_pb2.ReleaseSessionRequest(session_id=self.session_id)
        try:
            await self.client.stub.ReleaseSession(release, timeout=RELEASE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            log.info("release failed", service="target", code=error.code().name)


# draft services --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrafterEntry:
    """A drafter as the controller sees it: what it can be asked for, not how it drafts."""

    name: str
    model_free: bool  # cheap enough to be scored counterfactually every round
    learns_from_outputs: bool  # wants finished answers at release

    @classmethod
    def from_pb(cls, pb: draft_pb2.DrafterInfo) -> DrafterEntry:
        return cls(pb.name, pb.model_free, pb.learns_from_outputs)


class DraftClient:
    """One draft service; remembers its drafters and which of them the target accepts."""

    def __init__(self, name: str, address: str, tls: ClientTLS | None = None) -> None:
        self.name = name
        self.address = address
        self.channel = open_aio_channel(address, tls)
        self.stub = draft_pb2_grpc.DraftServiceStub(self.channel)
        self.drafters: list[DrafterEntry] = []
        self.refused: dict[str, str] = {}  # drafter name → why the controller will not use it

    async def refresh(self, target_fingerprint: str, timeout: float) -> None:
        response = await self.stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=timeout)
        usable, refused = [], {}
        for drafter in response.drafters:
            if drafter.vocab_fingerprint and drafter.vocab_fingerprint != target_fingerprint:
                refused[drafter.name] = (
                    f"drafter {drafter.name!r} on draft service {self.name!r} ({self.address}) has vocabulary "
                    f"fingerprint {drafter.vocab_fingerprint}, the target has {target_fingerprint}: its token ids "
                    "would not mean the same text, so it is not used"
                )
                if drafter.name not in self.refused:
                    log.warning("drafter refused", reason=refused[drafter.name])
            else:
                usable.append(DrafterEntry.from_pb(drafter))
        self.drafters, self.refused = usable, refused

    @property
    def learns_from_outputs(self) -> bool:
        return any(drafter.learns_from_outputs for drafter in self.drafters)

    def model_free_drafters(self) -> set[str]:
        return {drafter.name for drafter in self.drafters if drafter.model_free}

    def arms(self, model_free_gammas: list[int], model_gammas: list[int]) -> list[Arm]:
        return [
            Arm.drafted(self.name, drafter.name, gamma)
            for drafter in self.drafters
            for gamma in (model_free_gammas if drafter.model_free else model_gammas)
        ]

    def session(self, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline) -> DraftSession:
        return DraftSession(self, session_id, sampling, seed, deadline)

    async def close(self) -> None:
        await self.channel.close()


class DraftSession:
    """One request's session on one draft service, synced lazily: a proposal carries only the context
    the service has not seen; a service that lost the session gets the full context once."""

    def __init__(
        self, client: DraftClient, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.sampling = sampling.to_pb()
        self.seed = seed
        self.deadline = deadline
        self.synced: int | None = None  # context tokens the service holds; None: never contacted
        self.stream = RoundStream(client.stub.ProposeStream, deadline.stream_timeout())

    async def propose(
        self,
        context: list[int],
        drafter: str,
        num_tokens: int,
        score_drafters: list[str] | None = None,
        score_num_tokens: int = 0,
    ) -> Proposal:
        """Up to `num_tokens` draft tokens from `drafter`, and drafts of `score_drafters` to score.

        Raises DrafterFailed when the service cannot answer within the round; the request's own
        deadline passing is the caller's error and comes through as the RPC error."""
        for attempt in range(2):
            synced = self.synced or 0
            request = draft_pb2.ProposeRequest(
                session_id=self.session_id,
                drafter=drafter,
                num_tokens=num_tokens,
                context_length=synced,
                new_context_ids=context[synced:],
                sampling=self.sampling,
                seed=session_seed(self.seed, len(context)),
                score_drafters=score_drafters or [],
                score_num_tokens=score_num_tokens,
            )
            try:
                response = await self.stream.exchange(request, self.deadline.timeout())
            except TimeoutError as error:
                raise DrafterFailed("no proposal within the round deadline") from error
            except grpc.aio.AioRpcError as error:
                if is_session_lost(error) and attempt == 0:
                    self.synced = 0  # resend the full context
                    continue
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self.deadline.expired():
                    raise
                raise DrafterFailed(f"{error.code().name}: {error.details()}") from error
            self.synced = len(context)
            token_ids = list(response.draft_ids[:num_tokens])
            return Proposal(
                token_ids=token_ids,
                probs=list(response.draft_probs[: len(token_ids)]),
                compute_seconds=response.compute_seconds,
                alternatives={a.drafter: list(a.draft_ids) for a in response.alternatives},
            )
        raise DrafterFailed("draft session could not be reopened")

    async def release(self, answer: list[int] | None, prompt_length: int) -> None:
        """Free the session. Drafters that learn from outputs get the finished `answer` (the whole
        context as returned), even from a service this request never drafted with."""
        await self.stream.close()
        learn = answer is not None and self.client.learns_from_outputs and len(answer) > prompt_length
        if self.synced is None and not learn:
            return
        release = draft_pb2.ReleaseDraftSessionRequest(session_id=self.session_id)
        if learn and answer is not None:
            release.new_context_ids.extend(answer)  # the whole context: context_length 0
            release.prompt_length = prompt_length
        try:
            await self.client.stub.ReleaseSession(release, timeout=RELEASE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            log.info("release failed", service=self.client.name, code=error.code().name)


# streams ---------------------------------------------------------------------------------------


class RoundStream:
    """One bidirectional stream per session and service: a round is one message each way.

    A failed stream is dropped and the error re-raised; the next exchange opens a new one.
    """

    def __init__(self, method: grpc.aio.StreamStreamMultiCallable, stream_timeout: float) -> None:
        self.method = method
        self.stream_timeout = stream_timeout
        self.call: grpc.aio.StreamStreamCall | None = None

    async def exchange(self, request: Any, timeout: float) -> Any:
        if self.call is None:
            self.call = self.method(timeout=self.stream_timeout)
        call = self.call
        try:
            async with asyncio.timeout(timeout):
                await call.write(request)
                response = await call.read()
        except (grpc.aio.AioRpcError, asyncio.CancelledError, TimeoutError):
            self.abandon()
            raise
        if response is grpc.aio.EOF:  # the server closed the stream without an answer
            self.call = None
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                await call.initial_metadata(),
                await call.trailing_metadata(),
                "the service closed the round stream",
            )
        return response

    def abandon(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None

    async def close(self) -> None:
        if self.call is not None:
            call, self.call = self.call, None
            with contextlib.suppress(grpc.aio.AioRpcError):  # the stream is finished either way
                await call.done_writing()
