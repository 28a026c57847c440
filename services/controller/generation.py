"""One request's bandit loop: pick an arm, draft, verify, reward; repeat until done.

Each round the policy picks an arm (a drafter and γ, or target-only). The arm's draft service proposes
up to γ tokens, the target verifies them and commits the accepted ones plus one of its own, and the
policy is rewarded with the round's verified tokens per wall second, normalised. A drafter that fails
takes its arms out of this request and the round is played again without it; with no arm left the
target decodes alone. Sessions and their syncing live in `clients`; this module sees dataclasses.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np
import structlog
from transformers import PreTrainedTokenizerBase

from banditspec.errors import OutOfRange
from banditspec.policy_names import COUNTERFACTUAL_POLICIES
from services.controller import metrics
from services.controller.arms import TARGET_ONLY_ARM, Arm
from services.controller.batch_cost import (
    LOAD_COSTS,
    ForwardModel,
    Load,
    LoadedCharges,
    charged_seconds,
    load_ceiling,
)
from services.controller.clients import DrafterFailed, DraftHost, ProposalSession, TargetClient
from services.controller.counterfactual import CounterfactualScorer, RoundCosts
from services.controller.domain import (
    NO_DRAFT,
    ArmTally,
    Deadline,
    GenerationRequest,
    GenerationResult,
    Proposal,
    RoundEvent,
    Verdict,
)
from services.controller.policies import make_policy
from services.controller.reward import RewardScale, StepTimeEstimate
from services.controller.text import TextStream

log = structlog.get_logger()


@dataclass(frozen=True)
class Round:
    """One played round: the arm (index None: the fallback), the γ played, the draft and the verdict;
    its wall time and the load it ran at (None: alone)."""

    index: int | None
    arm: Arm
    gamma: int
    proposal: Proposal
    verdict: Verdict
    wall_seconds: float
    load: Load | None
    charged_seconds: float  # what the reward divides by (see batch_cost)
    side_drafts: dict[str, Proposal] = field(default_factory=dict)  # free-to-ask hosts' drafts to score

    @property
    def service_seconds(self) -> float:
        return self.proposal.compute_seconds + self.verdict.compute_seconds

    @property
    def fed(self) -> int:
        return fed_tokens(self.proposal)


def fed_tokens(proposal: Proposal) -> int:
    """Tokens a round feeds the target: its draft and the last committed token."""
    return len(proposal.token_ids) + 1


class Generation:
    def __init__(
        self,
        request: GenerationRequest,
        target: TargetClient,
        drafts: dict[str, DraftHost],
        tokenizer: PreTrainedTokenizerBase,
        step_estimate: StepTimeEstimate,
        deadline: Deadline,
        forward_model: ForwardModel | None = None,
        running: Callable[[], int] = lambda: 1,
        load_cost: str = "cycle",
    ) -> None:
        if load_cost not in LOAD_COSTS:
            raise ValueError(f"load_cost must be one of {', '.join(LOAD_COSTS)}, got {load_cost!r}")
        self.request = request
        self.running = running  # requests running at the controller now
        self.load_cost = load_cost
        self.info = target.info
        self.step_estimate = step_estimate
        self.forward_model = forward_model or ForwardModel(self.info.forward_seconds, self.info.batch_forward_seconds)
        session_id = uuid.uuid4().hex
        self.target = target.session(session_id, request.sampling, request.seed, deadline)
        self.drafts = {
            name: client.session(session_id, request.sampling, request.seed, deadline)
            for name, client in drafts.items()
        }
        self.context = list(request.prompt_ids)
        self.text = TextStream(tokenizer, request.stop)
        self.result = GenerationResult(tallies={arm.name: ArmTally() for arm in request.arms})
        self.policy = make_policy(request.policy, len(request.arms), np.random.default_rng(request.seed))
        self.max_gamma = max(arm.gamma for arm in request.arms)
        self.round_overhead = max(0.0, step_estimate.seconds - self.info.decode_step_seconds)
        self.scale = RewardScale.for_arms(
            max_gamma=self.max_gamma,
            forward_seconds=self.info.verify_seconds,
            round_overhead_seconds=self.round_overhead,
            step_seconds=step_estimate.seconds,
        )
        self.scorer = self._counterfactual_scorer(
            {name: client.model_free_drafters() for name, client in drafts.items()}
        )
        self.loaded_charges = LoadedCharges()  # per arm index; the fallback (no index) is target-only
        self.completed = False
        self.load = 1  # requests running when this one started (warm starts are per load)
        self.log = log.bind(request_id=request.request_id)

    def _counterfactual_scorer(self, model_free: dict[str, set[str]]) -> CounterfactualScorer | None:
        """Only for a counterfactual policy at temperature 0: a sampled answer depends on the arm, so
        there is no single verified text to score unpulled drafts against."""
        request = self.request
        if request.policy not in COUNTERFACTUAL_POLICIES or not request.sampling.greedy:
            return None
        if not self.info.forward_seconds:
            return None
        forward = self.info.verify_seconds
        overhead = max(0.0, self.step_estimate.seconds - forward[0])
        costs = RoundCosts(forward, overhead, overhead, model=self.forward_model)
        return CounterfactualScorer(request.arms, costs, model_free)

    # the loop ----------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[RoundEvent]:
        start = time.perf_counter()
        if len(self.context) + 1 > self.info.max_context:
            raise OutOfRange(
                f"prompt of {len(self.context)} tokens fills the target's context of {self.info.max_context}"
            )
        try:
            self.result.prefill_seconds = await self.target.open(self.context)
            while (room := self._room()) > 0:
                index = self.policy.select()
                arm = TARGET_ONLY_ARM if index is None else self.request.arms[index]
                played = await self._play(index, arm, min(arm.gamma, room - 1))
                if played is None:  # the drafter failed and left the request: choose again
                    continue
                event = self._settle(played)
                if self.result.first_token_seconds is None and self.text.ids:
                    self.result.first_token_seconds = time.perf_counter() - start
                yield event
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

    def _room(self) -> int:
        """Tokens this request may still commit; sets the finish reason when none are left."""
        generated = len(self.text.ids)
        room = min(self.request.max_new_tokens - generated, self.info.max_context - len(self.context))
        if room <= 0 and self.result.finish_reason not in ("eos", "stop"):
            self.result.finish_reason = "length" if generated >= self.request.max_new_tokens else "context"
        return room

    async def _play(self, index: int | None, arm: Arm, gamma: int) -> Round | None:
        """Draft (unless γ = 0) and verify; None when the drafter failed or the target rejected its draft."""
        start = time.perf_counter()
        proposal = NO_DRAFT
        scored_later = self._scores_while_verifying()
        if gamma > 0:
            try:
                proposal = await self._propose(arm, gamma, with_alternatives=not (scored_later and self._local(arm)))
            except DrafterFailed as error:
                self._drop_drafter(arm, str(error))
                return None
        verify_start = time.perf_counter()
        try:
            if scored_later:
                verdict, side_drafts, proposal = await self._verify_and_score(arm, gamma, proposal)
            else:
                verdict, side_drafts = await self.target.verify(self.context, proposal), {}
        except DrafterFailed as error:  # the target rejected the draft: nothing was committed
            self._drop_drafter(arm, str(error))
            return None
        end = time.perf_counter()
        wall = end - start
        load = self._load_of(proposal, verdict)
        charged = charged_seconds(wall, fed_tokens(proposal), load, end - verify_start, self.round_overhead)
        return Round(index, arm, gamma, proposal, verdict, wall, load, charged, side_drafts)

    def _local(self, arm: Arm) -> bool:
        session = self.drafts.get(arm.service)
        return session is not None and session.client.free_to_ask

    def _scores_while_verifying(self) -> bool:
        """With counterfactual scoring, whether this round asks a host that is free to ask (the controller's
        own drafters) for drafts to score: that work then runs while the target verifies."""
        scorer = self.scorer
        if scorer is None:
            return False
        return any(
            scorer.score_drafters.get(name) and session.client.free_to_ask for name, session in self.drafts.items()
        )

    async def _verify_and_score(
        self, arm: Arm, gamma: int, proposal: Proposal
    ) -> tuple[Verdict, dict[str, Proposal], Proposal]:
        """The drafts to score are drafted once the verify is sent, during the target's forward, where they add
        nothing to the round's wall time; returns the verdict, the side drafts and the proposal with its
        alternatives."""
        side_drafts: dict[str, Proposal] = {}
        scored = proposal

        async def score() -> None:
            nonlocal side_drafts, scored
            try:
                side_drafts = await self._side_drafts(arm, gamma)
                if gamma > 0 and self._local(arm):
                    scored = await self._with_alternatives(arm, self.drafts[arm.service], proposal)
            except Exception:  # scoring is optional; the verify's answer must still be read
                self.log.exception("drafts to score failed")

        verdict = await self.target.verify(self.context, proposal, meanwhile=score)
        return verdict, side_drafts, scored

    async def _with_alternatives(self, arm: Arm, session: ProposalSession, proposal: Proposal) -> Proposal:
        """The proposal with the drafts of the other drafters its host holds, to score."""
        scorer = self.scorer
        assert scorer is not None
        names = scorer.alternatives_for(arm)
        if not names:
            return proposal
        found = await session.score(self.context, names, scorer.score_num_tokens, scorer.score_tree_tokens)
        return replace(proposal, alternatives=found.alternatives, alternative_parents=found.alternative_parents)

    async def _side_drafts(self, arm: Arm, gamma: int) -> dict[str, Proposal]:
        """With counterfactual scoring: drafts of the hosts that are free to ask (the controller's own
        drafters) when the round did not ask them, so their arms are scored even in target-only rounds."""
        scorer = self.scorer
        if scorer is None:
            return {}
        drafts = {}
        for name, session in self.drafts.items():
            names = scorer.score_drafters.get(name)
            if names and session.client.free_to_ask and not (gamma > 0 and name == arm.service):
                drafts[name] = await session.score(
                    self.context, names, scorer.score_num_tokens, scorer.score_tree_tokens
                )
        return drafts

    def _load_of(self, proposal: Proposal, verdict: Verdict) -> Load | None:
        fed = fed_tokens(proposal)
        rows, tokens, forward = verdict.batch_rows, verdict.batch_tokens, verdict.batch_forward_seconds
        if self.load_cost == "cycle":
            # Prompts prefilling beside the round make its draft look nearly free in that forward alone; the
            # policy, which cannot tell such forwards apart, learns from the rounds it competes with.
            verifying_rows = max(1, rows - verdict.batch_prefill_rows)
            verifying_tokens = max(fed, tokens - verdict.batch_prefill_tokens)
            load = Load.cycle(fed, verifying_rows, verifying_tokens, forward, self.running(), self.forward_model)
            if load is not None:
                return load
        return Load.of(fed, rows, tokens, forward)  # also rows of other controllers' requests

    async def _propose(self, arm: Arm, gamma: int, with_alternatives: bool = True) -> Proposal:
        session = self.drafts.get(arm.service)
        if session is None:
            raise DrafterFailed(f"draft service {arm.service!r} is not configured")
        scorer = self.scorer
        if scorer is None or not with_alternatives:
            return await session.propose(self.context, arm.drafter, gamma, tree_tokens=arm.tree_tokens)
        return await session.propose(
            self.context, arm.drafter, gamma, scorer.alternatives_for(arm), scorer.score_num_tokens,
            arm.tree_tokens, scorer.score_tree_tokens,
        )  # fmt: skip

    def _settle(self, played: Round) -> RoundEvent:
        """Commit the verified tokens, reward the policy, and describe the round."""
        position = len(self.context)
        self.context.extend(played.verdict.token_ids)
        if self.scorer is not None:
            self._learn_counterfactually(played, position)
        kept, text = self._emit(played.verdict.token_ids)
        self._reward(played)
        self.result.overheads.append(max(0.0, played.wall_seconds - played.service_seconds))
        self.result.rounds += 1
        drafted = len(played.proposal.token_ids)
        return RoundEvent(
            self.result.rounds, played.arm.name, drafted, played.verdict.accepted, kept, text,
            played.wall_seconds, played.service_seconds,
        )  # fmt: skip

    def _emit(self, tokens: list[int]) -> tuple[list[int], str]:
        """The tokens the client gets (cut after EOS or at a stop string) and their new text."""
        for position, token in enumerate(tokens):
            if token in self.info.eos_token_ids:
                tokens = tokens[: position + 1]
                self.result.finish_reason = "eos"
                break
        kept, text = self.text.add(tokens)
        if self.text.stopped:
            self.result.finish_reason = "stop"
        return kept, text

    def _normalise(self, tokens_per_second: float, load: Load | None) -> float:
        """In [0, 1]: against the lone-round ceiling, or against the best round beside the same load."""
        if load is None:
            return self.scale.normalise(tokens_per_second)
        ceiling = load_ceiling(self.forward_model, load, self.max_gamma, self.round_overhead)
        return min(1.0, max(0.0, tokens_per_second / ceiling))

    def _loaded_rate(self, arm: int, tokens: float, seconds: float, load: Load | None) -> float:
        """Tokens per second for the policy: alone, per the round's own time; under the cycle model, per the
        arm's mean charge under load (`LoadedCharges`)."""
        if load is None or load.model is None:
            return tokens / seconds
        return tokens / self.loaded_charges.mean_with(arm, seconds)

    def _reward(self, played: Round) -> None:
        arm, verdict, wall = played.arm, played.verdict, played.wall_seconds
        drafted, verified = len(played.proposal.token_ids), len(verdict.token_ids)
        if verdict.batch_tokens:
            model = self.forward_model
            rows, prefill_rows = verdict.batch_rows, verdict.batch_prefill_rows
            if model.observe(verdict.batch_tokens, verdict.batch_forward_seconds, rows, prefill_rows):
                metrics.record_forward_slowdown(model.speed, model.token_speed)  # once per forward, not per row
            if rows <= 1 and self.running() <= 1:
                model.observe_alone(verdict.batch_tokens, verdict.batch_forward_seconds)
        tokens_per_second = verified / played.charged_seconds
        if played.index is not None:
            rate = self._loaded_rate(played.index, verified, played.charged_seconds, played.load)
            self.policy.update(played.index, self._normalise(rate, played.load))
        if arm.gamma == 0 and verdict.batch_rows <= 1:  # its forward to itself: its wall time is a step's
            self.step_estimate.observe(wall)
        tally = self.result.tallies.setdefault(arm.name, ArmTally())
        tally.pulls += 1
        tally.drafted += drafted
        tally.accepted += verdict.accepted
        tally.reward_sum += tokens_per_second
        tally.wall_seconds += wall
        metrics.record_round(arm, drafted, verdict.accepted, verified, wall)
        self.log.debug("round", arm=arm.name, round=self.result.rounds + 1, drafted=drafted, accepted=verdict.accepted)

    def _learn_counterfactually(self, played: Round, position: int) -> None:
        assert self.scorer is not None
        load = played.load
        samples = self.scorer.after_round(
            played.index, played.arm, played.gamma, played.proposal, position, played.charged_seconds, self.context,
            load, played.side_drafts,
        )  # fmt: skip
        for sample in samples:
            if not self.policy.is_active(sample.arm):
                continue
            rate = self._loaded_rate(sample.arm, sample.tokens, sample.seconds, load)
            self.policy.observe(sample.arm, self._normalise(rate, load))
            self.result.tallies.setdefault(self.request.arms[sample.arm].name, ArmTally()).counterfactual += 1

    def _drop_drafter(self, arm: Arm, reason: str) -> None:
        """The drafter's arms leave the request; every arm of its service does once the service's breaker
        is open (it keeps failing: hung, gone)."""
        session = self.drafts.get(arm.service)
        whole_service = session is not None and session.client.breaker.open
        self.log.warning(
            "drafter failed; its arms leave this request", arm=arm.name, reason=reason, whole_service=whole_service
        )
        metrics.DRAFTER_FAILURES.labels(arm.service).inc()
        for index, other in enumerate(self.request.arms):
            if other.service == arm.service and (whole_service or other.drafter == arm.drafter):
                if self.scorer is not None:
                    self.scorer.drop_drafter(other.service, other.drafter)
                self.policy.disable(index)

    # after the request -------------------------------------------------------------------------
    async def release(self) -> None:
        """Free the sessions everywhere. Drafters that learn from outputs get the answer as returned
        (cut at a stop string or EOS); a failed request teaches them nothing."""
        answer = self.request.prompt_ids + self.result.token_ids if self.completed else None
        prompt_length = len(self.request.prompt_ids)
        await asyncio.gather(
            self.target.release(), *(session.release(answer, prompt_length) for session in self.drafts.values())
        )

    def overhead_median(self) -> float:
        return statistics.median(self.result.overheads) if self.result.overheads else 0.0
