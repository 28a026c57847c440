"""A goodness-of-fit check for sampled outputs of any length against the target's own sampling.

Each output token is placed by its rank in the target's (processed) distribution given everything before
it: rank 1, 2, 3 or beyond. The expected count of a rank is the sum, over all sampled positions, of the
probability of the token of that rank there, and a Pearson chi-square compares the counts. Under the
target's sampling the counts are sums of independent Bernoulli draws, so the test holds its significance
(conservatively); speculative decoding that skews acceptance moves mass between ranks, which it detects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from banditspec.sampling import SamplingParams, probabilities

RANKS = 3  # ranks 1..RANKS, then one bin for the rest


@dataclass
class RankCounts:
    observed: np.ndarray = field(default_factory=lambda: np.zeros(RANKS + 1))
    expected: np.ndarray = field(default_factory=lambda: np.zeros(RANKS + 1))
    positions: int = 0

    def add(self, probs: torch.Tensor, token: int) -> None:
        if float(probs[token]) <= 0.0:
            raise AssertionError(f"token {token} has probability 0 under the target's sampling")
        order = torch.argsort(probs, descending=True, stable=True)
        top = probs[order[:RANKS]].double().numpy()
        self.expected[: len(top)] += top
        self.expected[RANKS] += max(0.0, 1.0 - float(top.sum()))
        rank = int((order == token).nonzero()[0, 0])
        self.observed[min(rank, RANKS)] += 1
        self.positions += 1

    def pvalue(self) -> float:
        keep = self.expected >= 5  # a bin expected fewer than 5 times joins the last kept one
        observed, expected = self.observed[keep].tolist(), self.expected[keep].tolist()
        observed[-1] += float(self.observed[~keep].sum())
        expected[-1] += float(self.expected[~keep].sum())
        if len(observed) < 2:
            raise AssertionError("too few positions for a meaningful test")
        scale = sum(observed) / sum(expected)
        return float(stats.chisquare(observed, [e * scale for e in expected]).pvalue)


def conditionals(model, prompt: list[int], output: list[int], params: SamplingParams) -> list[torch.Tensor]:
    """The target's processed distribution before each output token, from one forward."""
    with torch.inference_mode():
        logits = model(torch.tensor([[*prompt, *output]])).logits[0]
    start = len(prompt) - 1
    return [probabilities(logits[start + i], params) for i in range(len(output))]


def rank_counts(model, prompt: list[int], outputs: list[list[int]], params: SamplingParams) -> RankCounts:
    counts = RankCounts()
    for output in outputs:
        for probs, token in zip(conditionals(model, prompt, output, params), output, strict=True):
            counts.add(probs, token)
    return counts


def biased(probs: torch.Tensor, total_variation: float) -> torch.Tensor:
    """`probs` with `total_variation` of mass (at most the top token's) moved from its top token to its second."""
    order = torch.argsort(probs, descending=True, stable=True)
    moved = min(total_variation, float(probs[order[0]]))
    out = probs.clone()
    out[order[0]] -= moved
    out[order[1]] += moved
    return out
