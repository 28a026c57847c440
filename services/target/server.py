"""The target's gRPC edge: protobuf in, jobs to the batching scheduler, protobuf out."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import structlog
import torch

from banditspec import distributions
from banditspec.errors import InvalidArgument, Unavailable, grpc_errors
from banditspec.model_paths import resolve_model_path
from banditspec.models import load_causal_lm
from banditspec.own_thread import on_own_thread
from banditspec.sampling import SamplingParams
from banditspec.security import ServerSecurity
from banditspec.serving import DRAIN_SECONDS, run_server
from banditspec.v1 import target_pb2, target_pb2_grpc
from banditspec.verify_lengths import padded_lengths
from services.target import metrics
from services.target.engine import (
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_PREFILL_CHUNK,
    OpenJob,
    TargetEngine,
    VerifyJob,
    VerifyResult,
)
from services.target.prefixes import DEFAULT_RETAINED
from services.target.scheduler import Scheduler
from services.target.threads import ThreadPlan

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
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    security: ServerSecurity = field(default_factory=ServerSecurity)  # TLS, credentials, message limit
    metrics_port: int | None = None  # Prometheus metrics over HTTP on host:metrics_port
    unix_socket: str | None = None  # also listen here (unix:PATH): lighter than TCP for a co-located controller
    drain_seconds: float = DRAIN_SECONDS  # after SIGTERM, how long in-flight calls may finish
    solo_threads: int = 0  # torch threads of a forward while one session is open (0: the process's)
    prefix_reuse: bool = True  # new prompts start from held prefixes (services.target.prefixes)
    retained_prefixes: int = DEFAULT_RETAINED  # released sessions' caches kept for that
    packed_weights: bool = True  # a CPU may multiply through weights packed for oneDNN or MKL (copies of them)


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self) -> None:
        self.engine: TargetEngine | None = None
        self.scheduler: Scheduler | None = None
        self.forward_seconds: list[float] = []
        self.batch_seconds: dict[tuple[int, int], float] = {}  # (rows, tokens) of a batched forward → seconds

    def _engine(self) -> TargetEngine:
        if self.engine is None:
            raise Unavailable("the target model is still loading")
        return self.engine

    def _scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise Unavailable("the target model is still loading")
        return self.scheduler

    def load(self, config: TargetConfig) -> None:
        """Load and measure the model (on a thread that exits after, see `scheduler`), then publish the
        engine and its scheduler together: an Info answered before the curves would carry empty ones."""
        engine, threads = self._load(config)
        scheduler = Scheduler(
            engine,
            on_forward=metrics.record_forward,
            threads=threads if threads.switches else None,
            on_gather=metrics.record_gather,
        )
        self.engine, self.scheduler = engine, scheduler

    def _load(self, config: TargetConfig) -> tuple[TargetEngine, ThreadPlan]:
        path = resolve_model_path(config.model)
        loaded = load_causal_lm(path, device=config.device, dtype=config.dtype)
        engine = TargetEngine(
            loaded,
            max_sessions=config.max_sessions,
            max_batch_tokens=config.max_batch_tokens,
            prefill_chunk=config.prefill_chunk,
            prefix_reuse=config.prefix_reuse,
            retained_prefixes=config.retained_prefixes,
        )
        threads = ThreadPlan.from_flags(config.solo_threads)
        decoder = engine.decoder
        # Before the curves: they measure the products it chooses. Batched forwards run on the shared threads.
        narrow = (
            threads.measure(2, functools.partial(decoder.calibrate_narrow, pack=config.packed_weights))
            if decoder is not None
            else {}
        )
        # The one-row curve is a lone session's (solo threads); batched forwards run with several open.
        self.forward_seconds = threads.measure(1, engine.measure_forwards)
        verify_lengths = padded_lengths(self.forward_seconds) if config.verify_padding else []
        engine.verify_lengths = verify_lengths
        self.batch_seconds = threads.measure(2, decoder.measure_batches) if decoder is not None else {}
        log.info(
            "target model loaded",
            path=str(path),
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            forward_ms=[round(t * 1e3, 1) for t in self.forward_seconds],
            padded={n: m for n, m in enumerate(verify_lengths, 1) if m != n},
            batched=engine.batches_rows,
            threads={"shared": threads.shared, "solo": threads.solo},
            batch_ms={
                f"{rows}×{tokens // rows}": round(t * 1e3, 1) for (rows, tokens), t in self.batch_seconds.items()
            },
            narrow_vs_linear={n: round(ratio, 2) for n, ratio in narrow.items()},
            packed_vs_unpacked={n: round(ratio, 2) for n, ratio in decoder.packed_ratios.items()} if decoder else {},
            mkl_vs_best_other={n: round(ratio, 2) for n, ratio in decoder.mkl_ratios.items()} if decoder else {},
        )
        return engine, threads

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
            batch_forward_rows=[rows for rows, _ in self.batch_seconds],
            batch_forward_tokens=[tokens for _, tokens in self.batch_seconds],
            batch_forward_seconds=list(self.batch_seconds.values()),
            sessions=len(engine.sessions),
        )

    @grpc_errors
    async def OpenSession(self, request, context):
        sampling = SamplingParams.from_pb(request.sampling)
        job = OpenJob(request.session_id, context_ids=list(request.context_ids), sampling=sampling, seed=request.seed)
        await self._scheduler().submit(job)
        return target_pb2.OpenSessionResponse(
            context_length=len(request.context_ids), compute_seconds=job.compute_seconds
        )

    async def _verify(self, request: target_pb2.VerifyRequest) -> target_pb2.VerifyResponse:
        engine = self._engine()
        draft_probs = None
        if request.draft_probs:
            if len(request.draft_probs) != len(request.draft_ids):
                raise InvalidArgument(
                    f"{len(request.draft_probs)} draft distributions for {len(request.draft_ids)} draft tokens"
                )
            vocab = engine.loaded.vocab_size
            # Stacked in numpy: a torch copy this size would run an OpenMP region on the event loop's thread.
            draft_probs = torch.from_numpy(
                np.stack([distributions.decode(d, vocab).numpy() for d in request.draft_probs])
            )
        reopen = None
        if request.HasField("reopen"):
            reopen = (
                list(request.reopen.context_ids),
                SamplingParams.from_pb(request.reopen.sampling),
                request.reopen.seed,
            )
        job = VerifyJob(
            request.session_id,
            context_length=request.context_length,
            draft_ids=list(request.draft_ids),
            draft_probs=draft_probs,
            draft_parents=list(request.draft_parents) or None,
            reopen=reopen,
        )
        await self._scheduler().submit(job)
        result = job.result
        assert isinstance(result, VerifyResult)
        return target_pb2.VerifyResponse(
            accepted=result.verdict.accepted,
            token_ids=result.verdict.tokens,
            context_length=result.context_length,
            compute_seconds=result.compute_seconds,
            batch_rows=result.batch.rows,
            batch_tokens=result.batch.tokens,
            batch_forward_seconds=result.batch.forward_seconds,
            batch_prefill_rows=result.batch.prefill_rows,
            batch_prefill_tokens=result.batch.prefill_tokens,
        )

    @grpc_errors
    async def Verify(self, request, context):
        return await self._verify(request)

    @grpc_errors
    async def VerifyStream(self, request_iterator, context):
        sessions: set[str] = set()
        async for request in request_iterator:
            sessions.add(request.session_id)
            yield await self._verify(request)
        # The caller closed its stream: its request ended, so no forward need wait for its next round.
        if self.scheduler is not None:
            for session_id in sessions:
                self.scheduler.leaving(session_id)

    @grpc_errors
    async def ReleaseSession(self, request, context):
        self._scheduler().forget(request.session_id)
        released = self._engine().release(request.session_id)  # between forwards: they run on this loop
        return target_pb2.ReleaseSessionResponse(released=released)


async def serve(config: TargetConfig) -> None:
    servicer = TargetServicer()
    metrics.watch_engine(lambda: servicer.engine)

    async def load() -> None:
        await on_own_thread(servicer.load, config, name="target-loader")
        assert servicer.engine is not None
        servicer.engine.warm_up()  # on the loop's thread, which runs every forward from now on

    async def close() -> None:
        if servicer.scheduler is not None:
            await servicer.scheduler.close()

    await run_server(
        name="target",
        host=config.host,
        port=config.port,
        service_names=[target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name],
        register=lambda server: target_pb2_grpc.add_TargetServiceServicer_to_server(servicer, server),
        load=load,
        close=close,
        ready_file=config.ready_file,
        security=config.security,
        metrics_port=config.metrics_port,
        grace_seconds=config.drain_seconds,
        unix_socket=config.unix_socket,
    )
