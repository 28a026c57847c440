"""Uniformly random arm choice: the no-learning baseline the bandits are compared against."""

from __future__ import annotations

import numpy as np


class UniformRandom:
    name = "uniform"

    def __init__(self, num_arms: int, rng: np.random.Generator) -> None:
        if num_arms < 1:
            raise ValueError("uniform choice needs at least one arm")
        self.rng = rng
        self.active = [True] * num_arms

    def select(self) -> int | None:
        candidates = [i for i, on in enumerate(self.active) if on]
        if not candidates:
            return None
        return candidates[int(self.rng.integers(len(candidates)))]

    def update(self, arm: int, reward: float) -> None:
        pass  # learns nothing, by design

    def prior(self, arm: int, mean: float, weight: float) -> None:
        pass

    def means(self) -> dict[int, float]:
        return {}

    def observe(self, arm: int, reward: float) -> None:
        pass

    def disable(self, arm: int) -> None:
        self.active[arm] = False

    def is_active(self, arm: int) -> bool:
        return self.active[arm]
