"""A round's share of a batched forward: the charges of a forward's rows add up to it, a lone round is
charged its wall time, the load ceiling is the lone-round ceiling at no load and shrinks long drafts'
worth as the load grows, and the forward curve follows the forwards the target reports. The cycle
model: a lone request is not charged by it, and under load it ranks arms as their throughput does."""

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
    assert load_ceiling(curve, Load(0, 0.06), 6, 0.003) == pytest.approx(lone.ceiling_tokens_per_second)


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


# the cycle model ---------------------------------------------------------------------------------------

# A compute-bound forward, as on this CPU: a fixed part and a cost per token.
LINEAR = ForwardCurve([0.030 + 0.004 * n for n in range(1, 17)], {n: 0.030 + 0.004 * n for n in (32, 64, 128)})


def test_the_cycle_model_leaves_a_lone_request_alone():
    assert Load.cycle(4, batch_rows=1, batch_tokens=4, forward_seconds=0.05, running=1, curve=LINEAR) is None
    assert Load.cycle(4, batch_rows=3, batch_tokens=9, forward_seconds=0.05, running=1, curve=LINEAR) is None


def test_a_cycle_is_the_forwards_of_every_running_request_playing_the_same_arm():
    # 8 requests in forwards of 4 rows: two forwards of 4·k tokens per cycle.
    load = Load.cycle(4, batch_rows=4, batch_tokens=13, forward_seconds=0.08, running=8, curve=LINEAR)
    assert load is not None
    assert load.forward(4) == pytest.approx(2 * LINEAR.seconds(16))
    assert load.forward(1) == pytest.approx(2 * LINEAR.seconds(4))
    # Rows never exceed the requests running (other controllers' rows are not this controller's cycle).
    wide = Load.cycle(4, batch_rows=12, batch_tokens=30, forward_seconds=0.1, running=2, curve=LINEAR)
    assert wide is not None and wide.forward(1) == pytest.approx(LINEAR.seconds(2))


def rewards(load: Load | None, accepted: float, gamma: int, outside: float) -> tuple[float, float]:
    """(target-only, drafting arm) tokens per charged second under `load`, as the cycle model charges them."""

    def charged(fed: int) -> float:
        return outside + (load.forward(fed) if load is not None else LINEAR.seconds(fed))

    return 1 / charged(1), (1 + accepted) / charged(gamma + 1)


def throughputs(running: int, accepted: float, gamma: int, outside: float) -> tuple[float, float]:
    """Tokens per second of `running` requests all playing target-only, or all the drafting arm, in one forward."""
    cycle_one = outside + LINEAR.seconds(running)
    cycle_draft = outside + LINEAR.seconds(running * (gamma + 1))
    return running / cycle_one, running * (1 + accepted) / cycle_draft


@pytest.mark.parametrize("running", [1, 2, 4, 8, 16])
def test_under_the_cycle_model_the_reward_ranks_arms_as_throughput_does(running):
    """A 6-token draft of which 1.5 tokens are accepted pays alone and not under load (the forward is
    compute bound); the reward must say the same at every load, as the share model did not."""
    accepted, gamma, outside = 1.5, 6, 0.002
    load = Load.cycle(gamma + 1, running, running * (gamma + 1), 0.1, running, LINEAR)
    one_reward, draft_reward = rewards(load, accepted, gamma, outside)
    one_throughput, draft_throughput = throughputs(running, accepted, gamma, outside)
    assert (draft_reward > one_reward) == (draft_throughput > one_throughput)
    if running == 1:
        assert draft_throughput > one_throughput  # the case is not trivial: the ranking turns with load
    if running == 16:
        assert draft_throughput < one_throughput
