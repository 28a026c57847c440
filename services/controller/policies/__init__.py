"""Bandit policies over arms, one module each. All take rewards normalised to [0, 1]."""

from __future__ import annotations

import numpy as np

from services.controller.policies.base import Policy
from services.controller.policies.exp3 import EXP3Spec
from services.controller.policies.fixed import FixedArm
from services.controller.policies.ucb import UCBSpec
from services.controller.policies.uniform import UniformRandom

POLICIES = ("ucbspec", "ucbspec-cf", "exp3spec", "fixed", "uniform")


def make_policy(name: str, num_arms: int, rng: np.random.Generator) -> Policy:
    if name == "ucbspec":
        return UCBSpec(num_arms)
    if name == "ucbspec-cf":  # fed counterfactual samples too, so the rewards' spread can be measured
        return UCBSpec(num_arms, measured_spread=True)
    if name == "exp3spec":
        return EXP3Spec(num_arms, rng)
    if name == "fixed":
        return FixedArm(num_arms, arm=0)
    if name == "uniform":
        return UniformRandom(num_arms, rng)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


__all__ = ["POLICIES", "EXP3Spec", "FixedArm", "Policy", "UCBSpec", "UniformRandom", "make_policy"]
