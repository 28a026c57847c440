"""UCBSpec (Hou et al., ICML 2025): pull each arm once, then the largest mean + confidence radius.

cr_i(t) = (R/2) · sqrt( (1 + n_i) / n_i² · (1 + 2 ln( K t² sqrt(1 + n_i) / δ )) ), δ = 1/2,
with n_i this arm's own pull count (not the total) and t the index of the round being chosen.
"""

from __future__ import annotations

import math


def confidence_radius(pulls: int, round_index: int, num_arms: int, reward_range: float = 1.0, delta: float = 0.5) -> float:
    n = pulls
    log_term = math.log(num_arms * round_index**2 * math.sqrt(1 + n) / delta)
    return (reward_range / 2) * math.sqrt((1 + n) / n**2 * (1 + 2 * log_term))


class UCBSpec:
    name = "ucbspec"

    def __init__(self, num_arms: int, reward_range: float = 1.0, delta: float = 0.5) -> None:
        if num_arms < 1:
            raise ValueError("UCBSpec needs at least one arm")
        self.num_arms = num_arms
        self.reward_range = reward_range
        self.delta = delta
        self.pulls = [0] * num_arms
        self.reward_sums = [0.0] * num_arms
        self.active = [True] * num_arms
        self.rounds = 0

    def index(self, arm: int, round_index: int) -> float:
        n = self.pulls[arm]
        mean = self.reward_sums[arm] / n
        return mean + confidence_radius(n, round_index, self.num_arms, self.reward_range, self.delta)

    def select(self) -> int:
        candidates = [i for i in range(self.num_arms) if self.active[i]]
        if not candidates:
            raise RuntimeError("every arm is disabled")
        for arm in candidates:  # warm-up, in arm order
            if self.pulls[arm] == 0:
                return arm
        t = self.rounds + 1
        return max(candidates, key=lambda arm: self.index(arm, t))

    def update(self, arm: int, reward: float) -> None:
        self.observe(arm, reward)
        self.rounds += 1

    def observe(self, arm: int, reward: float) -> None:
        """A reward for an arm not pulled this round (scored counterfactually): a sample, not a round."""
        self.pulls[arm] += 1
        self.reward_sums[arm] += reward

    def disable(self, arm: int) -> None:
        self.active[arm] = False
