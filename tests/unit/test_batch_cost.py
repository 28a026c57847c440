"""A round's share of a batched forward: the charges of a forward's rows add up to it, a lone round is
charged its wall time, the load ceiling is the lone-round ceiling at no load and shrinks long drafts'
worth as the load grows, and the forward model keeps the plane measured at start-up while the slow-downs
of its fixed part and of its tokens follow the forwards the target reports. The cycle model: a lone
request is not charged by it, and under load it ranks arms as their throughput does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.controller.batch_cost import ForwardModel, Load, LoadedCharges, charged_seconds, load_ceiling
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


def plane(rows: int, tokens: int) -> float:
    """A compute-bound forward, as on this CPU: a fixed part, a cost per row and one per token."""
    return 0.030 + 0.006 * (rows - 1) + 0.004 * tokens


START_UP_SHAPES = ((8, 1), (16, 1), (8, 2), (16, 2), (3, 8), (4, 8), (8, 8), (16, 8))


def measured(truth=plane) -> ForwardModel:
    """A model from start-up measurements of `truth`: one row of 1-16 tokens and the batched shapes."""
    return ForwardModel([truth(1, n) for n in range(1, 17)], {(r, r * t): truth(r, r * t) for r, t in START_UP_SHAPES})


def test_no_load_gives_the_lone_round_ceiling():
    model = ForwardModel(CURVE)
    lone = RewardScale.for_arms(max_gamma=6, forward_seconds=CURVE, round_overhead_seconds=0.003, step_seconds=0.06)
    assert load_ceiling(model, Load(0, 0.06), 6, 0.003) == pytest.approx(lone.ceiling_tokens_per_second)


def test_under_load_a_long_draft_is_worth_less():
    """Beside 50 other tokens, a 7-token round costs 7/57 of a forward: its per-token cost is near what
    every other token pays, so a draft must be accepted to pay; alone, the same round costs barely more
    than one token's."""
    model = measured(lambda rows, tokens: CURVE[0] + 0.0025 * (tokens - 1))
    alone_long, alone_one = 7 / (CURVE[6] + 0.003), 1 / (CURVE[0] + 0.003)
    loaded_long = 7 / (0.003 + model.seconds(57, rows=8) * 7 / 57)
    loaded_one = 1 / (0.003 + model.seconds(51, rows=8) * 1 / 51)
    assert alone_long / alone_one > 5  # alone, drafting is nearly free
    assert loaded_long / loaded_one < 2  # under load, it costs nearly what it yields


def test_one_row_is_the_curve_measured_at_start_up_at_the_speed_of_now():
    """Beside other requests a round can still get a forward to itself: the start-up curve's shape (its
    kinks are the kernels'), slowed as the batched forwards are."""
    model = measured()
    assert [model.seconds(n) for n in range(1, 17)] == [plane(1, n) for n in range(1, 17)]
    assert model.seconds(32) == pytest.approx(plane(1, 16) * 2)  # beyond it, in proportion to the tokens
    model.observe(16, 1.5 * plane(8, 16), rows=8)
    slowed = model.speed
    assert slowed == pytest.approx(1.5, rel=1e-3)  # one forward alone sets the level: nothing weighs against it
    model.observe(16, 1.2 * plane(1, 16), rows=1)  # a one-row forward ran on other threads: not a speed
    assert model.speed == slowed
    assert model.seconds(4) == pytest.approx(slowed * plane(1, 4))


def test_a_lone_requests_forwards_set_their_own_speed():
    """A lone request's one-row forwards run on the threads the one-row curve was measured on: their ratio
    to it is the lone rounds' speed, apart from the batched forwards' (and prefills past the curve are no
    sample of it)."""
    model = measured()
    for step in range(80):
        tokens = 1 + step % 8
        model.observe_alone(tokens, 1.3 * plane(1, tokens))
    model.observe_alone(200, 0.001)  # a prefill: far cheaper per token than the curve's extrapolation
    assert model.alone_speed == pytest.approx(1.3, rel=0.01)
    assert model.speed == 1.0


def test_the_plane_fits_the_start_up_forwards():
    model = measured()
    for rows, tokens in ((8, 8), (8, 56), (12, 30), (16, 128), (2, 5)):
        assert model.seconds(tokens, rows) == pytest.approx(plane(rows, tokens), rel=1e-6)


def test_one_rows_kinks_do_not_tilt_the_plane():
    """One row of 1 token costs much less than one of 2+ (blocked kernels); the batched measurements alone
    say what a row and a token cost, so the plane ignores the kink."""
    kinked = [0.030 if n == 1 else plane(1, n) + 0.02 for n in range(1, 17)]
    model = ForwardModel(kinked, {(r, r * t): plane(r, r * t) for r, t in START_UP_SHAPES})
    for rows, tokens in ((8, 8), (8, 56), (16, 32)):
        assert model.seconds(tokens, rows) == pytest.approx(plane(rows, tokens), rel=1e-6)


def test_rows_of_eight_tokens_alone_lean_on_the_one_row_curve():
    """An older target measured rows of 8 tokens only, where rows and tokens grow together: the one-row
    curve tells a token's cost from a row's."""
    model = ForwardModel([plane(1, n) for n in range(1, 17)], {(t // 8, t): plane(t // 8, t) for t in (24, 64, 128)})
    for rows, tokens in ((8, 8), (8, 56), (16, 32)):
        assert model.seconds(tokens, rows) == pytest.approx(plane(rows, tokens), rel=1e-6)


def test_the_level_follows_the_load_and_the_shape_stays():
    """Under load the target reports short rows only (8 rows of 1-2 tokens), on a machine now 1.6× slower
    than at start-up. Every size slows alike: a long draft in every row (56 tokens) must not keep its
    start-up time while the sizes seen grow, or a long draft looks ever cheaper as the load grows."""
    model = measured()
    for step in range(60):
        tokens = 8 + step % 13
        model.observe(tokens, 1.6 * plane(8, tokens), rows=8)
    assert model.speed == pytest.approx(1.6, rel=0.01)
    for tokens in (8, 16, 56, 64):
        assert model.seconds(tokens, rows=8) == pytest.approx(1.6 * plane(8, tokens), rel=0.01)
    long_draft, one_token = model.seconds(56, rows=8), model.seconds(8, rows=8)
    assert long_draft / one_token == pytest.approx(plane(8, 56) / plane(8, 8), rel=1e-6)


def loaded(rows: int, tokens: int, rows_speed: float = 1.3, token_speed: float = 1.8) -> float:
    """A forward under load: its rows (one token each) slowed by `rows_speed`, the tokens drafted beyond
    them by `token_speed`."""
    return rows_speed * (0.030 + 0.006 * (rows - 1) + 0.004 * rows) + token_speed * 0.004 * (tokens - rows)


def observe_drafting(model: ForwardModel, truth, seed: int = 0) -> None:
    """200 forwards of 6-8 rows that draft now and then (as a policy's arms do), with 5% timing noise."""
    noise = np.random.default_rng(seed)
    for _ in range(200):
        rows = int(noise.integers(6, 9))
        tokens = rows + int(noise.choice([0, 0, 0, 5, 6, 12]))
        model.observe(tokens, truth(rows, tokens) * float(np.exp(noise.normal(0, 0.05))), rows=rows)


def test_a_drafted_tokens_cost_follows_the_load():
    """Rows that draft now and then tell a drafted token's cost from a row's: the model learns that drafted
    tokens slowed 1.8× while the rows slowed 1.3×, and prices a drafting forward so."""
    model = measured()
    observe_drafting(model, loaded)
    assert model.token_speed == pytest.approx(1.8, rel=0.1)
    assert model.speed == pytest.approx(1.3, rel=0.1)
    for rows, tokens in ((8, 8), (8, 14), (8, 20)):  # the sizes seen
        assert model.seconds(tokens, rows) == pytest.approx(loaded(rows, tokens), rel=0.03)
    assert model.token_seconds() == pytest.approx(1.8 * 0.004, rel=0.1)


def test_rows_grown_costly_do_not_make_a_drafted_token_dear():
    """Where rows grow costly (each attends over a longer context than at start-up: 1.8× its time) while a
    drafted token costs what it did, the rows' slow-down takes the growth, and a drafted token is priced at
    its start-up cost, not at the rows'."""
    model = measured()
    observe_drafting(model, lambda rows, tokens: loaded(rows, tokens, rows_speed=1.8, token_speed=1.0))
    assert model.speed == pytest.approx(1.8, rel=0.1)
    assert model.token_seconds() == pytest.approx(0.004, rel=0.15)
    added = model.seconds(14, rows=8) - model.seconds(8, rows=8)
    assert added == pytest.approx(6 * 0.004, rel=0.15)


def test_where_no_row_drafts_a_token_and_a_row_slow_alike():
    """Every row feeding one token: the forwards cannot tell a token's cost from a row's, and the tie keeps
    the start-up shape, scaled to the level the forwards show."""
    model = measured()
    for step in range(100):
        rows = 4 + step % 5
        model.observe(rows, loaded(rows, rows), rows=rows)
    assert model.token_speed == pytest.approx(model.speed, rel=0.1)
    assert model.seconds(8, rows=8) == pytest.approx(loaded(8, 8), rel=0.03)


FORWARDS = st.lists(
    st.tuples(st.integers(2, 32), st.integers(1, 256), st.floats(1e-5, 10.0, allow_nan=False)), max_size=60
)


@given(FORWARDS)
def test_whatever_the_target_reports_the_slowdowns_stay_finite_and_bounded(forwards):
    """Timing noise, a stall or a forward far off the plane never makes a token free, negative or endless."""
    model = measured()
    for rows, tokens, seconds in forwards:
        model.observe(max(rows, tokens), seconds, rows=rows)
        assert 0.2 <= model.speed <= 5 and 0.2 <= model.token_speed <= 5
        assert 0 < model.seconds(8, rows=8) < model.seconds(64, rows=8) < float("inf")


def test_a_forward_with_a_prompts_chunk_says_nothing_of_the_tokens_cost():
    model = measured()
    model.observe(200, 0.5 * plane(8, 200), rows=8, prefill_rows=1)  # a chunk runs cheap per token
    assert (model.speed, model.token_speed) == (1.0, 1.0)


def test_a_forward_reported_by_every_row_counts_once():
    once, eight_times = measured(), measured()
    once.observe(12, 2 * plane(6, 12), rows=6)
    for _ in range(8):
        eight_times.observe(12, 2 * plane(6, 12), rows=6)
    assert eight_times.speed == once.speed > 1


def test_noise_never_makes_a_token_or_a_row_free_or_negative():
    jitter = [1.0, 1.3, 0.8, 1.2, 0.9]
    model = measured(lambda rows, tokens: 0.05 * jitter[(rows + tokens) % 5])
    _, b, c = model.plane
    assert b >= 0 and c >= 0
    assert all(model.seconds(n, r) >= 0.5 * 0.05 * 0.8 for r in (2, 8, 16) for n in (r, 4 * r))


def test_a_cost_held_at_zero_leaves_the_others_fitted():
    """Rows cost nothing here, and noise tilts the row cost below zero: it is held at 0 and the token cost
    refitted, not merely clipped."""
    truth = {(r, r * t): 0.040 + 0.003 * r * t for r, t in START_UP_SHAPES}
    truth[(16, 16)] *= 0.9  # sixteen rows a little fast: a negative row cost in a free fit
    model = ForwardModel([], truth)
    a, b, c = model.plane
    assert b == 0
    assert c == pytest.approx(0.003, rel=0.1) and a == pytest.approx(0.040, rel=0.2)


def test_the_share_model_prices_the_forward_by_its_rows():
    model = measured()
    load = Load.of(4, batch_rows=8, batch_tokens=30, forward_seconds=0.2)
    assert load is not None and load.rows == 8
    assert load.modelled_forward(model, 4) == pytest.approx(plane(8, 30) * 4 / 30)


# the cycle model ---------------------------------------------------------------------------------------

LINEAR = measured(lambda rows, tokens: 0.030 + 0.004 * tokens)


def test_the_cycle_model_leaves_a_lone_request_alone():
    assert Load.cycle(4, batch_rows=1, batch_tokens=4, forward_seconds=0.05, running=1, model=LINEAR) is None
    assert Load.cycle(4, batch_rows=3, batch_tokens=9, forward_seconds=0.05, running=1, model=LINEAR) is None


def test_a_cycle_is_the_forwards_of_every_running_request_playing_the_same_arm():
    # 8 requests in forwards of 4 rows: two forwards of 4·k tokens per cycle.
    load = Load.cycle(4, batch_rows=4, batch_tokens=13, forward_seconds=0.08, running=8, model=LINEAR)
    assert load is not None
    assert load.forward(4) == pytest.approx(2 * LINEAR.seconds(16, rows=4))
    assert load.forward(1) == pytest.approx(2 * LINEAR.seconds(4, rows=4))
    # Rows never exceed the requests running (other controllers' rows are not this controller's cycle).
    wide = Load.cycle(4, batch_rows=12, batch_tokens=30, forward_seconds=0.1, running=2, model=LINEAR)
    assert wide is not None and wide.forward(1) == pytest.approx(LINEAR.seconds(2, rows=2))
    # A round alone in its forward while others run: every running request in a forward of its own.
    alone = Load.cycle(4, batch_rows=1, batch_tokens=4, forward_seconds=0.05, running=3, model=LINEAR)
    assert alone is not None and alone.forward(4) == pytest.approx(3 * LINEAR.seconds(4))


def rewards(load: Load | None, accepted: float, gamma: int, outside: float) -> tuple[float, float]:
    """(target-only, drafting arm) tokens per charged second under `load`, as the cycle model charges them."""

    def charged(fed: int) -> float:
        return outside + (load.forward(fed) if load is not None else LINEAR.seconds(fed))

    return 1 / charged(1), (1 + accepted) / charged(gamma + 1)


def throughputs(running: int, accepted: float, gamma: int, outside: float) -> tuple[float, float]:
    """Tokens per second of `running` requests all playing target-only, or all the drafting arm, in one forward."""
    cycle_one = outside + LINEAR.seconds(running, rows=running)
    cycle_draft = outside + LINEAR.seconds(running * (gamma + 1), rows=running)
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


# a forward's step: one drafting row slows every row --------------------------------------------------


def stepped(rows: int, tokens: int) -> float:
    """Products run at the next fast size: 9-16 tokens cost what 16 do, as MKL's kernels on the AMD EPYC."""
    size = 16 if 9 <= tokens <= 16 else tokens
    return 0.030 + 0.001 * (rows - 1) + 0.004 * size


def stepped_curve() -> list[float]:
    """One row of 1-16 tokens as the target measures it unpadded: 9-15 tokens slower than 16."""
    return [1.1 * stepped(1, 16) if 9 <= n <= 15 else stepped(1, n) for n in range(1, 17)]


STEPPED = ForwardModel(stepped_curve(), {(r, r * t): stepped(r, r * t) for r, t in (*START_UP_SHAPES, (8, 3))})


def test_several_rows_run_at_the_one_row_curves_next_fast_size():
    """Eight rows of which one drafts two tokens (10 tokens) cost what 16 tokens do, not 10/8 of 8."""
    assert STEPPED.seconds(10, rows=8) == pytest.approx(STEPPED.seconds(16, rows=8))
    assert STEPPED.seconds(10, rows=8) > 1.3 * STEPPED.seconds(8, rows=8)
    assert STEPPED.seconds(8, rows=8) == pytest.approx(stepped(8, 8), rel=0.02)


def test_rows_that_all_draft_alike_split_the_step_as_the_cycle_model_did():
    """Every row feeding k tokens: the charge is the cycle of forwards of r·k tokens; a target-only round
    is charged the one-token forward whatever the others fed."""
    for rows, k in ((8, 3), (4, 7), (8, 2)):
        load = Load.cycle(k, rows, rows * k, 0.1, 8, STEPPED)
        assert load is not None
        assert load.forward(k) == pytest.approx(8 / rows * STEPPED.seconds(rows * k, rows))
        assert load.forward(1) == pytest.approx(8 / rows * STEPPED.seconds(rows, rows))


def test_where_the_forward_is_linear_the_charge_does_not_depend_on_the_others():
    for others in (7, 10, 30):
        load = Load.cycle(4, 8, others + 4, 0.1, 8, LINEAR)
        assert load is not None and load.forward(4) == pytest.approx(LINEAR.seconds(32, rows=8))


@pytest.mark.parametrize(("fed", "accepted"), [(3, 2), (7, 6)])
def test_a_lone_drafter_among_one_token_rows_drafts_only_where_the_forward_gains(fed, accepted):
    """Seven target-only rows and one that drafts: it slows the forward to the 16-token size for all eight.
    Two tokens both accepted make the forward fewer tokens per second, six of six more; the reward must say
    which. Copying the drafter's width to every row (the cycle model before) says both pay."""
    rows = 8
    gains = (rows + accepted) / stepped(rows, rows - 1 + fed) > rows / stepped(rows, rows)
    load = Load.cycle(fed, rows, rows - 1 + fed, 0.1, rows, STEPPED)
    assert load is not None
    assert ((1 + accepted) / load.forward(fed) > 1 / load.forward(1)) == gains
    assert (1 + accepted) / STEPPED.seconds(rows * fed, rows) > 1 / STEPPED.seconds(rows, rows)  # copied: both
    assert gains == (accepted == 6)


@pytest.mark.parametrize(("drafts", "accepted"), [(0.3, 1), (0.9, 2)])
def test_when_every_request_plays_an_intermittent_arm_the_reward_ranks_it_as_throughput_does(drafts, accepted):
    """Eight requests in forwards of eight rows, all playing a γ-2 arm whose drafter proposes in `drafts` of
    its rounds. In 30% of rounds, one token of two accepted, nearly every forward slows to the 16-token
    size for few tokens: target-only gives more. In 90%, always right, drafting pays."""
    rng = np.random.default_rng(0)
    rows = 8
    rounds = [(3, 1 + accepted) if rng.random() < drafts else (1, 1) for _ in range(4000)]
    forwards = [rounds[i : i + rows] for i in range(0, len(rounds), rows)]
    drafting = sum(t for f in forwards for _, t in f) / sum(stepped(rows, sum(w for w, _ in f)) for f in forwards)
    target_only = rows / stepped(rows, rows)
    rewards = []
    for forward in forwards:
        fed = sum(w for w, _ in forward)
        for own, verified in forward:
            load = Load.cycle(own, rows, fed, 0.1, rows, STEPPED)
            assert load is not None
            rewards.append(verified / load.forward(own))
    one_reward = 1 / STEPPED.seconds(rows, rows)
    assert (float(np.mean(rewards)) > one_reward) == (drafting > target_only)
    assert (drafting > target_only) == (drafts > 0.5)


def test_dividing_by_the_arms_mean_charge_gives_its_throughput_where_a_mean_of_ratios_overstates_it():
    """Every request plays a γ-2 arm that drafts in a quarter of its rounds, half of its drafts accepted:
    its rounds that drafted nothing are charged the one-token forward, those that drafted their share of the
    step. The mean of tokens ÷ charge puts the arm ~10% closer to target-only than its throughput is; tokens
    ÷ the arm's mean charge gives the throughput."""
    rng = np.random.default_rng(1)
    rows = 8
    rounds = [((3, 1 + int(rng.random() < 0.5)) if rng.random() < 0.25 else (1, 1)) for _ in range(8000)]
    forwards = [rounds[i : i + rows] for i in range(0, len(rounds), rows)]
    throughput = sum(t for f in forwards for _, t in f) / sum(stepped(rows, sum(w for w, _ in f)) for f in forwards)
    relative = throughput / (rows / stepped(rows, rows))
    charges, ratios, smoothed = LoadedCharges(), [], []
    for forward in forwards:
        fed = sum(w for w, _ in forward)
        for own, verified in forward:
            load = Load.cycle(own, rows, fed, 0.1, rows, STEPPED)
            assert load is not None
            charge = load.forward(own)
            ratios.append(verified / charge)
            smoothed.append(verified / charges.mean_with(0, charge))
    one_token = 1 / STEPPED.seconds(rows, rows)
    assert float(np.mean(smoothed[rows * 50 :])) / one_token == pytest.approx(relative, rel=0.02)
    assert float(np.mean(ratios)) / one_token > relative + 0.08
