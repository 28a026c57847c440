"""Warm starts: priors are kept per load and arm, worth a bounded number of pulls, and a request's own
rewards take over; UCBSpec reports its own means without the prior's pseudo-pulls."""

from __future__ import annotations

import pytest

from services.controller.policies import UCBSpec
from services.controller.priors import PRIOR_WEIGHT, ArmPriors, load_bucket


def test_loads_share_priors_in_powers_of_two():
    assert [load_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_priors_follow_finished_requests_at_their_load_only():
    priors = ArmPriors()
    assert priors.for_arms(8, ["a", "b"]) == {}
    priors.learn(8, {"a": 0.5})
    assert priors.for_arms(8, ["b", "a"]) == {1: (0.5, 1.0)}
    assert priors.for_arms(1, ["a"]) == {}  # another load
    for _ in range(20):
        priors.learn(7, {"a": 0.9})  # 7 and 8 share a bucket
    mean, weight = priors.for_arms(8, ["a"])[0]
    assert mean == pytest.approx(0.9, abs=0.01) and weight == PRIOR_WEIGHT


def test_a_prior_skips_exploration_but_not_the_requests_own_rewards():
    policy = UCBSpec(2)
    policy.prior(0, 0.8, 4.0)
    policy.prior(1, 0.2, 4.0)
    assert policy.select() == 0  # no warm-up pull: both arms already have pseudo-pulls
    for _ in range(30):
        policy.update(0, 0.1)  # this request's text: arm 0 pays little
    assert policy.means() == {0: pytest.approx(0.1)}
    assert policy.select() == 1
