"""Counterfactual scoring of arms that were not pulled (greedy requests only).

At temperature 0 the answer does not depend on the arms: the text the target verifies is the text any
arm would have produced. So a draft that was not verified can still be scored: its accepted length is
its common prefix with the text verified from the same position (HedgeSpec's observation, arXiv
2510.20064). Each round the draft service also proposes with the request's other model-free drafters
(microseconds each); once enough text is verified, each of their arms gets a reward sample
`(accepted + 1) / modelled round seconds`, and target-only one of `1 / modelled seconds`. Round times are
modelled from the target's measured k-token forwards plus the round overheads measured so far, so
co-observed arms are compared on one scale. Model drafters are not scored: that would cost a forward.
Drafters in the controller's own process cost no RPC to ask, so they are scored every round, also in
rounds that played target-only or another host's arm.

Token trees: a drafter that branches is asked for a tree of the largest budget among its tree arms. It
scores each tree arm as the tree cut to that arm's budget and depth (its first nodes: a drafter adds its
best candidates first), accepting the longest path the verified text follows, at the cost of every node;
and each chain arm of the drafter as the tree's first path (its chain). A chain scores only chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from banditspec.tokens import common_prefix_length
from services.controller.arms import Arm
from services.controller.batch_cost import ForwardModel, Load
from services.controller.domain import Proposal


class Sample(NamedTuple):
    """A reward sample for an arm: the tokens its round would have verified, in modelled seconds."""

    arm: int
    tokens: float
    seconds: float


@dataclass
class _Pending:
    position: int  # context length when the draft was made
    drafter: str  # SERVICE/DRAFTER
    draft: list[int]
    arms: list[int] = field(default_factory=list)  # request arm indices still unscored
    parents: list[int] | None = None  # a token tree (see ProposeResponse.draft_parents)

    @cached_property
    def chain(self) -> list[int]:
        """The draft as a chain: a tree's first path."""
        return self.draft if self.parents is None else first_path(self.draft, self.parents)


def first_path(draft: list[int], parents: list[int]) -> list[int]:
    """From the root, each node's first child: the chain a branching drafter would have proposed."""
    path, node = [], -1
    for index, parent in enumerate(parents):
        if parent == node:
            path.append(draft[index])
            node = index
    return path


def tree_outcome(
    draft: list[int], parents: list[int], known: list[int], max_tokens: int, max_depth: int
) -> tuple[int, int, bool]:
    """The tree cut to its first `max_tokens` nodes no deeper than `max_depth`, against the verified text
    `known`: (tokens accepted, nodes fed, decided). Undecided while the text so far matches a path that
    the cut tree continues."""
    depth: list[int] = []
    kept: list[int] = []
    for index, parent in enumerate(parents[:max_tokens]):
        depth.append(1 if parent < 0 else depth[parent] + 1)
        if depth[index] <= max_depth and (parent < 0 or parent in kept):
            kept.append(index)
    node, accepted = -1, 0
    while True:
        below = [i for i in kept if parents[i] == node]
        if not below:
            return accepted, len(kept), True  # a whole path accepted
        if accepted >= len(known):
            return accepted, len(kept), False
        step = next((i for i in below if draft[i] == known[accepted]), None)
        if step is None:
            return accepted, len(kept), True
        node, accepted = step, accepted + 1


@dataclass
class RoundCosts:
    """Modelled seconds of a round that verifies k drafted tokens: f(k + 1) + the drafter's overhead.

    Overheads (round wall − f(k + 1): RPCs and drafting) are running averages per drafter, so a draft
    model's compute is not charged to prompt lookup; a drafter never pulled yet gets the average of
    the model-free drafters pulled so far. While the round shares its forward (`load`), a round's
    forward is its share of that forward, as `batch_cost` charges pulled rounds. Alone, f follows the
    machine's speed now (`model.alone_speed`): else a slow-down would land in each drafter's overhead at
    the γ it was pulled at, and a long arm of a drafter pulled short would look cheaper than it is."""

    forward_seconds: list[float]  # f(k) for k = 1..len
    target_only_overhead: float
    drafted_overhead: float  # model-free drafters, pooled: the fallback for one never pulled
    weight: float = 0.1
    by_drafter: dict[str, float] = field(default_factory=dict)
    load: Load | None = None  # the current round's forward, when other rows shared it
    model: ForwardModel | None = None  # the controller's, for the speed of a lone request's forwards

    def forward(self, tokens: int) -> float:
        if self.load is not None:
            return self.load.forward(tokens)
        speed = self.model.alone_speed if self.model is not None else 1.0
        return speed * self.forward_seconds[min(tokens, len(self.forward_seconds)) - 1]

    def seconds(self, drafted: int, drafter: str | None) -> float:
        """drafter None: a target-only round."""
        if drafter is None:
            return self.forward(1) + self.target_only_overhead
        return self.forward(drafted + 1) + self.by_drafter.get(drafter, self.drafted_overhead)

    def observe(self, drafted: int, wall: float, drafter: str | None, model_free: bool = True) -> None:
        """Follow the measured overheads, so modelled arms stay comparable with pulled ones."""
        overhead = max(0.0, wall - self.forward(drafted + 1))
        if drafter is None:
            self.target_only_overhead += self.weight * (overhead - self.target_only_overhead)
            return
        previous = self.by_drafter.get(drafter, self.drafted_overhead)
        self.by_drafter[drafter] = previous + self.weight * (overhead - previous)
        if model_free:
            self.drafted_overhead += self.weight * (overhead - self.drafted_overhead)


class CounterfactualScorer:
    """Pending drafts, resolved against the verified context as it grows.

    `model_free` names, per draft service, the drafters cheap enough to be asked for a draft every
    round; the scorer decides which of them each proposal also asks for, and how many tokens."""

    def __init__(self, arms: list[Arm], costs: RoundCosts, model_free: dict[str, set[str]] | None = None) -> None:
        self.arms = arms
        self.costs = costs
        self.pending: list[_Pending] = []
        self.target_only = [i for i, arm in enumerate(arms) if arm.gamma == 0]
        self.score_drafters: dict[str, list[str]] = {}  # service → its model-free drafters among the arms
        scored = []
        for arm in arms:
            if arm.gamma > 0 and arm.drafter in (model_free or {}).get(arm.service, ()):
                scored.append(arm)
                names = self.score_drafters.setdefault(arm.service, [])
                if arm.drafter not in names:
                    names.append(arm.drafter)
        self.score_num_tokens = max((arm.gamma for arm in arms), default=0)
        self.score_tree_tokens = max((arm.tree_tokens for arm in scored), default=0)
        self._largest_tree = {
            (a.service, a.drafter): a.tree_tokens for a in sorted(scored, key=lambda a: a.tree_tokens)
        }

    def alternatives_for(self, arm: Arm) -> list[str]:
        """The drafters to score beside `arm`'s own draft: the service's other model-free ones, and its own
        when it has a larger tree arm than the one pulled."""
        larger_tree = self._largest_tree.get((arm.service, arm.drafter), 0) > arm.tree_tokens
        return [name for name in self.score_drafters.get(arm.service, []) if name != arm.drafter or larger_tree]

    def arms_of(self, service: str, drafter: str, trees: bool = True) -> list[int]:
        """The drafter's arms (only its chain arms with trees False: a chain cannot score a tree)."""
        return [
            i for i, a in enumerate(self.arms)
            if a.service == service and a.drafter == drafter and a.gamma > 0 and (trees or not a.tree_tokens)
        ]  # fmt: skip

    def after_round(
        self,
        pulled: int | None,
        arm: Arm,
        gamma: int,
        proposal: Proposal,
        position: int,
        wall: float,
        context: list[int],
        load: Load | None = None,
        side_drafts: dict[str, Proposal] | None = None,
    ) -> list[Sample]:
        """Learn from a finished round (arm index `pulled`, None for the fallback; γ as played, its
        draft made at context length `position`; `context` now verified past it) and return the samples
        the verified text decides. `side_drafts`: per host, drafts made for scoring alone (as
        `alternatives`) by hosts the round did not ask."""
        self.costs.load = load  # the round's forward, when other rows shared it: model every arm in it
        drafted = len(proposal.token_ids)
        drafter = f"{arm.service}/{arm.drafter}" if gamma > 0 else None
        self.costs.observe(drafted, wall, drafter, arm.drafter in self.score_drafters.get(arm.service, []))
        samples = []
        if gamma > 0:
            # The pulled draft also decides the drafter's arms it contains: chains of smaller γ (a draft's
            # prefix is the shorter draft) and, from a tree, smaller trees.
            own = [
                i for i in self.arms_of(arm.service, arm.drafter, trees=proposal.parents is not None)
                if i != pulled and self.arms[i].gamma <= gamma and self.arms[i].tree_tokens <= arm.tree_tokens
            ]  # fmt: skip
            self.add(position, arm.service, arm.drafter, proposal.token_ids, own, proposal.parents)
            for name, draft in proposal.alternatives.items():
                parents = proposal.alternative_parents.get(name)
                arms = None
                if name == arm.drafter:  # its larger trees only: the pulled draft scored the rest
                    arms = [i for i in self.arms_of(arm.service, name) if self.arms[i].tree_tokens > arm.tree_tokens]
                self.add(position, arm.service, name, draft, arms, parents)
            samples += self.target_only_samples(pulled)
        for service, side in (side_drafts or {}).items():
            for name, draft in side.alternatives.items():
                self.add(position, service, name, draft, None, side.alternative_parents.get(name))
        return samples + self.resolve(context)

    def drop_drafter(self, service: str, drafter: str) -> None:
        """Stop scoring a drafter that failed and left the request."""
        self.forget(set(self.arms_of(service, drafter)))
        names = self.score_drafters.get(service, [])
        if drafter in names:
            names.remove(drafter)

    def add(
        self,
        position: int,
        service: str,
        drafter: str,
        draft: list[int],
        arms: list[int] | None = None,
        parents: list[int] | None = None,
    ) -> None:
        """Score `draft` (made at context length `position`; a tree with `parents`) for the drafter's arms,
        or only `arms`; a chain never for tree arms."""
        arms = self.arms_of(service, drafter) if arms is None else arms
        if parents is None:
            arms = [i for i in arms if not self.arms[i].tree_tokens]
        if arms:
            self.pending.append(_Pending(position, f"{service}/{drafter}", list(draft), arms, parents))

    def forget(self, arms: set[int]) -> None:
        """Stop scoring these arms."""
        for pending in self.pending:
            pending.arms = [i for i in pending.arms if i not in arms]
        self.pending = [p for p in self.pending if p.arms]

    def target_only_samples(self, pulled: int | None) -> list[Sample]:
        """Target-only's sample when another arm was pulled."""
        return [Sample(i, 1.0, self.costs.seconds(0, None)) for i in self.target_only if i != pulled]

    def resolve(self, context: list[int]) -> list[Sample]:
        """A sample for every arm whose draft the verified text now decides."""
        samples = []
        still = []
        for pending in self.pending:
            known = context[pending.position :]
            waiting = []
            for index in pending.arms:
                arm = self.arms[index]
                if arm.tree_tokens and pending.parents is not None:
                    accepted, drafted, decided = tree_outcome(
                        pending.draft, pending.parents, known, arm.tree_tokens, arm.gamma
                    )
                else:
                    matched = common_prefix_length(pending.chain, known)
                    drafted = min(len(pending.chain), arm.gamma)
                    decided = matched >= drafted or matched < len(known)  # all accepted, or a mismatch seen
                    accepted = min(matched, drafted)
                if decided:
                    samples.append(Sample(index, accepted + 1.0, self.costs.seconds(drafted, pending.drafter)))
                else:
                    waiting.append(index)
            if waiting:
                pending.arms = waiting
                still.append(pending)
        self.pending = still
        return samples
