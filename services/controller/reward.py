"""The round reward and its normalisation to [0, 1] for the policies.

Raw reward: verified tokens of the round / wall seconds of the round, RPCs included.
Normalised: ρ = min(1, raw / ceiling), where the ceiling is the best raw reward any round of the
request's arms could reach: every draft accepted, at the target's cost of verifying that many tokens,

    ceiling = max over k = 1..L+1 of  k / (f(k) + o)

with f(k) the target's measured k-token forward (Info.forward_seconds), o the per-round overhead
(RPCs; a running estimate from target-only rounds) and L the largest γ among the request's arms. A
round feeding k tokens yields at most k tokens and costs about f(k) + o, so ρ is the fraction of the
best achievable throughput; the clip guards against timing noise. The scale is fixed for the request
(a snapshot), so it does not drift under the bandit. Without forward timings the ceiling falls back to
(L + 1) / (one target-only round).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardScale:
    ceiling_tokens_per_second: float

    @classmethod
    def for_arms(
        cls, max_gamma: int, forward_seconds: list[float], round_overhead_seconds: float, step_seconds: float
    ) -> RewardScale:
        if len(forward_seconds) >= max_gamma + 1:
            ceiling = max(k / (forward_seconds[k - 1] + round_overhead_seconds) for k in range(1, max_gamma + 2))
        else:
            ceiling = (max_gamma + 1) / step_seconds
        return cls(ceiling)

    def normalise(self, tokens_per_second: float) -> float:
        return min(1.0, max(0.0, tokens_per_second / self.ceiling_tokens_per_second))


class StepTimeEstimate:
    """Exponential moving average of target-only round wall times, shared across requests."""

    def __init__(self, initial_seconds: float, weight: float = 0.1) -> None:
        self.seconds = initial_seconds
        self.weight = weight

    def observe(self, seconds: float) -> None:
        self.seconds += self.weight * (seconds - self.seconds)
