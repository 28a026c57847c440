"""One request's bandit loop: pick an arm, draft, verify, reward; repeat until done.

Sessions sync incrementally: the target sees only drafts, each draft service only the context it
has not seen. A target that lost the session gets the full context with the retried round and
reopens it in the same step; a draft service gets it on the next proposal. A drafter that fails
takes its arms out of this request, and the round goes on without it.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc
import numpy as np
import structlog

from banditspec.errors import OutOfRange, is_session_lost
from banditspec.sampling import SamplingParams
from banditspec.v1 import common_pb2, draft_pb2, target_pb2
from services.controller import metrics
from services.controller.arms import TARGET_ONLY_ARM, Arm
from services.controller.clients import DraftClient, RoundStream, TargetClient
from services.controller.counterfactual import CounterfactualScorer, RoundCosts
from services.controller.policies import make_policy
from services.controller.reward import RewardScale, StepTimeEstimate
from services.controller.text import TextStream

log = structlog.get_logger()


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    seed: int
    stop: list[str]
    policy: str
    arms: list[Arm]
    request_id: str


@dataclass(frozen=True)
class RoundEvent:
    round: int
    arm: str
    drafted: int
    accepted: int
    token_ids: list[int]
    text: str
    wall_seconds: float
    service_seconds: float


@dataclass
class ArmTally:
    pulls: int = 0
    drafted: int = 0
    accepted: int = 0
    reward_sum: float = 0.0
    wall_seconds: float = 0.0
    counterfactual: int = 0  # reward samples from rounds where another arm was pulled


@dataclass
class GenerationResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    rounds: int = 0
    wall_seconds: float = 0.0
    prefill_seconds: float = 0.0
    overheads: list[float] = field(default_factory=list)
    tallies: dict[str, ArmTally] = field(default_factory=dict)


MAX_REQUEST_SECONDS = 3600.0  # a request without a deadline still gets one


class DrafterFailed(Exception):
    pass


class Deadline:
    def __init__(self, seconds: float | None, rpc_timeout: float) -> None:
        self.expires = None if seconds is None else time.monotonic() + seconds
        self.rpc_timeout = rpc_timeout

    def timeout(self) -> float:
        """For one call or one round: the RPC timeout, cut to what is left of the request's deadline."""
        if self.expires is None:
            return self.rpc_timeout
        return max(0.001, min(self.rpc_timeout, self.expires - time.monotonic()))

    def stream_timeout(self) -> float:
        """For a stream that lives as long as the request; each round on it still has `timeout()`."""
        if self.expires is None:
            return MAX_REQUEST_SECONDS
        return max(0.001, self.expires - time.monotonic())


class Generation:
    def __init__(
        self,
        request: GenerationRequest,
        target: TargetClient,
        drafts: dict[str, DraftClient],
        tokenizer,
        step_estimate: StepTimeEstimate,
        deadline: Deadline,
    ) -> None:
        self.request = request
        self.target = target
        self.drafts = drafts
        self.step_estimate = step_estimate
        self.deadline = deadline
        self.session_id = uuid.uuid4().hex
        self.context = list(request.prompt_ids)
        self.synced: dict[str, int] = {}  # draft service → context tokens it holds
        self.completed = False
        stream_timeout = deadline.stream_timeout()
        self.verify_stream = RoundStream(target.stub.VerifyStream, stream_timeout)
        self.propose_streams = {
            name: RoundStream(client.stub.ProposeStream, stream_timeout) for name, client in drafts.items()
        }
        self.text = TextStream(tokenizer, request.stop)
        self.result = GenerationResult(tallies={arm.name: ArmTally() for arm in request.arms})
        self.policy = make_policy(request.policy, len(request.arms), np.random.default_rng(request.seed))
        info = target.info
        self.scale = RewardScale.for_arms(
            max_gamma=max(arm.gamma for arm in request.arms),
            forward_seconds=target.verify_seconds,
            round_overhead_seconds=max(0.0, step_estimate.seconds - info.decode_step_seconds),
            step_seconds=step_estimate.seconds,
        )
        self.scorer = self._counterfactual_scorer(info, step_estimate)
        self.max_context = target.info.max_context
        self.eos = set(target.info.eos_token_ids)
        self.sampling_pb = request.sampling.to_pb()
        self.log = log.bind(request_id=request.request_id)

    def _counterfactual_scorer(self, info, step_estimate: StepTimeEstimate) -> CounterfactualScorer | None:
        """Only for ucbspec-cf at temperature 0: sampled answers depend on the arm, so there is no
        single verified text to score unpulled drafts against."""
        if self.request.policy != "ucbspec-cf" or not self.request.sampling.greedy or not info.forward_seconds:
            return None
        forward = self.target.verify_seconds
        overhead = max(0.0, step_estimate.seconds - forward[0])
        model_free = {
            service: {d.name for d in client.drafters if d.kind != draft_pb2.DRAFTER_KIND_MODEL}
            for service, client in self.drafts.items()
        }
        self.score_drafters: dict[str, list[str]] = {}
        for arm in self.request.arms:
            if arm.gamma > 0 and arm.drafter in model_free.get(arm.service, ()):
                names = self.score_drafters.setdefault(arm.service, [])
                if arm.drafter not in names:
                    names.append(arm.drafter)
        self.score_num_tokens = max((a.gamma for a in self.request.arms), default=0)
        return CounterfactualScorer(self.request.arms, RoundCosts(forward, overhead, overhead))

    # target ------------------------------------------------------------------------------------
    def _session_seed(self) -> int:
        """A session (re)opened at another context length gets fresh random streams: replaying the
        request's stream from its start would correlate new draws with tokens already in the context."""
        return (self.request.seed * 0x9E3779B97F4A7C15 + len(self.context)) & 0x7FFF_FFFF_FFFF_FFFF

    def _open_request(self) -> target_pb2.OpenSessionRequest:
        return target_pb2.OpenSessionRequest(
            session_id=self.session_id,
            context_ids=self.context,
            sampling=self.sampling_pb,
            seed=self._session_seed(),
        )

    async def _open_target(self) -> float:
        response = await self.target.stub.OpenSession(self._open_request(), timeout=self.deadline.timeout())
        return response.compute_seconds

    async def _verify(self, draft_ids: list[int], draft_probs: list[common_pb2.TokenDistribution]):
        request = target_pb2.VerifyRequest(
            session_id=self.session_id,
            context_length=len(self.context),
            draft_ids=draft_ids,
            draft_probs=draft_probs,
        )
        try:
            return await self.verify_stream.exchange(request, self.deadline.timeout())
        except grpc.aio.AioRpcError as error:
            if not is_session_lost(error):
                raise
            self.log.warning("target lost the session; reopening with the full context", tokens=len(self.context))
            request.reopen.CopyFrom(self._open_request())
            return await self.verify_stream.exchange(request, self.deadline.timeout())

    # drafts ------------------------------------------------------------------------------------
    async def _propose(self, arm: Arm, gamma: int) -> draft_pb2.ProposeResponse:
        stream = self.propose_streams.get(arm.service)
        if stream is None:
            raise DrafterFailed(f"draft service {arm.service!r} is not configured")
        for attempt in range(2):
            synced = self.synced.get(arm.service, 0)
            request = draft_pb2.ProposeRequest(
                session_id=self.session_id,
                drafter=arm.drafter,
                num_tokens=gamma,
                context_length=synced,
                new_context_ids=self.context[synced:],
                sampling=self.sampling_pb,
                seed=self._session_seed(),
            )
            if self.scorer is not None:
                request.score_drafters.extend(n for n in self.score_drafters.get(arm.service, []) if n != arm.drafter)
                request.score_num_tokens = self.score_num_tokens
            try:
                response = await stream.exchange(request, self.deadline.timeout())
            except TimeoutError as error:
                raise DrafterFailed("no proposal within the round deadline") from error
            except grpc.aio.AioRpcError as error:
                if is_session_lost(error) and attempt == 0:
                    self.synced[arm.service] = 0  # resend the full context
                    continue
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self.deadline.timeout() <= 0.001:
                    raise
                raise DrafterFailed(f"{error.code().name}: {error.details()}") from error
            self.synced[arm.service] = len(self.context)
            return response
        raise DrafterFailed("draft session could not be reopened")

    def _drop_drafter(self, arm: Arm, reason: str) -> None:
        self.log.warning("drafter failed; its arms leave this request", arm=arm.name, reason=reason)
        dropped = set()
        for index, other in enumerate(self.request.arms):
            if other.service == arm.service and other.drafter == arm.drafter:
                self.policy.disable(index)
                dropped.add(index)
        if self.scorer is not None:
            self.scorer.forget(dropped)
            names = self.score_drafters.get(arm.service, [])
            if arm.drafter in names:
                names.remove(arm.drafter)

    # the loop ----------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[RoundEvent]:
        request = self.request
        start = time.perf_counter()
        if len(self.context) + 1 > self.max_context:
            raise OutOfRange(f"prompt of {len(self.context)} tokens fills the target's context of {self.max_context}")
        try:
            self.result.prefill_seconds = await self._open_target()
            generated = 0
            while True:
                room = min(request.max_new_tokens - generated, self.max_context - len(self.context))
                if room <= 0:
                    self.result.finish_reason = "length" if generated >= request.max_new_tokens else "context"
                    break
                try:
                    index = self.policy.select()
                    arm = request.arms[index]
                except RuntimeError:  # every drafter failed: the target alone
                    index, arm = -1, TARGET_ONLY_ARM
                gamma = min(arm.gamma, room - 1)
                round_start = time.perf_counter()
                draft_ids: list[int] = []
                draft_probs: list[common_pb2.TokenDistribution] = []
                service_seconds = 0.0
                proposal = None
                if gamma > 0:
                    try:
                        proposal = await self._propose(arm, gamma)
                    except DrafterFailed as error:
                        self._drop_drafter(arm, str(error))
                        continue
                    draft_ids = list(proposal.draft_ids[:gamma])
                    draft_probs = list(proposal.draft_probs[: len(draft_ids)])
                    service_seconds += proposal.compute_seconds
                verdict = await self._verify(draft_ids, draft_probs)
                wall = time.perf_counter() - round_start
                service_seconds += verdict.compute_seconds
                position = len(self.context)
                self.context.extend(verdict.token_ids)
                if self.scorer is not None:
                    self._score_counterfactually(index, arm, gamma, proposal, position, len(draft_ids), wall)

                tokens = list(verdict.token_ids)
                for position, token in enumerate(tokens):
                    if token in self.eos:
                        tokens = tokens[: position + 1]
                        self.result.finish_reason = "eos"
                        break
                kept, text = self.text.add(tokens)
                if self.text.stopped:
                    self.result.finish_reason = "stop"
                generated += len(kept)
                self._record(index, arm, len(draft_ids), verdict.accepted, len(verdict.token_ids), wall)
                self.result.overheads.append(max(0.0, wall - service_seconds))
                self.result.rounds += 1
                yield RoundEvent(
                    self.result.rounds, arm.name, len(draft_ids), verdict.accepted, kept, text, wall, service_seconds
                )
                if self.result.finish_reason in ("eos", "stop"):
                    break
            tail = self.text.finish()
            if tail:
                yield RoundEvent(self.result.rounds, "", 0, 0, [], tail, 0.0, 0.0)
            self.result.token_ids = self.text.ids
            self.result.text = self.text.text
            self.completed = True
        finally:
            self.result.wall_seconds = time.perf_counter() - start

    def _score_counterfactually(self, index, arm: Arm, gamma: int, proposal, position: int, drafted: int, wall: float) -> None:
        scorer = self.scorer
        model_free = arm.drafter in self.score_drafters.get(arm.service, [])
        scorer.costs.observe(drafted, wall, f"{arm.service}/{arm.drafter}" if gamma > 0 else None, model_free)
        samples = []
        if gamma > 0 and proposal is not None:
            # The pulled drafter's own draft also decides its arms of smaller γ (a draft's prefix is
            # the shorter draft); alternatives come from the other model-free drafters.
            own = [i for i in scorer.arms_of(arm.service, arm.drafter) if i != index and self.request.arms[i].gamma <= gamma]
            scorer.add(position, arm.service, arm.drafter, list(proposal.draft_ids[:gamma]), own)
            for alternative in proposal.alternatives:
                scorer.add(position, arm.service, alternative.drafter, list(alternative.draft_ids))
            samples += scorer.target_only_samples(index)
        samples += scorer.resolve(self.context)
        for arm_index, tokens, seconds in samples:
            if not self.policy.active[arm_index]:
                continue
            self.policy.observe(arm_index, self.scale.normalise(tokens / seconds))
            self.result.tallies.setdefault(self.request.arms[arm_index].name, ArmTally()).counterfactual += 1

    def _record(self, index: int, arm: Arm, drafted: int, accepted: int, verified: int, wall: float) -> None:
        tokens_per_second = verified / wall
        if index >= 0:
            self.policy.update(index, self.scale.normalise(tokens_per_second))
        if arm.gamma == 0:
            self.step_estimate.observe(wall)
        tally = self.result.tallies.setdefault(arm.name, ArmTally())
        tally.pulls += 1
        tally.drafted += drafted
        tally.accepted += accepted
        tally.reward_sum += tokens_per_second
        tally.wall_seconds += wall
        metrics.record_round(arm.name, drafted, accepted, verified, wall)
        self.log.debug("round", arm=arm.name, round=self.result.rounds + 1, drafted=drafted, accepted=accepted)

    async def release(self) -> None:
        """Free the session everywhere; failures only cost memory until eviction."""
        await self.verify_stream.close()
        for stream in self.propose_streams.values():
            await stream.close()
        calls = [self.target.stub.ReleaseSession(target_pb2.ReleaseSessionRequest(session_id=self.session_id), timeout=5)]
        prompt_length = len(self.request.prompt_ids)
        # Drafters that learn from outputs (suffix) get the answer as returned (cut at a stop string or
        # EOS), even from a service this request never drafted with; not the text of a failed request.
        answer = self.request.prompt_ids + self.result.token_ids if self.completed else []
        for service, client in self.drafts.items():
            learn = client.learns_from_outputs and len(answer) > prompt_length
            if service not in self.synced and not learn:
                continue
            release = draft_pb2.ReleaseDraftSessionRequest(session_id=self.session_id)
            if learn:
                release.new_context_ids.extend(answer)  # the whole context: context_length 0
                release.prompt_length = prompt_length
            calls.append(client.stub.ReleaseSession(release, timeout=5))
        for call in calls:
            try:
                await call
            except grpc.aio.AioRpcError as error:
                self.log.info("release failed", code=error.code().name)

    def overhead_median(self) -> float:
        return statistics.median(self.result.overheads) if self.result.overheads else 0.0
