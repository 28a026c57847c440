"""EXP3Spec (Hou et al., ICML 2025) for adversarial rewards.

Loss z = 1 − reward ∈ [0, 1]; η_t = sqrt(ln K / (t K)); p_t(i) ∝ exp(−η_t Σ_s ẑ_s(i)); the arm is drawn
from p_t; ẑ = z / p_t(chosen) for the chosen arm, 0 for the others. No warm-up, no uniform mixing.
"""

from __future__ import annotations

import math

import numpy as np


class EXP3Spec:
    name = "exp3spec"

    def __init__(self, num_arms: int, rng: np.random.Generator) -> None:
        if num_arms < 1:
            raise ValueError("EXP3Spec needs at least one arm")
        self.num_arms = num_arms
        self.rng = rng
        self.loss_estimates = np.zeros(num_arms)
        self.active = np.ones(num_arms, dtype=bool)
        self.rounds = 0
        self.last_probs: np.ndarray | None = None

    def probabilities(self, round_index: int) -> np.ndarray:
        k = int(self.active.sum())
        eta = math.sqrt(math.log(k) / (round_index * k)) if k > 1 else 0.0
        scores = np.where(self.active, -eta * self.loss_estimates, -np.inf)
        weights = np.exp(scores - scores[self.active].max())  # shift for stability; same ratios
        return weights / weights.sum()

    def select(self) -> int | None:
        if not self.active.any():
            return None
        self.last_probs = self.probabilities(self.rounds + 1)
        return int(self.rng.choice(self.num_arms, p=self.last_probs))

    def update(self, arm: int, reward: float) -> None:
        if self.last_probs is None:
            raise RuntimeError("update before select")
        loss = 1.0 - reward
        self.loss_estimates[arm] += loss / self.last_probs[arm]
        self.rounds += 1

    def prior(self, arm: int, mean: float, weight: float) -> None:
        pass

    def means(self) -> dict[int, float]:
        return {}

    def observe(self, arm: int, reward: float) -> None:
        pass  # importance weighting needs the probability an arm was drawn with: an unpulled sample has none

    def disable(self, arm: int) -> None:
        self.active[arm] = False

    def is_active(self, arm: int) -> bool:
        return bool(self.active[arm])
