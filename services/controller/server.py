"""The controller's gRPC edge: clients call Generate / GenerateStream; it runs the bandit loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc
import structlog
from transformers import PreTrainedTokenizerBase

from banditspec.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable, grpc_errors
from banditspec.models import load_tokenizer, vocab_fingerprint
from banditspec.policy_names import DEFAULT_POLICY
from banditspec.security import ClientTLS, ServerSecurity
from banditspec.serving import DRAIN_SECONDS, run_server
from banditspec.v1 import generation_pb2, generation_pb2_grpc
from banditspec.verify_lengths import filled_gamma
from services.controller import metrics
from services.controller.admission import Admission
from services.controller.arms import TARGET_ONLY_ARM, Arm
from services.controller.batch_cost import ForwardModel
from services.controller.clients import DEFAULT_DRAFT_DEADLINE_SECONDS, DraftClient, DraftHost, TargetClient
from services.controller.domain import Deadline, GenerationRequest
from services.controller.generation import Generation
from services.controller.local_drafts import IN_PROCESS, InProcessDrafts
from services.controller.priors import ArmPriors
from services.controller.requests import check_fields, from_pb, prompt_ids, result_to_pb
from services.controller.reward import StepTimeEstimate

log = structlog.get_logger()


@dataclass
class ControllerConfig:
    target: str = "127.0.0.1:50051"
    drafts: dict[str, str] = field(default_factory=lambda: {"local": "127.0.0.1:50052"})
    # Model-free drafter specs run in this process (local_drafts.py): their rounds make one exchange, not two.
    local_drafters: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # a directory; default: the target's model directory
    policy: str = DEFAULT_POLICY
    # One γ per drafter by default: every drafter stops its draft where it is unsure (match length,
    # tree confidence, draft-model confidence), so γ is a cap, and fewer arms explore less.
    model_free_gammas: list[int] = field(default_factory=lambda: [6])
    model_gammas: list[int] = field(default_factory=lambda: [4])
    tree_tokens: list[int] = field(default_factory=list)  # token budgets of tree arms, for drafters that branch
    rpc_timeout: float = 60.0
    draft_deadline: float = DEFAULT_DRAFT_DEADLINE_SECONDS  # per proposal; a slower one costs its drafter
    refresh_seconds: float = 2.0
    host: str = "127.0.0.1"
    port: int = 50050
    metrics_port: int | None = None
    drain_seconds: float = DRAIN_SECONDS  # after SIGTERM, how long in-flight calls may finish
    http_port: int | None = None  # the OpenAI-compatible HTTP API (openai_api.py) on this port; None: off
    # At most this many requests run at once (also bounded by the target's sessions); more wait in a
    # queue of max_queued, beyond which a request is RESOURCE_EXHAUSTED.
    max_concurrent: int = 32
    max_queued: int = 64
    load_cost: str = "cycle"  # how a round beside other requests is charged (batch_cost.py)
    warm_start: bool = True  # start each request's bandit from recent requests at a similar load (priors.py)
    ready_file: str | None = None
    # TLS and credentials of this server (clients' requests up to 4 MiB); TLS towards the services.
    security: ServerSecurity = field(default_factory=lambda: ServerSecurity(max_receive_bytes=4 * 1024 * 1024))
    upstream_tls: ClientTLS | None = None


class Controller:
    """Connections, the tokenizer, and the current arms; one `Generation` per request."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.target = TargetClient(config.target, config.upstream_tls)
        self.drafts: dict[str, DraftHost] = {
            name: DraftClient(name, address, config.upstream_tls, config.draft_deadline)
            for name, address in config.drafts.items()
        }
        if config.local_drafters:
            if IN_PROCESS in self.drafts:
                raise ValueError(f"draft service name {IN_PROCESS!r} is taken by the in-process drafters")
            try:
                self.drafts[IN_PROCESS] = InProcessDrafts(config.local_drafters)
            except ValueError as error:  # a bad spec, or a drafter that runs a model
                raise SystemExit(f"controller: {error}") from error
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.step_estimate: StepTimeEstimate | None = None
        self.forward_model: ForwardModel | None = None  # f(tokens, rows) of a forward, slowed as verifies report
        self.arms: list[Arm] = [TARGET_ONLY_ARM]
        self.admission = Admission(config.max_concurrent, config.max_queued)
        self.priors = ArmPriors()
        # One thread: tokenising stays off the event loop, and a fast tokenizer is never entered from two
        # threads at once (it may adjust its padding/truncation state per call).
        self._tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self._refresher: asyncio.Task | None = None

    async def connect(self) -> None:
        info = await self.target.connect(self.config.rpc_timeout)  # waits while the target loads
        path = self.config.tokenizer or info.model_name
        tokenizer = load_tokenizer(path)
        fingerprint = vocab_fingerprint(tokenizer)
        if fingerprint != info.vocab_fingerprint:
            raise SystemExit(
                f"tokenizer {path} has vocabulary fingerprint {fingerprint}, the target has {info.vocab_fingerprint}"
            )
        self.tokenizer = tokenizer
        # More concurrent requests than the target holds sessions would evict and re-prefill them each round.
        if info.max_sessions and info.max_sessions < self.admission.limit:
            self.admission = Admission(info.max_sessions, self.config.max_queued)
        # One target step plus about a millisecond of RPC, until target-only rounds refine it.
        self.step_estimate = StepTimeEstimate(info.decode_step_seconds + 0.001)
        self.forward_model = ForwardModel(info.forward_seconds, info.batch_forward_seconds)
        metrics.record_forward_slowdown(self.forward_model.speed, self.forward_model.token_speed)
        await self.refresh_arms()
        self._refresher = asyncio.create_task(self._refresh_forever())
        log.info(
            "controller connected", target=self.config.target, model=info.model_name, arms=[a.name for a in self.arms]
        )

    async def refresh_arms(self) -> None:
        """Re-list each draft service's drafters, so arms follow runtime loads and unloads."""
        # Model-free drafts fill the verify positions the target pads to anyway; a draft model pays per token.
        lengths = self.target.info.verify_lengths
        model_free = list(dict.fromkeys(filled_gamma(lengths, gamma) for gamma in self.config.model_free_gammas))
        trees = list(dict.fromkeys(filled_gamma(lengths, tokens) for tokens in self.config.tree_tokens))  # same rule
        arms = [TARGET_ONLY_ARM]
        timeout = min(5.0, self.config.rpc_timeout)
        for client in self.drafts.values():
            try:
                if not await client.healthy(timeout):  # e.g. restarted and still loading its drafters
                    raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "not SERVING")
                await client.refresh(self.target.info.vocab_fingerprint, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                if client.drafters:
                    log.warning(
                        "draft service unreachable; its arms are withdrawn", service=client.name, code=error.code().name
                    )
                client.drafters = []
            if client.breaker.open:
                if not (client.drafters and client.breaker.may_probe(time.monotonic())):
                    continue  # withdrawn until healthy after the cooldown
                client.recovered()
            arms.extend(client.arms(model_free, self.config.model_gammas, trees))
        self.arms = arms

    def available_arms(self) -> list[Arm]:
        """The arms of the last refresh, less those of draft services whose breaker opened since."""
        return [arm for arm in self.arms if arm.service not in self.drafts or not self.drafts[arm.service].breaker.open]

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            try:
                await self.refresh_arms()
            except Exception:  # a bad answer must not stop refreshing for good; keep the last arms
                log.exception("refreshing arms failed")

    def refused_reason(self, allowed: list[str]) -> str | None:
        for client in self.drafts.values():
            for drafter, reason in client.refused.items():
                if any(name.startswith(f"{client.name}/{drafter}/") for name in allowed):
                    return reason
        return None

    async def request(self, pb: generation_pb2.GenerateRequest) -> GenerationRequest:
        """Validate; the prompt is tokenised on a worker thread, after the cheap checks (its length first)."""
        if self.tokenizer is None:
            raise Unavailable("the controller is still connecting")
        info = self.target.info
        try:
            check_fields(pb, info.max_context)
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(self._tokenizing, prompt_ids, pb, self.tokenizer, info.vocab_size)
            return from_pb(
                pb,
                ids=ids,
                tokenizer=self.tokenizer,
                vocab_size=self.target.info.vocab_size,
                max_context=self.target.info.max_context,
                available_arms=self.available_arms(),
                default_policy=self.config.policy,
            )
        except InvalidArgument as error:
            reason = self.refused_reason(list(pb.allowed_arms))
            raise InvalidArgument(f"{error}; {reason}" if reason else str(error)) from error

    def generation(self, request: GenerationRequest, context: grpc.aio.ServicerContext) -> Generation:
        if self.tokenizer is None or self.step_estimate is None:
            raise Unavailable("the controller is still connecting")
        deadline = Deadline(context.time_remaining(), self.config.rpc_timeout)
        generation = Generation(
            request, self.target, self.drafts, self.tokenizer, self.step_estimate, deadline, self.forward_model,
            running=lambda: self.admission.running, load_cost=self.config.load_cost,
        )  # fmt: skip
        generation.load = self.admission.running
        if self.config.warm_start:
            names = [arm.name for arm in request.arms]
            for index, (mean, weight) in self.priors.for_arms(generation.load, names).items():
                generation.policy.prior(index, mean, weight)
        return generation

    def learn(self, generation: Generation) -> None:
        """A finished request's measured arm means become the priors of later ones at its load."""
        if generation.completed:
            names = [arm.name for arm in generation.request.arms]
            means = {names[index]: mean for index, mean in generation.policy.means().items()}
            self.priors.learn(generation.load, means)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
        await self.target.close()
        for client in self.drafts.values():
            await client.close()


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._background: set[asyncio.Task] = set()

    async def _finish(self, generation: Generation) -> generation_pb2.GenerateResponse:
        self.controller.learn(generation)
        result = generation.result
        metrics.record_request(result.finish_reason, result.wall_seconds, result.first_token_seconds)
        response = result_to_pb(generation.request, generation.result, generation.overhead_median())
        log.info(
            "generated",
            request_id=generation.request.request_id,
            policy=generation.request.policy,
            tokens=response.stats.generated_tokens,
            rounds=response.stats.rounds,
            tokens_per_second=round(response.stats.tokens_per_second, 2),
        )
        return response

    async def _released(self, generation: Generation) -> None:
        # Release in the background: the client need not wait for it.
        task = asyncio.create_task(generation.release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _events(self, generation: Generation):
        """The request's round events; upstream failures become statuses, the session is released."""
        try:
            async for event in generation.run():
                yield event
        except grpc.aio.AioRpcError as error:
            raise _upstream(error) from error
        except TimeoutError as error:
            raise DeadlineExceeded("the target did not answer a round in time") from error
        finally:
            await self._released(generation)

    @grpc_errors
    async def Generate(self, request, context):
        parsed = await self.controller.request(request)
        async with self.controller.admission.slot():
            generation = self.controller.generation(parsed, context)
            async with aclosing(self._events(generation)) as events:
                async for _ in events:
                    pass
            return await self._finish(generation)

    @grpc_errors
    async def GenerateStream(self, request, context):
        parsed = await self.controller.request(request)
        async with self.controller.admission.slot():
            generation = self.controller.generation(parsed, context)
            # aclosing: a client that hangs up still gets its sessions released at once, not at GC.
            async with aclosing(self._events(generation)) as events:
                async for event in events:
                    yield generation_pb2.GenerateStreamResponse(
                        round=generation_pb2.RoundUpdate(
                            round=event.round,
                            arm=event.arm,
                            drafted=event.drafted,
                            accepted=event.accepted,
                            token_ids=event.token_ids,
                            text=event.text,
                            wall_seconds=event.wall_seconds,
                            service_seconds=event.service_seconds,
                        )
                    )
            yield generation_pb2.GenerateStreamResponse(final=await self._finish(generation))

    @grpc_errors
    async def ListArms(self, request, context):
        return generation_pb2.ListArmsResponse(
            arms=[
                generation_pb2.ArmInfo(name=a.name, draft_service=a.service, drafter=a.drafter, num_tokens=a.gamma)
                for a in self.controller.arms
            ]
        )


def _upstream(error: grpc.aio.AioRpcError) -> Exception:
    """A failed call to the target: the client sees which service failed and why."""
    wrapped = ServiceError(f"target service: {error.code().name}: {error.details()}")
    wrapped.code = error.code() if error.code() != grpc.StatusCode.FAILED_PRECONDITION else grpc.StatusCode.UNAVAILABLE
    return wrapped


async def serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    servicer = GenerationServicer(controller)
    http = None
    if config.http_port is not None:
        from services.controller.openai_api import Backend, HttpServer

        backend = Backend(servicer, config.security.api_key, config.security.max_receive_bytes)
        http = HttpServer(backend, config.host, config.http_port, config.security.tls, config.drain_seconds)

    async def load() -> None:
        await controller.connect()
        if http is not None:
            await http.start()

    await run_server(
        name="controller",
        host=config.host,
        port=config.port,
        service_names=[generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name],
        register=lambda server: generation_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server),
        load=load,
        close=controller.close,
        ready_file=config.ready_file,
        security=config.security,
        metrics_port=config.metrics_port,
        grace_seconds=config.drain_seconds,
        drain=http.stop if http is not None else None,
        ready_info=http.ready_info if http is not None else None,
    )
