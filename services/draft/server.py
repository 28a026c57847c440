"""The draft service's gRPC edge: several drafters in one process, loaded and unloaded at runtime."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from banditspec import distributions
from banditspec.errors import AlreadyExists, InvalidArgument, grpc_errors
from banditspec.own_thread import on_own_thread
from banditspec.sampling import SamplingParams
from banditspec.security import ServerSecurity
from banditspec.serving import DRAIN_SECONDS, run_server
from banditspec.v1 import draft_pb2, draft_pb2_grpc
from services.draft import metrics
from services.draft.drafters.base import Drafter, DraftSession, ServiceSettings
from services.draft.drafters.kinds import KINDS
from services.draft.model_worker import ModelWorker
from services.draft.registry import DrafterRegistry, check_proposal_request
from services.draft.specs import DrafterSpec

log = structlog.get_logger()


@dataclass
class DraftConfig:
    drafters: list[str] = field(default_factory=lambda: ["pld=prompt_lookup"])
    device: str | None = None
    dtype: str | None = None
    max_sessions: int = 256
    host: str = "127.0.0.1"
    port: int = 50052
    ready_file: str | None = None
    security: ServerSecurity = field(default_factory=ServerSecurity)  # TLS, credentials, message limit
    # LoadDrafter reads files only inside these (None: the shipped models and the model cache); the
    # start-up drafters are the operator's own and load from anywhere.
    model_roots: list[Path] | None = None
    metrics_port: int | None = None  # Prometheus metrics over HTTP on host:metrics_port
    unix_socket: str | None = None  # also listen here (unix:PATH): lighter than TCP for a co-located controller
    drain_seconds: float = DRAIN_SECONDS  # after SIGTERM, how long in-flight calls may finish


def build_drafter(spec: DrafterSpec, device: str | None, default_dtype: str | None) -> Drafter:
    return spec.build(ServiceSettings(device, default_dtype))


def drafter_info(drafter: Drafter) -> draft_pb2.DrafterInfo:
    kind = KINDS.get(drafter.kind)
    return draft_pb2.DrafterInfo(
        name=drafter.name,
        kind=kind.enum if kind else draft_pb2.DRAFTER_KIND_UNSPECIFIED,
        vocab_fingerprint=drafter.vocab_fingerprint,
        source=drafter.source,
        device=drafter.device,
        lookahead_hits=drafter.lookahead_hits,
        model_free=drafter.model_free,
        learns_from_outputs=drafter.learns_from_outputs,
        proposes_trees=drafter.proposes_trees,
    )


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, config: DraftConfig) -> None:
        self.config = config
        self.registry = DrafterRegistry(config.max_sessions)
        # Session and registry updates run on the event loop; model forwards on the model worker (which
        # batches the proposals waiting for a drafter), loading on a thread of its own so that a hot swap
        # does not stall traffic. That thread exits after its load: a model's load and calibration run
        # OpenMP regions, and a team left behind would slow the worker's forwards (model_worker.py).
        self.models = ModelWorker(self.registry.forget_if_retired)
        self._loading = asyncio.Lock()  # one load at a time
        # Learning from finished outputs (suffix-tree insertion, ~7 ms per 1k tokens) off the event loop.
        self.learner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft-learner")

    def shutdown(self) -> None:
        """Finish the work queued on the service's threads, then stop them."""
        self.models.shutdown()
        self.learner.shutdown(wait=True)

    async def load(self, spec: DrafterSpec, replace: bool = False) -> tuple[Drafter, float]:
        start = time.perf_counter()
        if not replace and spec.name in self.registry.drafters:  # fail fast, before a costly load
            raise AlreadyExists(f"drafter {spec.name!r} is already loaded; pass replace to swap it")
        async with self._loading:
            drafter = await on_own_thread(
                build_drafter, spec, self.config.device, self.config.dtype, name="draft-loader"
            )
        old = self.registry.add(drafter, replace)
        if old is not None:  # on the worker: after any proposal still using it
            await self.models.run(old.close)
        seconds = time.perf_counter() - start
        log.info("drafter loaded", drafter=spec.name, kind=spec.kind, source=drafter.source, seconds=round(seconds, 2))
        return drafter, seconds

    @grpc_errors
    async def Info(self, request, context):
        return draft_pb2.DraftInfoResponse(
            drafters=[drafter_info(d) for d in self.registry.drafters.values()],
            sessions=len(self.registry.sessions),
        )

    @grpc_errors
    async def ListDrafters(self, request, context):
        return draft_pb2.ListDraftersResponse(drafters=[drafter_info(d) for d in self.registry.drafters.values()])

    @grpc_errors
    async def Propose(self, request, context):
        return await self._propose(request)

    @grpc_errors
    async def ProposeStream(self, request_iterator, context):
        async for request in request_iterator:
            yield await self._propose(request)

    async def _propose(self, request: draft_pb2.ProposeRequest) -> draft_pb2.ProposeResponse:
        drafter = self.registry.get(request.drafter)
        # Every check before the sync: a rejected request must leave the session as it was.
        check_proposal_request(
            request.num_tokens, request.tree_tokens, list(request.score_drafters), request.score_num_tokens,
            request.score_tree_tokens,
        )  # fmt: skip
        sampling = SamplingParams.from_pb(request.sampling)
        session = self.registry.sync(
            request.session_id,
            request.context_length,
            list(request.new_context_ids),
            sampling,
            request.seed,
            vocab_size=drafter.vocab_size,
        )
        if drafter.runs_on_worker:  # model drafters: chains, whatever tree_tokens allows
            proposal, seconds = await self.models.propose(drafter, session, request.num_tokens)
            if (
                drafter.looks_ahead
                and proposal.token_ids
                and session.sampling.greedy
                and self.registry.drafters.get(drafter.name) is drafter
                and self.registry.sessions.get(request.session_id) is session
            ):
                self.models.draft_ahead(drafter, session)
        else:  # microseconds of work: a thread hop would cost more, and it must not queue behind a forward
            proposal, seconds = self.registry.propose(drafter, session, request.num_tokens, request.tree_tokens)
        metrics.PROPOSAL_SECONDS.labels(drafter.name).observe(seconds)
        probs = [] if proposal.probs is None else [distributions.encode(row) for row in proposal.probs]
        return draft_pb2.ProposeResponse(
            draft_ids=proposal.token_ids,
            draft_probs=probs,
            draft_parents=proposal.parents or [],
            context_length=len(session.context),
            compute_seconds=seconds,
            alternatives=self._alternatives(request, session),
        )

    def _alternatives(
        self, request: draft_pb2.ProposeRequest, session: DraftSession
    ) -> list[draft_pb2.AlternativeDraft]:
        found = self.registry.alternatives(
            session, list(request.score_drafters), request.score_num_tokens, request.score_tree_tokens,
            asked=request.drafter, asked_tree_tokens=request.tree_tokens,
        )  # fmt: skip
        return [
            draft_pb2.AlternativeDraft(drafter=name, draft_ids=p.token_ids, draft_parents=p.parents or [])
            for name, p in found
        ]

    @grpc_errors
    async def ReleaseSession(self, request, context):
        if not request.session_id:
            raise InvalidArgument("session_id is required")
        learning = []
        released = self.registry.release(
            request.session_id,
            request.context_length,
            list(request.new_context_ids),
            request.prompt_length,
            learn=lambda task: learning.append(self.learner.submit(task)),
        )
        # Answer once learned, so the caller's next request can draw on it; other rounds run meanwhile.
        for future in learning:
            try:
                await asyncio.wrap_future(future)
            except Exception:  # learning is best effort: it must not fail the release
                log.exception("learning from a finished output failed", session_id=request.session_id)
        return draft_pb2.ReleaseDraftSessionResponse(released=released)

    @grpc_errors
    async def LoadDrafter(self, request, context):
        spec = DrafterSpec.from_pb(request).confined(self.config.model_roots)
        drafter, seconds = await self.load(spec, replace=request.replace)
        return draft_pb2.LoadDrafterResponse(drafter=drafter_info(drafter), load_seconds=seconds)

    @grpc_errors
    async def UnloadDrafter(self, request, context):
        drafter = self.registry.remove(request.name)
        await self.models.run(drafter.close)  # after any proposal still using it
        log.info("drafter unloaded", drafter=request.name)
        return draft_pb2.UnloadDrafterResponse(unloaded=True)


async def serve(config: DraftConfig) -> None:
    servicer = DraftServicer(config)
    metrics.watch_registry(lambda: servicer.registry)
    specs = [DrafterSpec.parse(text) for text in config.drafters]

    async def load() -> None:
        for spec in specs:
            await servicer.load(spec)

    async def close() -> None:
        for drafter in servicer.registry.drafters.values():
            if drafter.looks_ahead:
                proposals = getattr(drafter, "proposals", None)  # a model drafter's own count
                log.info("lookahead", drafter=drafter.name, proposals=proposals, hits=drafter.lookahead_hits)
        servicer.shutdown()

    await run_server(
        name="draft",
        host=config.host,
        port=config.port,
        service_names=[draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name],
        register=lambda server: draft_pb2_grpc.add_DraftServiceServicer_to_server(servicer, server),
        load=load,
        close=close,
        ready_file=config.ready_file,
        security=config.security,
        metrics_port=config.metrics_port,
        grace_seconds=config.drain_seconds,
        unix_socket=config.unix_socket,
    )
