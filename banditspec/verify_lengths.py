"""Which forward length to run for a verify of n tokens, from the target's measured forward times.

On a CPU a forward's cost is not monotone in its length: the matrix kernels are blocked, so on the
reference machine (float32) 2 and 3 tokens cost 107 and 139 ms but 4 tokens 90 ms. Padding a verify of
n tokens with dummy tokens up to the cheapest length ≥ n costs nothing in output (attention is causal:
positions < n never see the padding, which is then cropped from the cache) and saves that time, the
way CUDA-graph servers pad a batch to a captured size. On a GPU the curve is flat and nothing is padded.
"""

from __future__ import annotations

MIN_SAVING = 0.05  # pad only for a clear win over timing noise


def padded_lengths(forward_seconds: list[float], min_saving: float = MIN_SAVING) -> list[int]:
    """lengths[n - 1]: the forward length to run for n tokens (n itself past the measured range)."""
    lengths = []
    for n in range(1, len(forward_seconds) + 1):
        best = min(range(n, len(forward_seconds) + 1), key=lambda j: (forward_seconds[j - 1], j))
        keep = forward_seconds[best - 1] > (1.0 - min_saving) * forward_seconds[n - 1]
        lengths.append(n if keep else best)
    return lengths


def padded_length(lengths: list[int], n: int) -> int:
    return lengths[n - 1] if 1 <= n <= len(lengths) else n


def effective_forward_seconds(forward_seconds: list[float], lengths: list[int]) -> list[float]:
    """[n-1]: what verifying n tokens costs once padded (the measured forward of the padded length)."""
    return [forward_seconds[padded_length(lengths, n) - 1] for n in range(1, len(forward_seconds) + 1)]


def filled_gamma(lengths: list[int], gamma: int) -> int:
    """γ for a model-free drafter: the target verifies padded_length(γ + 1) tokens anyway, so the draft
    may as well fill them (its extra tokens cost nothing to propose or to verify). A tree's node budget
    fills the same way."""
    return padded_length(lengths, gamma + 1) - 1 if gamma > 0 else gamma
