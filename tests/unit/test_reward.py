"""The reward normalisation: ρ = raw / ceiling, the ceiling being the best round the arms allow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.controller.reward import RewardScale, StepTimeEstimate


def test_ceiling_is_best_all_accepted_round():
    forwards = [0.050, 0.055, 0.060, 0.070, 0.080]  # k = 1..5 tokens
    scale = RewardScale.for_arms(
        max_gamma=3, forward_seconds=forwards, round_overhead_seconds=0.002, step_seconds=0.052
    )
    # k = 1..4 allowed (γ ≤ 3): 1/.052, 2/.057, 3/.062, 4/.072 → the last is best
    assert scale.ceiling_tokens_per_second == pytest.approx(4 / 0.072)
    assert scale.normalise(4 / 0.072) == pytest.approx(1.0)
    assert scale.normalise(1 / 0.052) == pytest.approx((1 / 0.052) / (4 / 0.072))


def test_ceiling_falls_back_without_forward_timings():
    scale = RewardScale.for_arms(max_gamma=6, forward_seconds=[], round_overhead_seconds=0.0, step_seconds=0.05)
    assert scale.ceiling_tokens_per_second == pytest.approx(7 / 0.05)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_normalised_reward_is_clipped_to_unit_interval(raw):
    scale = RewardScale(ceiling_tokens_per_second=100.0)
    assert 0.0 <= scale.normalise(raw) <= 1.0


def test_step_estimate_moves_towards_observations():
    estimate = StepTimeEstimate(0.1, weight=0.5)
    estimate.observe(0.05)
    assert estimate.seconds == pytest.approx(0.075)
