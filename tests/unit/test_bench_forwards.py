"""The load test's view of the target's forwards: totals read from a real Prometheus exposition, a
phase's forwards as the difference of two readings, and the controller's forward slow-downs."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from banditspec.bench.forwards import SLOWDOWN, ForwardTotals, parse_slowdown, parse_totals, phase_forwards


def exposition(forwards: list[tuple[float, int, int]], prompts: tuple[int, int] = (0, 0)) -> str:
    """A registry holding the target's three histograms and its prompt counters (names as
    services/target/metrics.py), after these (seconds, rows, tokens) forwards and (prompt, reused) tokens."""
    registry = CollectorRegistry()
    Counter("banditspec_target_prompt_tokens", "prompt", registry=registry).inc(prompts[0])
    Counter("banditspec_target_prompt_tokens_reused", "reused", registry=registry).inc(prompts[1])
    seconds = Histogram("banditspec_target_forward_seconds", "forward time", registry=registry)
    rows = Histogram("banditspec_target_batch_rows", "rows", registry=registry)
    tokens = Histogram("banditspec_target_batch_tokens", "tokens", registry=registry)
    for took, row_count, token_count in forwards:
        seconds.observe(took)
        rows.observe(row_count)
        tokens.observe(token_count)
    return generate_latest(registry).decode()


def test_totals_come_from_the_histograms_sums_and_counts():
    totals = parse_totals(exposition([(0.1, 8, 40), (0.3, 6, 30)]))
    assert totals.forwards == 2
    assert totals.seconds == pytest.approx(0.4)
    assert (totals.rows, totals.tokens) == (14, 70)


def test_no_forward_yet_reads_as_zeros():
    assert parse_totals(exposition([])) == ForwardTotals()
    assert parse_totals("") == ForwardTotals()


def test_a_phase_is_the_difference_of_two_readings():
    before = parse_totals(exposition([(0.5, 1, 100)], prompts=(100, 0)))  # a prefill before the phase
    after = parse_totals(exposition([(0.5, 1, 100), (0.1, 8, 40), (0.3, 6, 30)], prompts=(180, 20)))
    phase = phase_forwards(before, after, wall_seconds=0.5)
    assert phase["forwards"] == 2
    assert phase["rows_per_forward"] == pytest.approx(7.0)
    assert phase["tokens_per_forward"] == pytest.approx(35.0)
    assert phase["ms_per_forward"] == pytest.approx(200.0)
    assert phase["busy"] == pytest.approx(0.8)
    assert phase["prompt_reused"] == pytest.approx(0.25)  # 20 of the phase's 80 prompt tokens
    assert phase_forwards(after, after, wall_seconds=1.0) == {}


def test_the_controllers_slowdowns_are_read_by_part():
    registry = CollectorRegistry()
    gauge = Gauge(SLOWDOWN, "slow-down", ["part"], registry=registry)
    assert parse_slowdown(generate_latest(registry).decode()) == {}
    gauge.labels("fixed").set(1.3)
    gauge.labels("tokens").set(1.8)
    assert parse_slowdown(generate_latest(registry).decode()) == {"fixed": 1.3, "tokens": 1.8}
