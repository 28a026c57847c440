"""The controller's side of the wire: connections to the target and the draft services, and one
request's sessions on them.

Protobuf stays in this module. The round loop calls `TargetSession.verify(context, draft) -> Verdict`
and `DraftSession.propose(...) -> Proposal` and sees dataclasses only. A session owns what keeps it in
step with its service: the context length the service holds, the session's seed, reopening a session
the service lost (SESSION_LOST), the round stream, and the release. Every call has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditspec.channels import open_aio_channel
from banditspec.errors import Unavailable, is_session_lost
from banditspec.sampling import SamplingParams
from banditspec.security import ClientTLS
from banditspec.target_measurements import start_up_batches
from banditspec.v1 import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from banditspec.verify_lengths import effective_forward_seconds
from services.controller import metrics
from services.controller.arms import Arm
from services.controller.domain import Deadline, Proposal, Verdict
from services.controller.retry import Backoff, CircuitBreaker

log = structlog.get_logger()

RELEASE_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 1.0  # half-closing a round stream before a release
DEFAULT_DRAFT_DEADLINE_SECONDS = 3.0  # a proposal slower than this costs its drafter the request
# A proposal that ships context (a session's first, or a reopen) may take one more draft deadline per this
# many tokens: a draft model prefills them.
CONTEXT_TOKENS_PER_DRAFT_DEADLINE = 512
# Failures that say the service (not one drafter or one request) is in trouble; they feed its breaker.
SERVICE_FAILURES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
}
# Retries of a call to an unavailable target stop this long before the round's time runs out, so the
# client gets the controller's UNAVAILABLE (which says why) rather than its own DEADLINE_EXCEEDED.
GIVE_UP_MARGIN_SECONDS = 0.5

T = TypeVar("T")


class DrafterFailed(Exception):
    """A draft service could not propose: its drafter's arms leave the request, which goes on."""


class DraftRejected(DrafterFailed):
    """The target refused a draft (INVALID_ARGUMENT: ids out of range, malformed q): the drafter's arms
    leave the request and the round is redone; the target's session is untouched (it checks a verify
    whole before running it)."""


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
    batch_forward_seconds: dict[tuple[int, int], float]  # (rows, tokens) of a batched forward → seconds, at start-up

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
            batch_forward_seconds=start_up_batches(pb),
        )


class TargetClient:
    def __init__(self, address: str, tls: ClientTLS | None = None) -> None:
        self.address = address
        self.channel = open_aio_channel(address, tls)
        self.stub = target_pb2_grpc.TargetServiceStub(self.channel)
        self._info: TargetInfo | None = None

    async def connect(self, timeout: float) -> TargetInfo:
        """The target's Info, waiting for as long as it takes while the target is unreachable or loading
        (UNAVAILABLE): the controller stays NOT_SERVING meanwhile. Each call gets `timeout`."""
        backoff = Backoff(initial=0.2, maximum=2.0)
        waited_since = time.monotonic()
        logged = 0.0
        while True:
            try:
                response = await self.stub.Info(target_pb2.TargetInfoRequest(), timeout=timeout)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                waited = time.monotonic() - waited_since
                if waited - logged >= 30.0 or logged == 0.0:
                    log.info("waiting for the target", target=self.address, waited_seconds=round(waited, 1),
                             details=error.details())  # fmt: skip
                    logged = max(waited, 1e-9)
                await asyncio.sleep(backoff.next_delay())
        self._info = TargetInfo.from_pb(response)
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
    """One request's session on the target: opened with the prompt, then one verify per round.

    A target that is unavailable (restarting, loading, unreachable) is retried with backoff for as long as
    the round may take (`--rpc-timeout`, cut to the request's deadline); a retried verify carries the
    full context, so a restarted target reopens the session and verifies the same draft. The context only
    grows when a verdict arrives, so a retried round commits its tokens once."""

    def __init__(
        self, client: TargetClient, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.sampling = sampling.to_pb()
        self.seed = seed
        self.deadline = deadline
        self.stream = RoundStream(client.stub.VerifyStream, deadline.stream_timeout)
        self.retries = 0  # attempts after UNAVAILABLE, over the session's life

    def _open_request(self, context: list[int]) -> target_pb2.OpenSessionRequest:
        return target_pb2.OpenSessionRequest(
            session_id=self.session_id,
            context_ids=context,
            sampling=self.sampling,
            seed=session_seed(self.seed, len(context)),
        )

    async def _retrying(self, attempt: Callable[[float, bool], Awaitable[T]]) -> T:
        """`attempt(timeout, reopen)` until it answers. SESSION_LOST: once more at once with reopen;
        UNAVAILABLE: again with reopen after a backoff, until the round's time is spent, then Unavailable
        with what happened. Other errors are the caller's."""
        start = time.monotonic()
        window_ends = start + self.deadline.timeout()
        backoff = Backoff()
        reopen = lost = False
        while True:
            try:
                return await attempt(max(0.001, window_ends - time.monotonic()), reopen)
            except grpc.aio.AioRpcError as error:
                if is_session_lost(error) and not lost:
                    log.warning("target lost the session; reopening with the full context")
                    reopen = lost = True
                    continue
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                delay = backoff.next_delay()
                if window_ends - time.monotonic() <= delay + GIVE_UP_MARGIN_SECONDS:
                    raise Unavailable(
                        f"target service at {self.client.address} unavailable for {time.monotonic() - start:.1f} s "
                        f"({backoff.attempts} attempts, retried until the round's time (--rpc-timeout, cut to the "
                        f"request's deadline) ran out): {error.details()}"
                    ) from error
                if backoff.attempts == 1:
                    log.warning("target unavailable; retrying with the full context", details=error.details())
                self.retries += 1
                metrics.TARGET_RETRIES.inc()
                reopen = True
                await asyncio.sleep(delay)

    async def open(self, context: list[int]) -> float:
        """Prefill the prompt; returns the target's compute seconds."""

        async def attempt(timeout: float, reopen: bool) -> float:
            response = await self.client.stub.OpenSession(self._open_request(context), timeout=timeout)
            return float(response.compute_seconds)

        return await self._retrying(attempt)

    async def verify(
        self, context: list[int], draft: Proposal, meanwhile: Callable[[], Awaitable[None]] | None = None
    ) -> Verdict:
        """Verify `draft` after `context` (what the session holds); a lost session is reopened with the
        full context inside the retried verify, so no other request can evict it in between. `meanwhile`
        runs once, after the request is sent and before the answer is read (work the target's forward hides)."""
        request = target_pb2.VerifyRequest(
            session_id=self.session_id,
            context_length=len(context),
            draft_ids=draft.token_ids,
            draft_probs=draft.probs,
            draft_parents=draft.parents or [],
        )

        async def attempt(timeout: float, reopen: bool) -> Any:
            if reopen and not request.HasField("reopen"):
                request.reopen.CopyFrom(self._open_request(context))
            nonlocal meanwhile
            once, meanwhile = meanwhile, None
            try:
                return await self.stream.exchange(request, timeout, once)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT and draft.token_ids:
                    raise DraftRejected(f"the target rejected the draft: {error.details()}") from error
                raise

        response = await self._retrying(attempt)
        return Verdict(
            list(response.token_ids),
            response.accepted,
            response.compute_seconds,
            response.batch_rows,
            response.batch_tokens,
            response.batch_forward_seconds,
            response.batch_prefill_rows,
            response.batch_prefill_tokens,
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
    proposes_trees: bool = False

    @classmethod
    def from_pb(cls, pb: draft_pb2.DrafterInfo) -> DrafterEntry:
        return cls(pb.name, pb.model_free, pb.learns_from_outputs, pb.proposes_trees)


class ProposalSession(Protocol):
    """One request's session with the drafters of one host (a draft service, or the controller's own)."""

    @property
    def client(self) -> DraftHost: ...

    async def propose(
        self,
        context: list[int],
        drafter: str,
        num_tokens: int,
        score_drafters: list[str] | None = None,
        score_num_tokens: int = 0,
        tree_tokens: int = 0,
        score_tree_tokens: int = 0,
    ) -> Proposal: ...

    async def release(self, answer: list[int] | None, prompt_length: int) -> None: ...

    async def score(self, context: list[int], drafters: list[str], num_tokens: int, tree_tokens: int) -> Proposal:
        """Only the drafts of `drafters` to score, as `alternatives` (hosts that are `free_to_ask`)."""
        ...


class DraftHost:
    """Where drafters run, as the controller sees it: their entries, the arms they give, and a circuit
    breaker that withdraws those arms after repeated failures until the host recovers. A draft service
    (`DraftClient`) or the controller's own process (`local_drafts.InProcessDrafts`)."""

    # Asking its drafters costs no RPC: counterfactual scoring asks them every round, whatever arm played.
    free_to_ask = False

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.drafters: list[DrafterEntry] = []
        self.refused: dict[str, str] = {}  # drafter name → why the controller will not use it
        self.breaker = CircuitBreaker()

    async def healthy(self, timeout: float) -> bool:
        raise NotImplementedError

    async def refresh(self, target_fingerprint: str, timeout: float) -> None:
        raise NotImplementedError

    def session(self, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline) -> ProposalSession:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def failed(self, reason: str) -> None:
        if self.breaker.record_failure(time.monotonic()):
            metrics.DRAFT_SERVICE_WITHDRAWN.labels(self.name).set(1)
            log.warning(
                "draft service failing; its arms are withdrawn until it recovers",
                service=self.name,
                failures=self.breaker.failures,
                cooldown_seconds=self.breaker.current_cooldown(),
                reason=reason,
            )

    def succeeded(self) -> None:
        self.breaker.record_success()

    def recovered(self) -> None:
        """Healthy after the breaker's cooldown: its arms return."""
        self.breaker.recovered()
        metrics.DRAFT_SERVICE_WITHDRAWN.labels(self.name).set(0)
        log.info("draft service recovered; its arms return", service=self.name)

    def take(self, listed: list[tuple[DrafterEntry, str]], target_fingerprint: str) -> None:
        """The listed drafters (each with its vocabulary fingerprint, "" for any) become this host's, less
        those whose token ids would mean other text than the target's: they are refused, and logged once."""
        usable, refused = [], {}
        for drafter, fingerprint in listed:
            if fingerprint and fingerprint != target_fingerprint:
                refused[drafter.name] = (
                    f"drafter {drafter.name!r} on draft service {self.name!r} ({self.address}) has vocabulary "
                    f"fingerprint {fingerprint}, the target has {target_fingerprint}: its token ids "
                    "would not mean the same text, so it is not used"
                )
                if drafter.name not in self.refused:
                    log.warning("drafter refused", reason=refused[drafter.name])
            else:
                usable.append(drafter)
        self.drafters, self.refused = usable, refused

    @property
    def learns_from_outputs(self) -> bool:
        return any(drafter.learns_from_outputs for drafter in self.drafters)

    def model_free_drafters(self) -> set[str]:
        return {drafter.name for drafter in self.drafters if drafter.model_free}

    def arms(self, model_free_gammas: list[int], model_gammas: list[int], tree_tokens: Sequence[int] = ()) -> list[Arm]:
        """Chain arms per γ; for drafters that branch, a tree arm per budget too, as deep as the longest chain."""
        arms = []
        for drafter in self.drafters:
            gammas = model_free_gammas if drafter.model_free else model_gammas
            arms += [Arm.drafted(self.name, drafter.name, gamma) for gamma in gammas]
            if drafter.proposes_trees and gammas:
                arms += [Arm.tree(self.name, drafter.name, max(gammas), tokens) for tokens in tree_tokens]
        return arms


class DraftClient(DraftHost):
    """One draft service, over gRPC; remembers its drafters and which of them the target accepts."""

    def __init__(
        self,
        name: str,
        address: str,
        tls: ClientTLS | None = None,
        draft_deadline: float = DEFAULT_DRAFT_DEADLINE_SECONDS,
    ) -> None:
        super().__init__(name, address)
        self.draft_deadline = draft_deadline
        self.channel = open_aio_channel(address, tls)
        self.stub = draft_pb2_grpc.DraftServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def healthy(self, timeout: float) -> bool:
        """Whether the service reports SERVING (a restarted one is NOT_SERVING while it loads)."""
        try:
            response = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def refresh(self, target_fingerprint: str, timeout: float) -> None:
        response = await self.stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=timeout)
        self.take([(DrafterEntry.from_pb(d), d.vocab_fingerprint) for d in response.drafters], target_fingerprint)

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
        self.stream = RoundStream(client.stub.ProposeStream, deadline.stream_timeout)

    async def propose(
        self,
        context: list[int],
        drafter: str,
        num_tokens: int,
        score_drafters: list[str] | None = None,
        score_num_tokens: int = 0,
        tree_tokens: int = 0,
        score_tree_tokens: int = 0,
    ) -> Proposal:
        """Up to `num_tokens` draft tokens from `drafter` (with `tree_tokens`, a tree of up to that many, no
        deeper than `num_tokens`), and drafts of `score_drafters` to score.

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
                tree_tokens=tree_tokens,
                score_tree_tokens=score_tree_tokens,
            )
            shipped = len(context) - synced
            allowed = self.client.draft_deadline * (1.0 + shipped / CONTEXT_TOKENS_PER_DRAFT_DEADLINE)
            timeout = min(allowed, self.deadline.timeout())
            try:
                response = await self.stream.exchange(request, timeout)
            except TimeoutError as error:
                if self.deadline.expired():
                    raise
                reason = f"no proposal within {timeout:.2f} s (--draft-deadline)"
                self.client.failed(reason)
                raise DrafterFailed(reason) from error
            except grpc.aio.AioRpcError as error:
                if is_session_lost(error) and attempt == 0:
                    self.synced = 0  # resend the full context
                    continue
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self.deadline.expired():
                    raise
                reason = f"{error.code().name}: {error.details()}"
                if error.code() in SERVICE_FAILURES:
                    self.client.failed(reason)
                raise DrafterFailed(reason) from error
            self.client.succeeded()
            self.synced = len(context)
            parents = list(response.draft_parents) or None
            token_ids = list(response.draft_ids[: tree_tokens if parents else num_tokens])
            return Proposal(
                token_ids=token_ids,
                probs=list(response.draft_probs[: len(token_ids)]),
                compute_seconds=response.compute_seconds,
                alternatives={a.drafter: list(a.draft_ids) for a in response.alternatives},
                parents=parents[: len(token_ids)] if parents else None,
                alternative_parents={
                    a.drafter: list(a.draft_parents) for a in response.alternatives if a.draft_parents
                },
            )
        raise DrafterFailed("draft session could not be reopened")

    async def score(self, context: list[int], drafters: list[str], num_tokens: int, tree_tokens: int) -> Proposal:
        raise NotImplementedError("a draft service is not free to ask: its drafts to score come with a proposal")

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

    def __init__(self, method: grpc.aio.StreamStreamMultiCallable, stream_timeout: Callable[[], float]) -> None:
        self.method = method
        self.stream_timeout = stream_timeout  # what is left of the request when a stream (re)opens
        self.call: grpc.aio.StreamStreamCall | None = None

    async def exchange(
        self, request: Any, timeout: float, meanwhile: Callable[[], Awaitable[None]] | None = None
    ) -> Any:
        """Send `request`, run `meanwhile` (it must not raise: the answer would be left unread), read the answer."""
        if self.call is not None and self.call.done():
            self.call = None  # it ended between rounds (its service went away): a new stream finds out how
        if self.call is None:
            self.call = self.method(timeout=self.stream_timeout())
        call = self.call
        try:
            async with asyncio.timeout(timeout):
                await call.write(request)
                if meanwhile is not None:
                    await meanwhile()
                response = await call.read()
        except (grpc.aio.AioRpcError, asyncio.CancelledError, TimeoutError):
            self.abandon()
            raise
        except asyncio.InvalidStateError as error:  # it ended just before the write
            self.abandon()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "the round stream had ended"
            ) from error
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
        """Half-close the stream. It is finished either way, so nothing here may keep the caller from its
        next step (a session's release): a call that ended meanwhile can raise more than `AioRpcError`
        (grpc's own internal errors), and a stalled peer gets `CLOSE_TIMEOUT_SECONDS`."""
        if self.call is not None:
            call, self.call = self.call, None
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await call.done_writing()
            except Exception:
                call.cancel()
