"""What a round costs when it shares the target's forward with other requests' rounds.

A batched forward's time depends on every row in it, so a round's wall time says little about its own
draft: a long draft beside seven other rows adds a few percent to a forward that mostly verifies others'
tokens, yet slows all of them. Each round is therefore charged its own RPC time plus the share of the
forward its tokens took, F · own / total; a forward's charges add up to the forward. A lone round (one
row) is charged its wall time, as without batching.

A charged round is normalised against the best a round of the request's arms could do beside the same
load: with B tokens of other rows and f(n) the measured cost of a forward of n tokens,

    ceiling(B) = max over k = 1..L+1 of  k / (o + f(B + k) · k / (B + k))

which at B = 0 is the lone-round ceiling of `reward.RewardScale`. f comes from the target's start-up
measurements (one row of n ≤ 16 tokens; batched forwards of 24–128 tokens) and, online, from the forwards
the target reports with each verify.

That share still misses what a draft costs the others: a round also waits for the forwards of the rows
before it, and that wait, though charged to it as a fixed cost, grows with everyone's drafts. Measured at
8 clients, the share model rewarded drafting above target-only while target-only gave the most
throughput (benchmarks/RESULTS.md §15). The *cycle* model (`--load-cost cycle`, the default) charges a
round, instead, the target time of one cycle in which every running request played the same arm, in
forwards of as many rows as this round's:

    cycle(k) = (R / r) · f(r · k)      R requests running, r rows in the round's forward

plus the round's own time outside the target (drafting, RPCs). The reward then ranks arms as their
throughput at that load does, and at R = 1 it is the lone round's f(k).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

LOAD_COSTS = ("cycle", "share")  # how a round beside other requests is charged (see above)


@dataclass(frozen=True)
class Load:
    """The forward a round ran in, seen from that round: the other rows' tokens and the forward's time;
    with `curve`, the cycle model of `running` requests in forwards of `rows` rows."""

    others: int
    forward_seconds: float
    running: int = 1
    rows: int = 1
    curve: ForwardCurve | None = None

    @classmethod
    def of(cls, own_tokens: int, batch_rows: int, batch_tokens: int, forward_seconds: float) -> Load | None:
        """The share model; None when the round had its forward to itself."""
        if batch_rows <= 1 or batch_tokens <= own_tokens:
            return None
        return cls(batch_tokens - own_tokens, forward_seconds)

    @classmethod
    def cycle(
        cls, own_tokens: int, batch_rows: int, batch_tokens: int, forward_seconds: float, running: int,
        curve: ForwardCurve,
    ) -> Load | None:  # fmt: skip
        """The cycle model; None when no other request was running (a lone round)."""
        if running <= 1:
            return None
        rows = max(1, min(batch_rows, running))
        return cls(max(0, batch_tokens - own_tokens), forward_seconds, running, rows, curve)

    def forward(self, tokens: int) -> float:
        """Target seconds charged to a round feeding `tokens` in this forward."""
        if self.curve is not None:
            return self.running / self.rows * self.curve.seconds(self.rows * tokens)
        return self.forward_seconds * tokens / (self.others + tokens)

    def modelled_forward(self, curve: ForwardCurve, tokens: int) -> float:
        """As `forward`, from the curve alone (for the ceiling)."""
        if self.curve is not None:
            return self.forward(tokens)
        return curve.seconds(self.others + tokens) * tokens / (self.others + tokens)


class ForwardCurve:
    """f(n), seconds of a forward carrying n tokens; shared by every request of a controller."""

    def __init__(self, start_up: list[float], batches: dict[int, float] | None = None, weight: float = 0.1) -> None:
        self.weight = weight
        self.points: dict[int, float] = {n: seconds for n, seconds in enumerate(start_up, 1) if seconds > 0}
        self.points.update({n: seconds for n, seconds in (batches or {}).items() if n > 0 and seconds > 0})
        self._sizes = sorted(self.points)  # kept sorted: seconds() runs for every round

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens < 1 or seconds <= 0:
            return
        known = self.points.get(tokens)
        if known is None:
            bisect.insort(self._sizes, tokens)
            self.points[tokens] = seconds
        else:
            self.points[tokens] = known + self.weight * (seconds - known)

    def seconds(self, tokens: int) -> float:
        """Interpolated between measured sizes; beyond the largest, growing in proportion to the tokens."""
        if not self.points:
            return 0.0
        if tokens in self.points:
            return self.points[tokens]
        sizes = self._sizes
        at = bisect.bisect_left(sizes, tokens)
        if at == 0:
            return self.points[sizes[0]]
        if at == len(sizes):
            largest = sizes[-1]
            return self.points[largest] * tokens / largest
        low, high = sizes[at - 1], sizes[at]
        share = (tokens - low) / (high - low)
        return self.points[low] + share * (self.points[high] - self.points[low])


def charged_seconds(
    wall: float, own_tokens: int, load: Load | None, target_seconds: float = 0.0, target_overhead: float = 0.0
) -> float:
    """What a round is charged: alone, its wall time. Under the share model, its wall time less the part of
    its forward that verified other rows; under the cycle model, its time outside the verify call
    (`wall - target_seconds`) plus the target's RPC overhead plus its modelled cycle."""
    if load is None:
        return wall
    if load.curve is not None:
        return max(1e-6, wall - target_seconds + target_overhead + load.forward(own_tokens))
    return max(1e-6, wall - load.forward_seconds + load.forward(own_tokens))


def load_ceiling(curve: ForwardCurve, load: Load, max_gamma: int, overhead: float) -> float:
    """Best tokens per charged second for a round of up to max_gamma + 1 tokens at this load."""
    return max(k / (overhead + load.modelled_forward(curve, k)) for k in range(1, max_gamma + 2))
