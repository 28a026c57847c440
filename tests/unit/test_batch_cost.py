"""A round's share of a batched forward: the charges of a forward's rows add up to it, a lone round is
charged its wall time, the load ceiling is the lone-round ceiling at no load and shrinks long drafts'
worth as the load grows, and the forward curve follows the forwards the target reports."""

from __future__ import annotations

import pytest

from services.controller.batch_cost import ForwardCurve, Load, charged_seconds, load_ceiling
from services.controller.reward import RewardScale

CURVE = [0.050 + 0.002 * k for k in range(16)]  # f(k) for k = 1..16: flat-ish, as a memory-bound CPU forward


def test_the_rows_charges_add_up_to_the_forward():
    rows, forward, rpc = [1, 3, 7, 5], 0.2, 0.004
    total = sum(rows)
    charges = [charged_seconds(forward + rpc, own, Load.of(own, len(rows), total, forward)) for own in rows]
    assert sum(charges) == pytest.approx(forward + len(rows) * rpc)


def test_a_lone_round_is_charged_its_wall_time():
    for own, rows, tokens in ((7, 1, 8), (8, 1, 8), (8, 2, 8)):  # alone, or beside rows with no tokens
        load = Load.of(own, batch_rows=rows, batch_tokens=tokens, forward_seconds=0.08)
        assert load is None
        assert charged_seconds(0.09, own, load) == 0.09


def test_no_load_gives_the_lone_round_ceiling():
    curve = ForwardCurve(CURVE)
    lone = RewardScale.for_arms(max_gamma=6, forward_seconds=CURVE, round_overhead_seconds=0.003, step_seconds=0.06)
    assert load_ceiling(curve, 0, 6, 0.003) == pytest.approx(lone.ceiling_tokens_per_second)


def test_under_load_a_long_draft_is_worth_less():
    """Beside 50 other tokens, a 7-token round costs 7/57 of a forward: its per-token cost is near what
    every other token pays, so a draft must be accepted to pay; alone, the same round costs barely more
    than one token's."""
    curve = ForwardCurve(CURVE)
    curve.observe(57, 0.20)
    curve.observe(51, 0.18)
    alone_long, alone_one = 7 / (curve.seconds(7) + 0.003), 1 / (curve.seconds(1) + 0.003)
    loaded_long = 7 / (0.003 + curve.seconds(57) * 7 / 57)
    loaded_one = 1 / (0.003 + curve.seconds(51) * 1 / 51)
    assert alone_long / alone_one > 5  # alone, drafting is nearly free
    assert loaded_long / loaded_one < 2  # under load, it costs nearly what it yields


def test_the_curve_interpolates_and_follows_reports():
    curve = ForwardCurve([0.05, 0.06])
    assert curve.seconds(1) == 0.05 and curve.seconds(4) == pytest.approx(0.06 * 4 / 2)
    curve.observe(10, 0.10)
    assert curve.seconds(6) == pytest.approx(0.06 + (6 - 2) / (10 - 2) * (0.10 - 0.06))
    curve.observe(10, 0.20)
    assert curve.seconds(10) == pytest.approx(0.10 + 0.1 * (0.20 - 0.10))


def test_start_up_batches_seed_the_curve_beyond_one_row():
    curve = ForwardCurve([0.05, 0.06], {32: 0.12, 64: 0.20})
    assert curve.seconds(32) == 0.12
    assert curve.seconds(48) == pytest.approx(0.16)
    assert curve.seconds(128) == pytest.approx(0.40)
