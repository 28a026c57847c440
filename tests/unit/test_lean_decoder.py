"""The lean draft forward against `transformers`' own forward: the same logits through any sequence of
feeds and crops, with grouped-query attention (the tiny models) and with a shipped pydocs draft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from banditspec.lean_llama import LeanCache, LeanLlama, lean_supported
from banditspec.models import load_causal_lm

PYDOCS_DRAFT = Path(__file__).resolve().parents[2] / "models" / "pydocs" / "draft-s"


def run_both(loaded, lean: LeanLlama, steps: list[tuple[str, int]], vocab: int) -> None:
    """Apply ('feed', n) / ('crop', n) steps to an HF cache and a lean cache; logits must agree at every feed."""
    hf_cache, lean_cache = (
        loaded.new_cache(),
        LeanCache(len(lean.layers), lean.kv_heads, lean.head_dim, lean.dtype, lean.device, capacity=8),
    )
    generator = torch.Generator().manual_seed(len(steps))
    length = 0
    for number, (action, count) in enumerate(steps):
        if action == "crop":
            count = min(count, length)
            if count:
                hf_cache.crop(-count)
                lean_cache.crop(-count)
                length -= count
            assert lean_cache.get_seq_length() == hf_cache.get_seq_length() == length
            continue
        ids = torch.randint(3, vocab, (count,), generator=generator).tolist()
        expected = loaded.forward(ids, hf_cache)
        last_only = number % 2 == 1  # what the drafter asks for: the last position's logits
        got = lean.forward(ids, lean_cache, last_only=last_only)
        torch.testing.assert_close(got, expected[-1:] if last_only else expected, atol=2e-4, rtol=2e-4)
        length += count


@pytest.fixture(scope="module", params=["folded", "fused", "narrow", "packed", "mkl", "padded"])
def tiny(tiny_models, request):
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    lean = LeanLlama(loaded.model, loaded.max_context)
    lean.fused = lean.half_vectors = request.param == "fused"  # half precision's path, at float32 tolerances
    if request.param == "narrow":  # every product of 1-64 tokens as weight × inputsᵀ
        lean.narrow = [count > 0 for count in range(65)]
    if request.param == "packed":  # every product through weights packed for oneDNN
        assert lean.pack_products([count > 0 for count in range(65)])
    if request.param == "mkl":  # every product through weights packed by MKL for 4, 8, 16 or 64 tokens
        assert lean.pack_mkl([4, 8, 16, 64])
    if request.param == "padded":  # every product padded with zero rows to a multiple of 8
        lean.padded_to = [-(-count // 8) * 8 for count in range(65)]
    return loaded, lean, tiny_models.vocab_size


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["feed", "feed", "crop"]), st.integers(1, 7)), min_size=1, max_size=12))
def test_lean_logits_equal_transformers_through_feeds_and_crops(tiny, steps):
    loaded, lean, vocab = tiny
    run_both(loaded, lean, [("feed", 5), *steps], vocab)


def test_cache_grows_past_its_initial_capacity(tiny):
    loaded, lean, vocab = tiny
    run_both(loaded, lean, [("feed", 30), ("feed", 1), ("crop", 3), ("feed", 40), ("feed", 1)], vocab)


def test_shipped_pydocs_draft_matches():
    loaded = load_causal_lm(PYDOCS_DRAFT, device="cpu", dtype="float32")
    run_both(
        loaded,
        LeanLlama(loaded.model, loaded.max_context),
        [("feed", 60), ("feed", 1), ("crop", 1), ("feed", 4)],
        loaded.vocab_size,
    )


def test_context_beyond_the_model_positions_is_refused(tiny):
    _, lean, _ = tiny
    with pytest.raises(ValueError, match="exceeds"):
        lean.forward([3] * (lean.max_positions + 1), lean.new_cache())


def test_other_architectures_fall_back():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    assert not lean_supported(gpt2)
    with pytest.raises(ValueError, match="Llama"):
        LeanLlama(gpt2, 16)


def test_half_precision_takes_the_fused_attention_and_tracks_transformers(tiny_models):
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="bfloat16")
    lean = LeanLlama(loaded.model, loaded.max_context)
    assert lean.fused
    generator = torch.Generator().manual_seed(3)
    hf_cache, lean_cache = loaded.new_cache(), lean.new_cache()
    for count in (9, 1, 4, 1):
        ids = torch.randint(3, tiny_models.vocab_size, (count,), generator=generator).tolist()
        expected = loaded.forward(ids, hf_cache)
        got = lean.forward(ids, lean_cache)
        # bfloat16 keeps ~3 significant digits; different kernels round differently within that
        torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)
