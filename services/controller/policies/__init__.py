"""Bandit policies over arms, one module each; all take rewards normalised to [0, 1].

The names are `banditspec.policy_names`' (the API's enum); this registry maps each to its builder.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from banditspec.policy_names import POLICY_WIRE_VALUES
from services.controller.policies.base import Policy
from services.controller.policies.exp3 import EXP3Spec
from services.controller.policies.fixed import FixedArm
from services.controller.policies.ucb import UCBSpec
from services.controller.policies.uniform import UniformRandom

BUILDERS: dict[str, Callable[[int, np.random.Generator], Policy]] = {
    "ucbspec": lambda arms, rng: UCBSpec(arms),
    # fed counterfactual samples too, so the rewards' spread can be measured
    "ucbspec-cf": lambda arms, rng: UCBSpec(arms, measured_spread=True),
    "exp3spec": lambda arms, rng: EXP3Spec(arms, rng),
    "fixed": lambda arms, rng: FixedArm(arms, arm=0),
    "uniform": lambda arms, rng: UniformRandom(arms, rng),
}
POLICIES = tuple(POLICY_WIRE_VALUES)
if set(BUILDERS) != set(POLICIES):
    raise ImportError(f"policy builders {sorted(BUILDERS)} do not match the API's policies {sorted(POLICIES)}")


def make_policy(name: str, num_arms: int, rng: np.random.Generator) -> Policy:
    try:
        build = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return build(num_arms, rng)


__all__ = ["POLICIES", "EXP3Spec", "FixedArm", "Policy", "UCBSpec", "UniformRandom", "make_policy"]
