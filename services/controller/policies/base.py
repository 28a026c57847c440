"""The policy interface: choose an arm, learn from its reward, drop an arm that failed."""

from __future__ import annotations

from typing import Protocol


class Policy(Protocol):
    name: str

    def select(self) -> int: ...

    def update(self, arm: int, reward: float) -> None:
        """reward: the round's normalised reward in [0, 1]."""

    def disable(self, arm: int) -> None:
        """Never choose this arm again (its drafter went away)."""
