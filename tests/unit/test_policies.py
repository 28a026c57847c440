"""Bandit policies: UCBSpec, EXP3Spec and FixedArm, against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.controller.policies import POLICIES, EXP3Spec, FixedArm, UCBSpec, UniformRandom, make_policy
from services.controller.policies.ucb import confidence_radius

# UCBSpec ---------------------------------------------------------------------------------------


def test_ucb_warm_up_pulls_each_arm_once_in_arm_order():
    policy = UCBSpec(4)
    chosen = []
    for reward in (0.1, 0.9, 0.5, 0.3):
        arm = policy.select()
        chosen.append(arm)
        policy.update(arm, reward)
    assert chosen == [0, 1, 2, 3]
    assert policy.pulls == [1, 1, 1, 1]
    # After warm-up: the largest mean (all radii equal with n_i = 1) is arm 1.
    assert policy.select() == 1


def test_ucb_warm_up_comes_before_exploitation_even_for_a_great_first_arm():
    policy = UCBSpec(3)
    policy.update(0, 1.0)
    policy.update(0, 1.0)
    assert policy.select() == 1  # arm 1 has never been pulled
    policy.update(1, 0.0)
    assert policy.select() == 2


@pytest.mark.parametrize(
    ("pulls", "round_index", "num_arms", "reward_range", "delta", "expected"),
    [
        # ln(3·5²·√3 / 0.5) = ln(259.81) = 5.55994; (1/2)·√(3/4 · (1 + 2·5.55994)) = 1.50747
        (2, 5, 3, 1.0, 0.5, 1.5074740592830667),
        # ln(2·4²·√2 / 0.1) = ln(452.55) = 6.11489; (2/2)·√(2/1 · (1 + 2·6.11489)) = 5.14389
        (1, 4, 2, 2.0, 0.1, 5.143887473914547),
    ],
)
def test_confidence_radius_matches_hand_computed_values(pulls, round_index, num_arms, reward_range, delta, expected):
    radius = confidence_radius(pulls, round_index, num_arms, reward_range, delta)
    assert radius == pytest.approx(expected, rel=1e-12)


def test_confidence_radius_defaults_are_unit_range_and_half_delta():
    n, t, k = 3, 7, 5
    by_formula = 0.5 * math.sqrt((1 + n) / n**2 * (1 + 2 * math.log(k * t**2 * math.sqrt(1 + n) / 0.5)))
    assert confidence_radius(n, t, k) == pytest.approx(by_formula, rel=1e-12)


def test_confidence_radius_shrinks_with_pulls_and_grows_with_rounds():
    assert confidence_radius(10, 20, 3) < confidence_radius(2, 20, 3)
    assert confidence_radius(5, 200, 3) > confidence_radius(5, 20, 3)


def test_ucb_picks_argmax_of_mean_plus_radius_with_per_arm_pulls():
    policy = UCBSpec(2)
    # arm 0: 9 pulls, mean 0.6; arm 1: 1 pull, mean 0.5. t = 11.
    for _ in range(9):
        policy.update(0, 0.6)
    policy.update(1, 0.5)
    t = policy.rounds + 1
    assert t == 11
    index0 = 0.6 + confidence_radius(9, t, 2)
    index1 = 0.5 + confidence_radius(1, t, 2)
    assert policy.index(0, t) == pytest.approx(index0)
    assert policy.index(1, t) == pytest.approx(index1)
    assert index1 > index0
    # With the total pull count for both arms the radii would be equal and arm 0 would win.
    assert 0.6 + confidence_radius(10, t, 2) > 0.5 + confidence_radius(10, t, 2)
    assert policy.select() == 1


def test_ucb_exploits_a_clearly_better_arm_once_well_sampled():
    policy = UCBSpec(3)
    for _ in range(200):
        policy.update(0, 0.2)
        policy.update(1, 0.9)
        policy.update(2, 0.4)
    assert policy.select() == 1


def test_ucb_disable_skips_arm_in_warm_up_and_afterwards():
    policy = UCBSpec(3)
    policy.disable(0)
    assert policy.select() == 1
    policy.update(1, 0.1)
    assert policy.select() == 2
    policy.update(2, 0.9)
    assert policy.select() == 2
    policy.disable(2)
    assert policy.select() == 1
    policy.disable(1)
    assert policy.select() is None  # no arm left: a value, not an error


def test_ucb_rejects_zero_arms():
    with pytest.raises(ValueError):
        UCBSpec(0)


@settings(max_examples=150, deadline=None)
@given(
    num_arms=st.integers(1, 6),
    steps=st.lists(
        st.tuples(st.sampled_from(["pull", "disable"]), st.floats(0, 1), st.integers(0, 5)), min_size=1, max_size=40
    ),
)
def test_ucb_never_selects_a_disabled_arm(num_arms, steps):
    policy = UCBSpec(num_arms)
    disabled: set[int] = set()
    for action, reward, which in steps:
        if action == "disable":
            arm = which % num_arms
            policy.disable(arm)
            disabled.add(arm)
            continue
        if len(disabled) == num_arms:
            assert policy.select() is None
            continue
        arm = policy.select()
        assert arm not in disabled
        assert 0 <= arm < num_arms
        policy.update(arm, reward)


# EXP3Spec --------------------------------------------------------------------------------------


def exp3_reference(loss_estimates: np.ndarray, round_index: int, active: np.ndarray) -> np.ndarray:
    k = int(active.sum())
    eta = math.sqrt(math.log(k) / (round_index * k)) if k > 1 else 0.0
    low = min(z for z, a in zip(loss_estimates, active, strict=True) if a)  # shifting all losses keeps the ratios
    weights = np.array([math.exp(-eta * (z - low)) if a else 0.0 for z, a in zip(loss_estimates, active, strict=True)])
    return weights / weights.sum()


def test_exp3_probabilities_follow_the_formula():
    policy = EXP3Spec(3, np.random.default_rng(0))
    policy.loss_estimates = np.array([0.0, 2.0, 5.0])
    t = 4
    eta = math.sqrt(math.log(3) / (t * 3))  # sqrt(1.098612 / 12) = 0.302574
    weights = np.exp(-eta * np.array([0.0, 2.0, 5.0]))
    expected = weights / weights.sum()
    assert eta == pytest.approx(0.302574, abs=1e-6)
    np.testing.assert_allclose(policy.probabilities(t), expected, rtol=1e-12)
    assert expected[0] > expected[1] > expected[2]


def test_exp3_first_round_is_uniform_with_no_warm_up():
    policy = EXP3Spec(4, np.random.default_rng(0))
    np.testing.assert_allclose(policy.probabilities(1), [0.25] * 4)
    # No warm-up: the first arm is drawn, not arm 0 by rule.
    first_choices = {EXP3Spec(4, np.random.default_rng(seed)).select() for seed in range(40)}
    assert len(first_choices) > 1


def test_exp3_importance_weights_only_the_chosen_arm():
    policy = EXP3Spec(3, np.random.default_rng(7))
    policy.loss_estimates = np.array([1.0, 0.5, 2.0])
    arm = policy.select()
    p_chosen = policy.last_probs[arm]
    np.testing.assert_allclose(policy.last_probs, exp3_reference(np.array([1.0, 0.5, 2.0]), 1, np.ones(3, bool)))
    before = policy.loss_estimates.copy()
    policy.update(arm, 0.3)
    expected = before.copy()
    expected[arm] += (1 - 0.3) / p_chosen
    np.testing.assert_allclose(policy.loss_estimates, expected)
    assert policy.rounds == 1
    # The next round uses t = 2.
    policy.select()
    np.testing.assert_allclose(policy.last_probs, exp3_reference(expected, 2, np.ones(3, bool)))


def test_exp3_full_reward_adds_no_loss():
    policy = EXP3Spec(2, np.random.default_rng(0))
    arm = policy.select()
    policy.update(arm, 1.0)
    np.testing.assert_allclose(policy.loss_estimates, [0.0, 0.0])


def test_exp3_update_before_select_raises():
    with pytest.raises(RuntimeError):
        EXP3Spec(2, np.random.default_rng(0)).update(0, 0.5)


def test_exp3_learns_to_prefer_the_better_arm():
    rng = np.random.default_rng(3)
    policy = EXP3Spec(3, rng)
    rewards = [0.1, 0.9, 0.2]
    for _ in range(400):
        arm = policy.select()
        policy.update(arm, rewards[arm])
    probs = policy.probabilities(policy.rounds + 1)
    assert int(np.argmax(probs)) == 1


def test_exp3_disabled_arm_has_zero_probability_and_is_never_drawn():
    policy = EXP3Spec(3, np.random.default_rng(0))
    policy.disable(1)
    assert policy.probabilities(1)[1] == 0.0
    for _ in range(50):
        arm = policy.select()
        assert arm != 1
        policy.update(arm, 0.5)
    policy.disable(0)
    policy.disable(2)
    assert policy.select() is None  # no arm left: a value, not an error


@settings(max_examples=200, deadline=None)
@given(
    losses=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=8),
    round_index=st.integers(1, 10**6),
    data=st.data(),
)
def test_exp3_probabilities_are_a_distribution(losses, round_index, data):
    k = len(losses)
    active = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    if not active.any():
        active[data.draw(st.integers(0, k - 1))] = True
    policy = EXP3Spec(k, np.random.default_rng(0))
    policy.loss_estimates = np.array(losses, dtype=float)
    policy.active = active
    probs = policy.probabilities(round_index)
    assert np.all(np.isfinite(probs))
    assert np.all(probs >= 0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(probs[~active] == 0)
    np.testing.assert_allclose(probs, exp3_reference(policy.loss_estimates, round_index, active), atol=1e-9)


# FixedArm and the factory ----------------------------------------------------------------------


def test_fixed_arm_always_selects_its_arm_and_ignores_rewards():
    policy = FixedArm(3, arm=2)
    for reward in (0.0, 1.0, 0.5):
        assert policy.select() == 2
        policy.update(2, reward)
    policy.disable(0)  # another arm: no effect
    assert policy.select() == 2
    policy.disable(2)
    assert policy.select() is None  # no arm left: a value, not an error


def test_fixed_arm_out_of_range():
    with pytest.raises(ValueError):
        FixedArm(2, arm=2)


def test_make_policy():
    rng = np.random.default_rng(0)
    assert isinstance(make_policy("ucbspec", 3, rng), UCBSpec)
    assert isinstance(make_policy("exp3spec", 3, rng), EXP3Spec)
    fixed = make_policy("fixed", 3, rng)
    assert isinstance(fixed, FixedArm) and fixed.select() == 0
    assert isinstance(make_policy("uniform", 3, rng), UniformRandom)
    assert isinstance(make_policy("ucbspec-cf", 3, rng), UCBSpec)
    assert set(POLICIES) == {"ucbspec", "ucbspec-cf", "exp3spec", "fixed", "uniform"}
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("thompson", 3, rng)


def test_uniform_draws_every_active_arm_about_equally_and_ignores_rewards():
    policy = UniformRandom(4, np.random.default_rng(0))
    policy.disable(2)
    counts = np.zeros(4)
    for _ in range(3000):
        arm = policy.select()
        policy.update(arm, 1.0 if arm == 0 else 0.0)
        counts[arm] += 1
    assert counts[2] == 0
    # 1000 expected per arm; a binomial sd is ~26, so 900..1100 is a wide band
    assert all(900 < c < 1100 for c in counts[[0, 1, 3]]), counts
    for arm in (0, 1, 3):
        policy.disable(arm)
    assert policy.select() is None  # no arm left: a value, not an error


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_implements_the_whole_interface(name):
    """The loop calls select/update/observe/disable/is_active on any policy."""
    policy = make_policy(name, 3, np.random.default_rng(0))
    arm = policy.select()
    assert arm is not None and policy.is_active(arm)
    policy.update(arm, 0.5)
    policy.observe(arm, 0.5)
    policy.prior(arm, 0.5, 2.0)
    assert all(0.0 <= mean <= 1.0 for mean in policy.means().values())
    for index in range(3):
        policy.disable(index)
        assert not policy.is_active(index)
    assert policy.select() is None


def test_policy_names_come_from_one_table():
    from banditspec.policy_names import POLICY_NAMES, POLICY_WIRE_VALUES
    from banditspec.v1 import generation_pb2

    assert set(POLICIES) == set(POLICY_WIRE_VALUES)
    # every policy of the API has a name, and every name a distinct enum value
    assert set(POLICY_NAMES) == set(generation_pb2.Policy.values()) - {generation_pb2.POLICY_UNSPECIFIED}
