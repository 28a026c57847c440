"""The round reward and its normalisation to [0, 1] for the policies.

Raw reward: verified tokens of the round / wall seconds of the round, RPCs included.
Normalised: ρ = min(1, raw × s / (L + 1)), with s the wall time of a target-only round (one target
step + RPC) and L the largest γ among the request's arms. A round yields at most L + 1 tokens and
costs at least about one target step, so raw × s / (L + 1) is the fraction of that ceiling reached;
the clip guards against timing noise. s is fixed for the request (a snapshot of the controller's
running estimate), so the reward scale does not drift under the bandit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardScale:
    step_seconds: float
    max_gamma: int

    def normalise(self, tokens_per_second: float) -> float:
        return min(1.0, max(0.0, tokens_per_second * self.step_seconds / (self.max_gamma + 1)))


class StepTimeEstimate:
    """Exponential moving average of target-only round wall times, shared across requests."""

    def __init__(self, initial_seconds: float, weight: float = 0.1) -> None:
        self.seconds = initial_seconds
        self.weight = weight

    def observe(self, seconds: float) -> None:
        self.seconds += self.weight * (seconds - self.seconds)
