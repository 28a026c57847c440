"""Pure retry logic for the controller's calls: exponential backoff, and a circuit breaker per draft service.

No gRPC and no clock of its own: callers pass `now` (time.monotonic() in the services, a number in tests).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays between attempts: initial, ×multiplier each time, capped at maximum, with ±jitter."""

    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2  # a fraction of the delay, so retries of many requests do not arrive in step
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.multiplier**self.attempts)
        self.attempts += 1
        return max(0.0, base * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)))


@dataclass
class CircuitBreaker:
    """Withdraws a failing draft service's arms: `threshold` failures in a row open the breaker; it stays
    open at least `cooldown` seconds (doubling, up to `max_cooldown`, each time it opens again without a
    success in between) and closes when the service's health is seen to recover after that."""

    threshold: int = 3
    cooldown: float = 5.0
    max_cooldown: float = 60.0
    failures: int = 0
    opened_at: float | None = None
    trips: int = 0  # consecutive openings without a success in between

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def record_failure(self, now: float) -> bool:
        """Count a failure; True when this one opens the breaker."""
        self.failures += 1
        if self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = now
            self.trips += 1
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self.trips = 0

    def current_cooldown(self) -> float:
        return min(self.max_cooldown, self.cooldown * 2.0 ** max(0, self.trips - 1))

    def may_probe(self, now: float) -> bool:
        """Whether an open breaker has waited its cooldown, so that a healthy probe may close it."""
        return self.opened_at is not None and now - self.opened_at >= self.current_cooldown()

    def recovered(self) -> None:
        """The service answered healthy after the cooldown: its arms return. Failures start from zero, but
        the next opening before any success waits longer."""
        self.opened_at = None
        self.failures = 0
