"""Connections from the controller to the target and the draft services, with deadlines on every call."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from banditspec.serving import CHANNEL_OPTIONS
from banditspec.verify_lengths import effective_forward_seconds
from banditspec.v1 import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from services.controller.arms import Arm
from services.draft.specs import KIND_NAMES

log = structlog.get_logger()



class TargetClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = target_pb2_grpc.TargetServiceStub(self.channel)
        self.info: target_pb2.TargetInfoResponse | None = None
        self.verify_seconds: list[float] = []  # [n-1]: a verify of n tokens, padding included

    async def connect(self, timeout: float) -> target_pb2.TargetInfoResponse:
        await asyncio.wait_for(self.channel.channel_ready(), timeout)
        self.info = await self.stub.Info(target_pb2.TargetInfoRequest(), timeout=timeout)
        self.verify_seconds = effective_forward_seconds(list(self.info.forward_seconds), list(self.info.verify_lengths))
        return self.info

    async def close(self) -> None:
        await self.channel.close()


class DraftClient:
    """One draft service; remembers its drafters and which of them the target accepts."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = draft_pb2_grpc.DraftServiceStub(self.channel)
        self.drafters: list[draft_pb2.DrafterInfo] = []
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
                usable.append(drafter)
        self.drafters, self.refused = usable, refused

    @property
    def learns_from_outputs(self) -> bool:
        return any(drafter.kind == draft_pb2.DRAFTER_KIND_SUFFIX for drafter in self.drafters)

    def arms(self, gammas_by_kind: dict[str, list[int]]) -> list[Arm]:
        return [
            Arm.drafted(self.name, drafter.name, gamma)
            for drafter in self.drafters
            for gamma in gammas_by_kind.get(KIND_NAMES.get(drafter.kind, ""), [])
        ]

    async def close(self) -> None:
        await self.channel.close()


class RoundStream:
    """One bidirectional stream per session and service: a round is one message each way.

    A failed stream is dropped and the error re-raised; the next exchange opens a new one.
    """

    def __init__(self, method: grpc.aio.StreamStreamMultiCallable, stream_timeout: float) -> None:
        self.method = method
        self.stream_timeout = stream_timeout
        self.call: grpc.aio.StreamStreamCall | None = None

    async def exchange(self, request, timeout: float):
        if self.call is None:
            self.call = self.method(timeout=self.stream_timeout)
        try:
            async with asyncio.timeout(timeout):
                await self.call.write(request)
                response = await self.call.read()
        except (grpc.aio.AioRpcError, asyncio.CancelledError, TimeoutError):
            self.abandon()
            raise
        if response is grpc.aio.EOF:  # the server closed the stream without an answer
            call, self.call = self.call, None
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
            try:
                await call.done_writing()
            except grpc.aio.AioRpcError:
                pass
