"""Warm starts: each request's bandit begins from what recent requests at a similar load learnt.

A per-request bandit starts from nothing, and UCBSpec's radius keeps its pulls near uniform for its first
50–130 rounds. Requests at a similar load face the same costs (under batching a long draft costs more as
load grows), so the controller keeps, per load (requests running, in powers of two) and arm, a moving
average of the normalised reward that finished requests measured. A new request starts each arm with that
mean as a prior worth at most `weight` pulls: enough to skip most of the exploration, few enough that the
request's own text takes over within a few rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

PRIOR_WEIGHT = 4.0  # pulls a prior is worth, at most
LEARNING_RATE = 0.2  # how fast an arm's prior follows finished requests


def load_bucket(running: int) -> int:
    """1, 2, 3–4, 5–8, …: requests at a similar load share priors."""
    return max(1, running - 1).bit_length()


@dataclass
class _Prior:
    mean: float
    requests: int


class ArmPriors:
    def __init__(self, weight: float = PRIOR_WEIGHT, rate: float = LEARNING_RATE) -> None:
        self.weight = weight
        self.rate = rate
        self._priors: dict[tuple[int, str], _Prior] = {}

    def for_arms(self, running: int, arms: list[str]) -> dict[int, tuple[float, float]]:
        """arm index → (mean, weight) for the arms with a prior at this load."""
        bucket = load_bucket(running)
        out = {}
        for index, name in enumerate(arms):
            prior = self._priors.get((bucket, name))
            if prior is not None:
                out[index] = (prior.mean, min(self.weight, float(prior.requests)))
        return out

    def learn(self, running: int, means: dict[str, float]) -> None:
        """A finished request's mean normalised reward per arm it observed."""
        bucket = load_bucket(running)
        for name, mean in means.items():
            prior = self._priors.get((bucket, name))
            if prior is None:
                self._priors[(bucket, name)] = _Prior(mean, 1)
            else:
                prior.mean += self.rate * (mean - prior.mean)
                prior.requests += 1
