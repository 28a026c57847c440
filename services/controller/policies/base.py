"""The policy interface: choose an arm, learn from rewards, drop an arm that failed."""

from __future__ import annotations

from typing import Protocol


class Policy(Protocol):
    name: str

    def select(self) -> int | None:
        """The arm to pull this round; None when every arm is disabled (the caller falls back)."""

    def update(self, arm: int, reward: float) -> None:
        """The pulled arm's normalised reward in [0, 1]; ends the round."""

    def observe(self, arm: int, reward: float) -> None:
        """A reward sample for an arm not pulled (scored counterfactually): a sample, not a round.
        Policies that cannot use one ignore it."""

    def prior(self, arm: int, mean: float, weight: float) -> None:
        """Start `arm` as if it had been pulled `weight` times with mean reward `mean` (a warm start).
        Policies that cannot use one ignore it."""

    def means(self) -> dict[int, float]:
        """arm → the mean reward observed in this request (priors excluded), for arms observed at all."""

    def disable(self, arm: int) -> None:
        """Never choose this arm again (its drafter went away)."""

    def is_active(self, arm: int) -> bool: ...
