"""Always the same arm: the baseline every adaptive policy is measured against."""

from __future__ import annotations


class FixedArm:
    name = "fixed"

    def __init__(self, num_arms: int, arm: int = 0) -> None:
        if not 0 <= arm < num_arms:
            raise ValueError(f"arm {arm} out of range for {num_arms} arms")
        self.arm = arm
        self.disabled = False

    def select(self) -> int | None:
        return None if self.disabled else self.arm

    def update(self, arm: int, reward: float) -> None:
        pass

    def prior(self, arm: int, mean: float, weight: float) -> None:
        pass

    def means(self) -> dict[int, float]:
        return {}

    def observe(self, arm: int, reward: float) -> None:
        pass

    def disable(self, arm: int) -> None:
        if arm == self.arm:
            self.disabled = True

    def is_active(self, arm: int) -> bool:
        return arm == self.arm and not self.disabled
