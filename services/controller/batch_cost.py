"""What a round costs when it shares the target's forward with other requests' rounds.

A batched forward's time depends on every row in it, so a round's wall time says little about its own
draft: a long draft beside seven other rows adds a few percent to a forward that mostly verifies others'
tokens, yet slows all of them. Each round is therefore charged its own RPC time plus the share of the
forward its tokens took, F · own / total; a forward's charges add up to the forward. A lone round (one
row) is charged its wall time, as without batching.

A charged round is normalised against the best a round of the request's arms could do beside the same
load: with B tokens of other rows and f(n, r) the measured cost of a forward of n tokens in r rows,

    ceiling(B) = max over k = 1..L+1 of  k / (o + f(B + k, r) · k / (B + k))

which at B = 0 is the lone-round ceiling of `reward.RewardScale`. f is `ForwardModel`: the target's
start-up measurements (one row of n ≤ 16 tokens; batched forwards of short and 8-token rows), slowed as
the forwards the target reports with each verify say: its rows and its drafted tokens each by their own
factor.

That share still misses what a draft costs the others: a round also waits for the forwards of the rows
before it, and that wait, though charged to it as a fixed cost, grows with everyone's drafts. Measured at
8 clients, the share model rewarded drafting above target-only while target-only gave the most
throughput (benchmarks/RESULTS.md §15). The *cycle* model (`--load-cost cycle`, the default) charges a
round, instead, the target time of one cycle in which every running request played the same arm, in
forwards of as many rows as this round's:

    cycle(k) = (R / r) · f(r rows, r · k tokens)      R requests running, r rows in the round's forward

plus the round's own time outside the target (drafting, RPCs). The reward then ranks arms as their
throughput at that load does, and at R = 1 it is the lone round's f(k).

That cycle holds what the round's own draft costs, but not how: a forward's products run at the next
fast size of its total tokens (the target pads to it), so on the AMD EPYC one drafting row beside seven
one-token rows costs what eight rows of two tokens do (a step, not a slope: benchmarks/RESULTS.md §40).
Copying the round's own width to every row spreads that step over rows that in fact fed one token. So a
drafting round is charged, in the forward it ran in (r rows, n tokens), the one-token forward plus r times
its share of what the forward's extra tokens (drafts, prefill chunks) added, the share in proportion to
its own draft tokens:

    cycle(k) = (R / r) · ( f(r, r) + r · (f(r, n) − f(r, r)) · (k − 1) / (n − r) )

A lone drafter carries the whole step, as every row waits for it; rows that all draft k tokens split it,
and the charge is the cycle model's f(r, r·k) again, as it is wherever f is linear. A scored arm that did
not play is charged in the same forward with its own draft in place of the round's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from banditspec.verify_lengths import padded_lengths

LOAD_COSTS = ("cycle", "share")  # how a round beside other requests is charged (see above)


@dataclass(frozen=True)
class Load:
    """The forward a round ran in, seen from that round: the other rows' tokens and the forward's time;
    with `model`, the cycle model of `running` requests in forwards of `rows` rows."""

    others: int
    forward_seconds: float
    running: int = 1
    rows: int = 1
    model: ForwardModel | None = None

    @classmethod
    def of(cls, own_tokens: int, batch_rows: int, batch_tokens: int, forward_seconds: float) -> Load | None:
        """The share model; None when the round had its forward to itself."""
        if batch_rows <= 1 or batch_tokens <= own_tokens:
            return None
        return cls(batch_tokens - own_tokens, forward_seconds, rows=batch_rows)

    @classmethod
    def cycle(
        cls, own_tokens: int, batch_rows: int, batch_tokens: int, forward_seconds: float, running: int,
        model: ForwardModel,
    ) -> Load | None:  # fmt: skip
        """The cycle model; None when no other request was running (a lone round)."""
        if running <= 1:
            return None
        rows = max(1, min(batch_rows, running))
        return cls(max(0, batch_tokens - own_tokens), forward_seconds, running, rows, model)

    def forward(self, tokens: int) -> float:
        """Target seconds charged to a round feeding `tokens` in this forward."""
        if self.model is not None:
            return self.running / self.rows * self._forward_with_share(self.model, tokens)
        return self.forward_seconds * tokens / (self.others + tokens)

    def _forward_with_share(self, model: ForwardModel, tokens: int) -> float:
        """The one-token forward of this forward's rows, plus every row waiting for this round's share of
        what the extra tokens added (module doc)."""
        rows = self.rows
        one_token = model.seconds(rows, rows)
        drafted = tokens - 1
        if drafted <= 0:
            return one_token
        total = self.others + tokens
        added = max(0.0, model.seconds(total, rows) - one_token)
        return one_token + rows * added * drafted / max(drafted, total - rows)

    def modelled_forward(self, model: ForwardModel, tokens: int) -> float:
        """The least a round feeding `tokens` can be charged at this load (for the ceiling): under the cycle
        model, a draft whose every token costs the plane's slope, as when the step is already paid."""
        if self.model is not None:
            rows = self.rows
            linear = model.token_seconds() * (tokens - 1)
            return self.running / self.rows * (model.seconds(rows, rows) + rows * linear)
        return model.seconds(self.others + tokens, self.rows) * tokens / (self.others + tokens)


class ForwardModel:
    """f(n, r): seconds of a forward carrying n tokens in r rows; one per controller, shared by its requests.

    It answers for rounds beside other requests (a lone round is charged its wall time). One row:
    α · the curve the target measured at start-up (its kinks are the kernels'). Several rows:
    α · (a + b·(r − 1) + c·r) + β · c · (n − r), the plane a + b·(r − 1) + c·n fitted once to the batched
    forwards measured at start-up (relative least squares, so small forwards count as much as large ones),
    split into its rows' part (a forward of one token per row) and its drafted tokens' part.

    α and β are how much slower than at start-up those two parts run now, fitted to the batched forwards
    the target reports with each verify (least squares of the relative error, each older forward weighing a
    little less; both 1 before the first). They differ because under load a drafted token costs more than
    the start-up slope says (a drafting row beside one-token rows widens every slot's queries or is attended
    alone, and every row attends over a long context): β came to 1.4-2.2 at 8 clients, α to 0.9-1.4
    (benchmarks/RESULTS.md §52). β prices what a draft adds to a forward; the rows' part, what a
    target-only round pays, follows α. Where the forwards seen do not tell a drafted token's cost from a
    row's (no row drafts), a tie between α and β holds them together, and the model scales as one level.

    The shape stays a plane: updating each size from the forwards of that size instead lets the sizes the
    load visits (short rows) grow with its contexts and the machine's slow-down while those it does not
    visit (a long draft in every row) keep their start-up times, so under load a long draft looks ever
    cheaper (benchmarks/RESULTS.md §33)."""

    MEMORY = 50  # forwards: each older one weighs 1 − 1/MEMORY as much
    TIE = 0.1  # the cost of α and β apart, in reported forwards' weight per unit difference squared

    def __init__(
        self, one_row: list[float], batches: dict[tuple[int, int], float] | None = None, weight: float = 0.1
    ) -> None:
        self.one_row = [seconds for seconds in one_row if seconds > 0]
        self.weight = weight
        self.speed = 1.0  # α: of the rows' part (a + b·(r − 1) + c·r) and of one row's curve
        self.token_speed = 1.0  # β: of the drafted tokens' part (c·(n − r))
        # A lone request's forwards (one row, one session open) run on the threads the one-row curve was
        # measured on: their own ratio, for the rounds of a request with the target to itself.
        self.alone_speed = 1.0
        self._log_alone_speed = 0.0
        self._last: tuple[int, int, float] | None = None
        single = [(1, n, seconds) for n, seconds in enumerate(self.one_row, 1)]
        batched = [(rows, n, seconds) for (rows, n), seconds in (batches or {}).items() if n > 0 and seconds > 0]
        # The plane answers for several rows: fitted to batched forwards alone where they tell a row's cost
        # from a token's (rows of 8 tokens alone do not: an older target's), as one row's kinks would tilt it.
        points = batched if _separates_rows_from_tokens(batched) else single + batched
        self.plane = _fit_plane(points)
        self._floor = 0.5 * min((seconds for _, _, seconds in points), default=1e-3)  # no forward is nearly free
        # Several rows run their products at the size the one-row curve says is the cheapest at or above
        # their total (blocked kernels; the target pads to it): 9 tokens cost what 14-16 do on the AMD EPYC.
        self.run_at = np.array([0, *padded_lengths(self.one_row)], dtype=np.int64)
        # Least squares of α, β: Σ w·x·xᵀ and Σ w·x over forwards, x = (rows' part, drafted tokens' part) ÷ seconds.
        self._gram = np.zeros((2, 2))
        self._moments = np.zeros(2)

    def seconds(self, tokens: int, rows: int = 1) -> float:
        if rows <= 1:
            return self.speed * self._one_row(tokens)
        rows_part, drafted_part = self._parts(tokens, rows)
        return max(self.speed * self._floor, self.speed * rows_part + self.token_speed * drafted_part)

    def token_seconds(self) -> float:
        """What one more drafted token adds to a forward of several rows, past its size's step (the plane's
        slope)."""
        return self.token_speed * self.plane[2]

    def observe(self, tokens: int, seconds: float, rows: int = 1, prefill_rows: int = 0) -> bool:
        """A forward the target reported; whether it moved the slow-downs. Several rows report one forward:
        it counts once. One with a prompt's chunk in it says little of what a drafted token costs (a chunk's
        tokens attend mostly to each other, and many run cheaper per token than a few): it is left out."""
        if rows <= 1 or prefill_rows or tokens < 1 or seconds <= 0 or (rows, tokens, seconds) == self._last:
            return False
        self._last = (rows, tokens, seconds)
        self._gram *= 1 - 1 / self.MEMORY
        self._moments *= 1 - 1 / self.MEMORY
        x = np.array(self._parts(tokens, rows)) / seconds
        self._gram += np.outer(x, x)
        self._moments += x
        tie = self.TIE * np.array([[1.0, -1.0], [-1.0, 1.0]])
        settle = 1e-6 * np.eye(2)  # solvable before any forward, and pulled to 1 where nothing says otherwise
        fit = np.linalg.solve(self._gram + tie + settle, self._moments + settle @ np.ones(2))
        self.speed, self.token_speed = (float(np.clip(value, 0.2, 5.0)) for value in fit)
        return True

    def _parts(self, tokens: int, rows: int) -> tuple[float, float]:
        """The plane for a forward of `tokens` in `rows` rows, as its rows' part (the forward of one token per
        row) and its drafted tokens' part (what the tokens beyond one per row add)."""
        a, b, c = self.plane
        one_each = self._run_size(rows)
        return a + b * (rows - 1) + c * one_each, c * max(0, self._run_size(tokens) - one_each)

    def observe_alone(self, tokens: int, seconds: float) -> None:
        """A one-row forward of a lone request; prefills past the measured curve say nothing of it."""
        if not 1 <= tokens <= len(self.one_row) or seconds <= 0:
            return
        ratio = math.log(seconds / self.one_row[tokens - 1])
        self._log_alone_speed += self.weight * (ratio - self._log_alone_speed)
        self.alone_speed = math.exp(self._log_alone_speed)

    def _run_size(self, tokens: int) -> int:
        return int(self.run_at[tokens]) if 0 < tokens < len(self.run_at) else tokens

    def _plane(self, tokens: int, rows: int) -> float:
        a, b, c = self.plane
        return max(self._floor, a + b * (rows - 1) + c * tokens)

    def _one_row(self, tokens: int) -> float:
        curve = self.one_row
        if not curve:
            return self._plane(tokens, 1)
        if tokens <= len(curve):
            return curve[max(1, tokens) - 1]
        return curve[-1] * tokens / len(curve)  # beyond the measured: in proportion to the tokens


def _design(points: list[tuple[int, int, float]]) -> np.ndarray:
    """The plane's inputs per point: 1, rows − 1, tokens."""
    return np.array([[1.0, rows - 1.0, float(tokens)] for rows, tokens, _ in points])


def _separates_rows_from_tokens(points: list[tuple[int, int, float]]) -> bool:
    return len(points) >= 3 and bool(np.linalg.matrix_rank(_design(points)) == 3)


def _fit_plane(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
    """(a, b, c) of seconds ≈ a + b·(rows − 1) + c·tokens, least squares of the relative error, with b and c
    kept ≥ 0 (a negative one is timing noise: it is held at 0 and the others refitted)."""
    if not points:
        return (0.0, 0.0, 0.0)
    design = _design(points)
    seconds = np.array([s for _, _, s in points])
    scale = 1.0 / seconds  # relative error
    free = [0, 1, 2]
    while True:
        fit = np.linalg.lstsq(design[:, free] * scale[:, None], seconds * scale, rcond=None)[0]
        coefficients = dict(zip(free, (float(value) for value in fit), strict=True))
        negative = [i for i in free[1:] if coefficients[i] < 0]
        if not negative:
            return (coefficients[0], coefficients.get(1, 0.0), coefficients.get(2, 0.0))
        free.remove(min(negative, key=coefficients.__getitem__))


def charged_seconds(
    wall: float, own_tokens: int, load: Load | None, target_seconds: float = 0.0, target_overhead: float = 0.0
) -> float:
    """What a round is charged: alone, its wall time. Under the share model, its wall time less the part of
    its forward that verified other rows; under the cycle model, its time outside the verify call
    (`wall - target_seconds`) plus the target's RPC overhead plus its modelled cycle."""
    if load is None:
        return wall
    if load.model is not None:
        return max(1e-6, wall - target_seconds + target_overhead + load.forward(own_tokens))
    return max(1e-6, wall - load.forward_seconds + load.forward(own_tokens))


class LoadedCharges:
    """Per arm, the mean of what its rounds under load were charged, played or scored.

    A bandit averages per-round rewards, tokens ÷ charge, and a mean of ratios is not a ratio of means.
    Under the cycle model a drafting arm's charges are bimodal: its rounds that drafted nothing are charged
    the one-token forward, those that drafted carry their share of the step, several times more. The mean
    of tokens ÷ charge then overstates the arm's throughput (by 9-15 points of target-only's for a γ-2 arm
    that drafts in 15-35% of its rounds, RESULTS 40), so under load a round's tokens are divided by its
    arm's mean charge."""

    def __init__(self) -> None:
        self._sums: dict[int, tuple[float, int]] = {}

    def mean_with(self, arm: int, seconds: float) -> float:
        """Adds a round's charge and returns the arm's mean charge."""
        total, count = self._sums.get(arm, (0.0, 0))
        total, count = total + seconds, count + 1
        self._sums[arm] = (total, count)
        return total / count


def load_ceiling(model: ForwardModel, load: Load, max_gamma: int, overhead: float) -> float:
    """Best tokens per charged second for a round of up to max_gamma + 1 tokens at this load."""
    return max(k / (overhead + load.modelled_forward(model, k)) for k in range(1, max_gamma + 2))
