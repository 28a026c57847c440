"""Counterfactual scoring: an unpulled draft is scored by its common prefix with the verified text, once
that text decides it, with modelled round times."""

from __future__ import annotations

import pytest

from services.controller.arms import TARGET_ONLY_ARM, Arm
from services.controller.batch_cost import ForwardModel
from services.controller.counterfactual import CounterfactualScorer, RoundCosts
from services.controller.policies import UCBSpec

ARMS = [TARGET_ONLY_ARM, Arm.drafted("local", "pld", 3), Arm.drafted("local", "pld", 6), Arm.drafted("local", "sfx", 6)]


def costs() -> RoundCosts:
    return RoundCosts(
        forward_seconds=[0.010 + 0.001 * k for k in range(16)], target_only_overhead=0.002, drafted_overhead=0.003
    )


def test_modelled_round_seconds_use_the_forward_cost_of_k_plus_one_tokens():
    c = costs()
    assert c.seconds(0, None) == pytest.approx(0.010 + 0.002)
    assert c.seconds(3, "local/pld") == pytest.approx(0.013 + 0.003)
    c.observe(drafted=3, wall=0.023, drafter="local/pld")  # overhead 0.010 measured
    assert c.seconds(3, "local/pld") == pytest.approx(0.013 + 0.003 + 0.1 * (0.010 - 0.003))
    assert c.drafted_overhead == pytest.approx(0.003 + 0.1 * (0.010 - 0.003))
    c.observe(drafted=3, wall=0.063, drafter="local/model", model_free=False)  # a draft model's compute...
    assert c.seconds(3, "local/model") > c.seconds(3, "local/sfx")  # ...is not charged to the others
    assert c.seconds(3, "local/sfx") == pytest.approx(0.013 + c.drafted_overhead)


def test_a_slow_down_is_charged_to_the_forward_not_to_the_drafters_overhead():
    """The machine runs 1.5x slower than at start-up. A drafter pulled at γ 1 must still be priced right at
    γ 12: its learnt overhead stays the RPCs' and drafting's, and every forward is 1.5x the curve's."""
    curve = [0.010 + 0.002 * k for k in range(16)]
    model = ForwardModel(curve)
    c = RoundCosts(curve, target_only_overhead=0.002, drafted_overhead=0.002, model=model)
    for _ in range(60):
        model.observe_alone(2, 1.5 * curve[1])
        c.observe(drafted=1, wall=1.5 * curve[1] + 0.002, drafter="local/pld")
    assert c.seconds(12, "local/pld") == pytest.approx(1.5 * curve[12] + 0.002, rel=0.02)
    assert c.seconds(0, None) == pytest.approx(1.5 * curve[0] + 0.002, rel=0.02)
    # Without the speed the slow-down sits in the overhead learnt at γ 1, and γ 12 looks a fifth cheaper.
    unscaled = RoundCosts(curve, target_only_overhead=0.002, drafted_overhead=0.002)
    for _ in range(60):
        unscaled.observe(drafted=1, wall=1.5 * curve[1] + 0.002, drafter="local/pld")
    assert unscaled.seconds(12, "local/pld") < 0.9 * c.seconds(12, "local/pld")


def test_a_mismatch_decides_every_arm_of_the_draft_at_once():
    scorer = CounterfactualScorer(ARMS, costs())
    context = [1, 2, 3]
    scorer.add(len(context), "local", "pld", [7, 8, 9, 10, 11, 12])
    context += [7, 8, 5]  # verified: two of the draft's tokens, then another token
    samples = {arm: (tokens, seconds) for arm, tokens, seconds in scorer.resolve(context)}
    assert samples[1] == (3.0, pytest.approx(costs().seconds(3, "local/pld")))  # pld/3: 2 accepted + 1
    assert samples[2] == (3.0, pytest.approx(costs().seconds(6, "local/pld")))  # pld/6 drafts 6 and pays for them
    assert scorer.pending == []


def test_a_fully_matching_prefix_waits_for_more_text():
    scorer = CounterfactualScorer(ARMS, costs())
    context = [1]
    scorer.add(1, "local", "sfx", [4, 5, 6, 7])
    context += [4, 5]  # all match so far: acceptance of the 4-token draft is not known yet
    assert scorer.resolve(context) == []
    context += [6, 7, 9]
    assert scorer.resolve(context) == [(3, 5.0, pytest.approx(costs().seconds(4, "local/sfx")))]  # sfx/6 drafted only 4


def test_shorter_arm_is_decided_before_the_longer_one():
    scorer = CounterfactualScorer(ARMS, costs())
    scorer.add(0, "local", "pld", [4, 5, 6, 7, 8, 9])
    first = scorer.resolve([4, 5, 6])
    assert [(arm, tokens) for arm, tokens, _ in first] == [(1, 4.0)]  # pld/3 fully accepted
    assert [(arm, tokens) for arm, tokens, _ in scorer.resolve([4, 5, 6, 7, 0])] == [(2, 5.0)]


def test_empty_draft_costs_a_drafter_call_and_yields_the_bonus_token_only():
    scorer = CounterfactualScorer(ARMS, costs())
    scorer.add(0, "local", "sfx", [])
    assert scorer.resolve([]) == [(3, 1.0, pytest.approx(costs().seconds(0, "local/sfx")))]


def test_target_only_is_scored_when_another_arm_is_pulled():
    scorer = CounterfactualScorer(ARMS, costs())
    assert scorer.target_only_samples(pulled=2) == [(0, 1.0, pytest.approx(0.012))]
    assert scorer.target_only_samples(pulled=0) == []


def test_arms_of_a_failed_drafter_are_no_longer_scored():
    scorer = CounterfactualScorer(ARMS, costs())
    scorer.add(0, "local", "pld", [4, 5, 6, 7, 8, 9])
    scorer.add(0, "local", "sfx", [4, 5])
    scorer.forget({1, 2})
    assert [arm for arm, _, _ in scorer.resolve([4, 5, 6, 7, 8, 9, 1])] == [3]


def test_observations_count_as_samples_but_not_rounds():
    policy = UCBSpec(3)
    policy.observe(1, 0.5)
    policy.update(0, 0.2)
    assert policy.pulls == [1, 1, 0] and policy.rounds == 1
    assert policy.select() == 2  # warm-up only waits for arms never observed


def test_measured_spread_replaces_the_worst_case_scale_once_enough_samples_exist():
    from services.controller.policies.ucb import MIN_SPREAD, confidence_radius

    policy = UCBSpec(2, measured_spread=True)
    assert policy.spread() == 0.5  # no samples: the paper's R/2
    for reward in (0.2, 0.4, 0.2, 0.4, 0.2, 0.4):
        policy.update(0, reward)
    for reward in (0.5, 0.7, 0.5, 0.7, 0.5, 0.7):
        policy.update(1, reward)
    spread = policy.spread()
    for _ in range(20):  # counterfactual samples move the means, not the measured spread
        policy.observe(0, 0.3)
    assert policy.spread() == spread
    for _ in range(20):
        policy.observe(0, 0.4)
    # within-arm deviations of ±0.1 over 12 samples and 2 arms: sqrt(12 * 0.01 / 10)
    assert policy.spread() == pytest.approx((12 * 0.01 / 10) ** 0.5)
    assert policy.spread() < 0.5
    assert policy.index(1, 5) == pytest.approx(0.6 + confidence_radius(6, 5, 2, 2 * policy.spread()))
    constant = UCBSpec(2, measured_spread=True)
    for _ in range(10):  # no spread at all: clipped, so the radius never vanishes
        constant.update(0, 0.3)
        constant.update(1, 0.6)
    assert constant.spread() == MIN_SPREAD
    assert UCBSpec(2).spread() == 0.5  # plain UCBSpec keeps the paper's scale


def test_first_path_and_tree_outcome():
    from services.controller.counterfactual import first_path, tree_outcome

    # 7 → 8 → 11, 9 (beside 7) → 10; 12 beside 8
    draft, parents = [7, 9, 8, 10, 11, 12], [-1, -1, 0, 1, 2, 0]
    assert first_path(draft, parents) == [7, 8, 11]
    assert tree_outcome(draft, parents, [9, 10, 4], 8, 6) == (2, 6, True)  # the second branch, whole
    assert tree_outcome(draft, parents, [7, 12, 4], 8, 6) == (2, 6, True)
    assert tree_outcome(draft, parents, [7, 8], 8, 6) == (2, 6, False)  # 11 may come next
    assert tree_outcome(draft, parents, [7, 8], 8, 2) == (2, 5, True)  # cut at depth 2: 11 is not in it
    assert tree_outcome(draft, parents, [9, 10], 3, 6) == (1, 3, True)  # cut to 3 nodes: 10 is not in it
    assert tree_outcome(draft, parents, [5], 8, 6) == (0, 6, True)


def test_trees_score_tree_and_chain_arms_and_chains_score_only_chains():
    from services.controller.domain import Proposal

    small, large = Arm.tree("local", "pld", 6, 4), Arm.tree("local", "pld", 6, 8)
    arms = [*ARMS, small, large]  # 4: pld/6t4, 5: pld/6t8
    scorer = CounterfactualScorer(arms, costs(), {"local": {"pld", "sfx"}})
    assert scorer.score_tree_tokens == 8
    assert scorer.alternatives_for(ARMS[1]) == ["pld", "sfx"]  # pld's own tree, for its tree arms
    assert scorer.alternatives_for(large) == ["sfx"]
    assert scorer.alternatives_for(small) == ["pld", "sfx"]

    tree = Proposal([7, 9, 8, 10, 11, 12], parents=[-1, -1, 0, 1, 2, 0])  # first path 7, 8, 11
    context = [1, 2, 3]
    samples = scorer.after_round(5, large, 6, tree, len(context), 0.02, [*context, 9, 10, 4])
    scored = {arm: tokens for arm, tokens, _ in samples}
    assert scored[0] == 1.0  # target-only
    assert scored[1] == 1.0 and scored[2] == 1.0  # pld/3 and pld/6: the first path (7 …) missed
    assert scored[4] == 3.0  # pld/6t4 (nodes 7, 9, 8, 10): 9 and 10 accepted, + 1
    assert 5 not in scored  # the pulled arm learns from its own round


def test_a_chain_scores_no_tree_arm():
    from services.controller.domain import Proposal

    arms = [*ARMS, Arm.tree("local", "pld", 6, 8)]
    scorer = CounterfactualScorer(arms, costs(), {"local": {"pld", "sfx"}})
    scorer.after_round(2, ARMS[2], 6, Proposal([7, 8, 9]), 3, 0.02, [1, 2, 3])
    assert all(4 not in pending.arms for pending in scorer.pending)
    assert any(1 in pending.arms for pending in scorer.pending)  # pld/3 from pld/6's chain


def test_drafts_of_a_host_free_to_ask_are_scored_in_a_target_only_round():
    from services.controller.domain import Proposal

    arms = [*ARMS, Arm.drafted("inproc", "sfx", 6)]
    scorer = CounterfactualScorer(arms, costs(), {"local": {"pld", "sfx"}, "inproc": {"sfx"}})
    assert scorer.score_drafters["inproc"] == ["sfx"]
    side = {"inproc": Proposal([], alternatives={"sfx": [4, 5, 6]})}
    samples = scorer.after_round(0, TARGET_ONLY_ARM, 0, Proposal([]), 1, 0.012, [1, 4], side_drafts=side)
    assert samples == []  # target-only played: no sample for itself; the side draft is not decided yet
    context = [1, 4, 5, 9]
    assert scorer.resolve(context) == [(4, 3.0, pytest.approx(costs().seconds(3, "inproc/sfx")))]
