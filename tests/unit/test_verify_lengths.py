"""Verify padding: the lengths chosen from a forward-cost curve, and a padded verify deciding exactly
what an unpadded one does (greedy and sampled), with the KV cache left as if nothing was padded."""

from __future__ import annotations

import random

import pytest
import torch

from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from banditspec.verify_lengths import effective_forward_seconds, filled_gamma, padded_length, padded_lengths
from services.target.engine import TargetEngine

# The reference machine's float32 SmolLM2 curve (ms for 1..8 tokens): 2 and 3 tokens cost more than 4.
CPU_CURVE = [0.067, 0.107, 0.139, 0.090, 0.091, 0.098, 0.119, 0.100]


def test_short_verifies_pad_to_the_cheapest_longer_forward():
    lengths = padded_lengths(CPU_CURVE)
    assert lengths == [1, 4, 4, 4, 5, 6, 8, 8]  # 5 (91 ms) is not 5% cheaper than 4 (90 ms)
    assert padded_length(lengths, 2) == 4 and padded_length(lengths, 20) == 20  # past the curve: as is
    assert effective_forward_seconds(CPU_CURVE, lengths)[:3] == [0.067, 0.090, 0.090]


def test_a_flat_or_rising_curve_pads_nothing():
    assert padded_lengths([0.010 + 0.001 * k for k in range(16)]) == list(range(1, 17))
    # within the 5% margin (timing noise): no padding either
    assert padded_lengths([0.050, 0.052, 0.050, 0.060]) == [1, 2, 3, 4]


def test_model_free_gamma_fills_the_padded_positions():
    lengths = padded_lengths(CPU_CURVE)
    assert filled_gamma(lengths, 1) == 3  # 2 tokens → a 4-token forward: 3 draft positions
    assert filled_gamma(lengths, 6) == 7
    assert filled_gamma(lengths, 0) == 0
    assert filled_gamma([], 6) == 6


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_causal_lm(tiny_models.target, device="cpu", dtype="float32")


def _run(engine: TargetEngine, prompt: list[int], drafts: list[list[int]], sampling: SamplingParams):
    engine.open("s", prompt, sampling, seed=7)
    outcomes = []
    for draft in drafts:
        session = engine.sessions.get("s")
        result = engine.verify("s", len(session.context), draft, None)
        outcomes.append((result.verdict.accepted, result.verdict.tokens))
    session = engine.sessions.get("s")
    return outcomes, session.context, session.cache.get_seq_length()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_padded_verify_equals_unpadded(loaded, temperature):
    rng = random.Random(3)
    vocab = loaded.vocab_size
    sampling = SamplingParams(temperature=temperature) if temperature else SamplingParams()
    plain = TargetEngine(loaded)
    padded = TargetEngine(loaded, verify_lengths=[8] * 8)  # every verify of ≤ 8 tokens runs 8
    prompt = [rng.randrange(3, vocab) for _ in range(12)]
    # Drafts of the target's own greedy continuation (accepted) mixed with random ones (rejected).
    drafts = []
    engine = TargetEngine(loaded)
    engine.open("g", prompt, SamplingParams(), seed=0)
    for round_ in range(12):
        session = engine.sessions.get("g")
        guess = engine.verify("g", len(session.context), [], None).verdict.tokens
        drafts.append(guess + [rng.randrange(3, vocab) for _ in range(round_ % 4)])
    with torch.inference_mode():
        expected = _run(plain, prompt, drafts, sampling)
        got = _run(padded, prompt, drafts, sampling)
    assert got == expected
    _outcomes, context, cached = got
    assert cached == len(context) - 1  # the padding and the rejected drafts are cropped
