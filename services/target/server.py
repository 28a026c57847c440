"""The target's gRPC edge: protobuf in, engine calls on one worker thread, protobuf out."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
import torch

from banditspec import distributions
from banditspec.errors import InvalidArgument, Unavailable, grpc_errors
from banditspec.model_paths import resolve_model_path
from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from banditspec.serving import run_server
from banditspec.v1 import target_pb2, target_pb2_grpc
from banditspec.verify_lengths import padded_lengths
from services.target.engine import TargetEngine

log = structlog.get_logger()


@dataclass
class TargetConfig:
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_sessions: int = 64
    host: str = "127.0.0.1"
    port: int = 50051
    ready_file: str | None = None
    verify_padding: bool = True


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self) -> None:
        self.engine: TargetEngine | None = None
        self.forward_seconds: list[float] = []
        # One thread: model work is serialised and stays off the event loop.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="target-model")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _engine(self) -> TargetEngine:
        if self.engine is None:
            raise Unavailable("the target model is still loading")
        return self.engine

    def load(self, config: TargetConfig) -> None:
        path = resolve_model_path(config.model)
        loaded = load_causal_lm(path, device=config.device, dtype=config.dtype)
        self.forward_seconds = loaded.measure_forwards()
        verify_lengths = padded_lengths(self.forward_seconds) if config.verify_padding else []
        self.engine = TargetEngine(loaded, max_sessions=config.max_sessions, verify_lengths=verify_lengths)
        log.info(
            "target model loaded",
            path=str(path),
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            forward_ms=[round(t * 1e3, 1) for t in self.forward_seconds],
            padded={n: m for n, m in enumerate(verify_lengths, 1) if m != n},
        )

    @grpc_errors
    async def Info(self, request, context):
        engine = self._engine()
        loaded = engine.loaded
        return target_pb2.TargetInfoResponse(
            model_name=loaded.path,
            vocab_fingerprint=loaded.fingerprint,
            vocab_size=loaded.vocab_size,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            max_context=loaded.max_context,
            eos_token_ids=loaded.eos_token_ids,
            decode_step_seconds=self.forward_seconds[0],
            forward_seconds=self.forward_seconds,
            max_sessions=engine.sessions.max_sessions,
            verify_lengths=engine.verify_lengths,
        )

    @grpc_errors
    async def OpenSession(self, request, context):
        engine = self._engine()
        sampling = SamplingParams.from_pb(request.sampling)
        seconds = await self._run(engine.open, request.session_id, list(request.context_ids), sampling, request.seed)
        return target_pb2.OpenSessionResponse(context_length=len(request.context_ids), compute_seconds=seconds)

    async def _verify(self, request: target_pb2.VerifyRequest) -> target_pb2.VerifyResponse:
        engine = self._engine()
        draft_probs = None
        if request.draft_probs:
            if len(request.draft_probs) != len(request.draft_ids):
                raise InvalidArgument(
                    f"{len(request.draft_probs)} draft distributions for {len(request.draft_ids)} draft tokens"
                )
            vocab = engine.loaded.vocab_size
            draft_probs = torch.stack([distributions.decode(d, vocab) for d in request.draft_probs])
        reopen = None
        if request.HasField("reopen"):
            reopen = (
                list(request.reopen.context_ids),
                SamplingParams.from_pb(request.reopen.sampling),
                request.reopen.seed,
            )
        result = await self._run(
            engine.verify, request.session_id, request.context_length, list(request.draft_ids), draft_probs, reopen
        )
        return target_pb2.VerifyResponse(
            accepted=result.verdict.accepted,
            token_ids=result.verdict.tokens,
            context_length=result.context_length,
            compute_seconds=result.compute_seconds,
        )

    @grpc_errors
    async def Verify(self, request, context):
        return await self._verify(request)

    @grpc_errors
    async def VerifyStream(self, request_iterator, context):
        async for request in request_iterator:
            yield await self._verify(request)

    @grpc_errors
    async def ReleaseSession(self, request, context):
        released = await self._run(self._engine().release, request.session_id)
        return target_pb2.ReleaseSessionResponse(released=released)


async def serve(config: TargetConfig) -> None:
    servicer = TargetServicer()

    async def load() -> None:
        await servicer._run(servicer.load, config)

    async def close() -> None:
        servicer.executor.shutdown(wait=True)

    await run_server(
        name="target",
        host=config.host,
        port=config.port,
        service_names=[target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name],
        register=lambda server: target_pb2_grpc.add_TargetServiceServicer_to_server(servicer, server),
        load=load,
        close=close,
        ready_file=config.ready_file,
    )
