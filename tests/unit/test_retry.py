"""Backoff and the draft services' circuit breaker: pure logic, no clock of their own."""

from __future__ import annotations

import random

from services.controller.retry import Backoff, CircuitBreaker


def test_backoff_grows_to_its_cap():
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.attempts == 6


def test_backoff_jitter_stays_within_its_fraction():
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.2, rng=random.Random(0))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert max(delays) - min(delays) > 0.1  # it does spread


def test_breaker_opens_after_threshold_failures_in_a_row():
    breaker = CircuitBreaker(threshold=3, cooldown=5.0)
    assert not breaker.record_failure(0.0)
    breaker.record_success()  # a success in between starts the count again
    assert not breaker.record_failure(1.0)
    assert not breaker.record_failure(2.0)
    assert breaker.record_failure(3.0)
    assert breaker.open
    assert not breaker.record_failure(4.0)  # already open: opens once


def test_breaker_closes_only_after_cooldown_and_recovery():
    breaker = CircuitBreaker(threshold=1, cooldown=5.0)
    breaker.record_failure(10.0)
    assert not breaker.may_probe(14.9)
    assert breaker.may_probe(15.0)
    breaker.recovered()
    assert not breaker.open


def test_breaker_cooldown_doubles_while_the_service_keeps_failing():
    breaker = CircuitBreaker(threshold=1, cooldown=5.0, max_cooldown=12.0)
    cooldowns = []
    for _ in range(4):
        breaker.record_failure(0.0)
        cooldowns.append(breaker.current_cooldown())
        breaker.recovered()  # healthy again, but fails again before any success
    assert cooldowns == [5.0, 10.0, 12.0, 12.0]
    breaker.record_success()
    breaker.record_failure(0.0)
    assert breaker.current_cooldown() == 5.0
