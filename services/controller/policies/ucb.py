"""UCBSpec (Hou et al., ICML 2025): pull each arm once, then the largest mean + confidence radius.

cr_i(t) = (R/2) · sqrt( (1 + n_i) / n_i² · (1 + 2 ln( K t² sqrt(1 + n_i) / δ )) ), δ = 1/2,
with n_i this arm's own pull count (not the total) and t the index of the round being chosen.

With `measured_spread` (policy ucbspec-cf, which gets many counterfactual samples per round) the
radius scales with the rewards' measured spread instead of the worst case: R/2 is replaced by the
pooled within-arm standard deviation of the rewards of the request's pulled rounds (measured, not
the modelled counterfactual samples), clipped to
[MIN_SPREAD, R/2], and R/2 itself until MIN_SAMPLES_FOR_SPREAD samples beyond one per arm exist.
"""

from __future__ import annotations

import math

MIN_SPREAD = 0.05
MIN_SAMPLES_FOR_SPREAD = 8


def confidence_radius(
    pulls: float, round_index: int, num_arms: int, reward_range: float = 1.0, delta: float = 0.5
) -> float:
    n = pulls
    log_term = math.log(num_arms * round_index**2 * math.sqrt(1 + n) / delta)
    return (reward_range / 2) * math.sqrt((1 + n) / n**2 * (1 + 2 * log_term))


class UCBSpec:
    name = "ucbspec"

    def __init__(
        self, num_arms: int, reward_range: float = 1.0, delta: float = 0.5, measured_spread: bool = False
    ) -> None:
        if num_arms < 1:
            raise ValueError("UCBSpec needs at least one arm")
        self.num_arms = num_arms
        self.reward_range = reward_range
        self.delta = delta
        self.pulls: list[float] = [0] * num_arms  # priors add fractional pseudo-pulls
        self.reward_sums = [0.0] * num_arms
        self.prior_pulls = [0.0] * num_arms
        self.prior_sums = [0.0] * num_arms
        self.measured = [[0, 0.0, 0.0] for _ in range(num_arms)]  # pulled rounds: count, sum, sum of squares
        self.measured_spread = measured_spread
        self.active = [True] * num_arms
        self.rounds = 0

    def spread(self) -> float:
        """The reward scale of the radius (R/2 of the paper, or the measured one)."""
        worst = self.reward_range / 2
        if not self.measured_spread:
            return worst
        pulled = [m for m in self.measured if m[0] > 0]
        freedom = sum(m[0] for m in pulled) - len(pulled)
        if freedom < MIN_SAMPLES_FOR_SPREAD:
            return worst
        within = sum(squares - total**2 / count for count, total, squares in pulled)
        return min(worst, max(MIN_SPREAD, math.sqrt(max(0.0, within) / freedom)))

    def index(self, arm: int, round_index: int, spread: float | None = None) -> float:
        n = self.pulls[arm]
        mean = self.reward_sums[arm] / n
        scale = self.spread() if spread is None else spread
        # confidence_radius is linear in R: pass 2 * spread as the range
        return mean + confidence_radius(n, round_index, self.num_arms, 2 * scale, self.delta)

    def select(self) -> int | None:
        candidates = [i for i in range(self.num_arms) if self.active[i]]
        if not candidates:
            return None
        for arm in candidates:  # warm-up, in arm order
            if self.pulls[arm] == 0:
                return arm
        t = self.rounds + 1
        spread = self.spread()
        return max(candidates, key=lambda arm: self.index(arm, t, spread))

    def update(self, arm: int, reward: float) -> None:
        self.observe(arm, reward)
        measured = self.measured[arm]
        measured[0] += 1
        measured[1] += reward
        measured[2] += reward * reward
        self.rounds += 1

    def observe(self, arm: int, reward: float) -> None:
        """A reward for an arm not pulled this round (scored counterfactually): a sample, not a round."""
        self.pulls[arm] += 1
        self.reward_sums[arm] += reward

    def prior(self, arm: int, mean: float, weight: float) -> None:
        """Pseudo-pulls: they count in the arm's mean and its radius, not in the measured spread or t."""
        self.pulls[arm] += weight
        self.reward_sums[arm] += mean * weight
        self.prior_pulls[arm] += weight
        self.prior_sums[arm] += mean * weight

    def means(self) -> dict[int, float]:
        out = {}
        for arm in range(self.num_arms):
            pulls = self.pulls[arm] - self.prior_pulls[arm]
            if pulls > 0:
                out[arm] = (self.reward_sums[arm] - self.prior_sums[arm]) / pulls
        return out

    def disable(self, arm: int) -> None:
        self.active[arm] = False

    def is_active(self, arm: int) -> bool:
        return self.active[arm]
