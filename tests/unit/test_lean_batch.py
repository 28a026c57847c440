"""The batched lean forward: rows of different cached lengths and feed sizes in one pass give each row
the logits it would get alone, leave each cache as a lone feed would, and a row's own mask and positions
carry a token tree (each node sees its ancestors at its depth)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from banditspec.lean_llama import (
    MKL_PACK_SIZES,
    NARROW_SIZES,
    Feed,
    LeanCache,
    LeanLlama,
    mkl_pack,
    mkl_product,
    narrow_product,
    narrow_table,
    pack_weight,
    packed_product,
    padded_sizes,
    slot_width,
)
from banditspec.models import load_causal_lm

TOLERANCE = {"atol": 2e-5, "rtol": 2e-5}


@pytest.fixture(scope="module", params=["folded", "fused", "narrow", "packed", "mkl", "padded", "pooled"])
def lean(tiny_models, request):
    """Every path in float32: folded attention (float32's), the fused kernel with one-row products as `mv` (half
    precision's), every product of 1-64 tokens as weight × inputsᵀ or through packed weights (what
    `calibrate_narrow` may choose), every product padded to a size MKL packed the weights for, and caches as
    slots of one pool, attended as one matrix (a target's); there a test's lone and batched caches alternate,
    so a forward's slots have gaps."""
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    model = LeanLlama(loaded.model, loaded.max_context, pooled=request.param == "pooled")
    model.fused = model.half_vectors = request.param == "fused"
    if request.param == "narrow":
        model.narrow = [count > 0 for count in range(65)]
    if request.param == "packed":  # every product through weights packed for oneDNN
        assert model.pack_products([count > 0 for count in range(65)])
    if request.param == "mkl":  # every product through weights packed by MKL for 4, 8, 16 or 64 tokens
        assert model.pack_mkl([4, 8, 16, 64])
    if request.param == "padded":  # every product padded with zero rows to a multiple of 8
        model.padded_to = [-(-count // 8) * 8 for count in range(65)]
    return model, tiny_models.vocab_size


def ids(generator: torch.Generator, vocab: int, count: int) -> list[int]:
    return torch.randint(3, vocab, (count,), generator=generator).tolist()


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(1, 9), st.sampled_from(["all", "last", "none"])),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 1000),
)
def test_a_batch_gives_every_row_its_lone_logits(lean, rows, seed):
    model, vocab = lean
    generator = torch.Generator().manual_seed(seed)
    alone, batched, feeds = [], [], []
    for cached, fed, wanted in rows:
        context, new = ids(generator, vocab, cached), ids(generator, vocab, fed)
        solo, shared = model.new_cache(), model.new_cache()
        model.forward(context, solo)
        model.forward(context, shared)
        alone.append((model.forward(new, solo), solo))
        feeds.append(Feed(shared, new, wanted))
        batched.append(shared)
    outputs = model.forward_batch(feeds)
    for (expected, solo), got, feed, shared in zip(alone, outputs, feeds, batched, strict=True):
        assert shared.length == solo.length
        torch.testing.assert_close(shared.keys[:, :, : shared.length], solo.keys[:, :, : solo.length], **TOLERANCE)
        if feed.logits == "none":
            assert got is None
            continue
        assert got is not None
        torch.testing.assert_close(got, expected if feed.logits == "all" else expected[-1:], **TOLERANCE)


def test_a_row_carries_a_token_tree(lean):
    """Tree a → (b, c): with the ancestor mask and depth positions, c's logits are those of the chain a, c."""
    model, vocab = lean
    generator = torch.Generator().manual_seed(7)
    context, (a, b, c) = ids(generator, vocab, 12), ids(generator, vocab, 3)
    chain = model.new_cache()
    model.forward(context, chain)
    expected = model.forward([a, c], chain)

    tree = model.new_cache()
    model.forward(context, tree)
    start = tree.length
    mask = torch.ones(3, start + 3, dtype=torch.bool)
    mask[0, start + 1 :] = False  # a sees itself
    mask[1, start + 2] = False  # b sees a and itself
    mask[2, start + 1] = False  # c sees a and itself, not its sibling b
    (got,) = model.forward_batch([Feed(tree, [a, b, c], "all", positions=[start, start + 1, start + 1], mask=mask)])
    assert got is not None
    torch.testing.assert_close(got[0], expected[0], **TOLERANCE)
    torch.testing.assert_close(got[2], expected[1], **TOLERANCE)


def test_bad_rows_are_refused(lean):
    model, _ = lean
    with pytest.raises(ValueError, match="at least one token"):
        model.forward_batch([Feed(model.new_cache(), [])])
    with pytest.raises(ValueError, match="mask must be"):
        model.forward_batch([Feed(model.new_cache(), [3, 4], mask=torch.ones(1, 2, dtype=torch.bool))])


def test_batches_are_measured_by_their_rows_and_tokens(lean):
    model, _ = lean
    measured = model.measure_batches(shapes=((4, 1), (2, 8), (3, 8)), context=12, repeats=1)
    assert set(measured) == {(4, 4), (2, 16), (3, 24)} and all(seconds > 0 for seconds in measured.values())


def test_a_size_takes_the_choice_measured_at_or_above_it():
    table = narrow_table({2: 1.5, 4: 1.1, 8: 0.9, 32: 0.8, 48: 1.05})
    assert len(table) == 49
    assert not any(table[:5])  # one token never; 2-4 lost
    assert all(table[5:33])  # 5-8 take 8's win, 9-32 take 32's
    assert not any(table[33:])  # 33-48 take 48's loss


def test_one_token_goes_narrow_only_where_one_token_won():
    assert not narrow_table({2: 0.5})[1]  # unmeasured: F.linear
    assert not narrow_table({1: 1.2, 2: 0.5})[1]
    table = narrow_table({1: 0.5, 2: 1.5})
    assert table[1] and not table[2]


def test_one_row_as_two_gives_one_rows_product():
    generator = torch.Generator().manual_seed(0)
    weight, inputs = torch.randn(48, 16, generator=generator), torch.randn(1, 16, generator=generator)
    product = narrow_product(inputs, weight)
    assert product.shape == (1, 48) and product.is_contiguous()
    torch.testing.assert_close(product, inputs @ weight.T)


def test_calibration_times_every_size_and_sets_the_table(tiny_models):
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    model = LeanLlama(loaded.model, loaded.max_context)
    ratios = model.calibrate_narrow(repeats=1)
    assert sorted(ratios) == sorted(NARROW_SIZES) and all(ratio > 0 for ratio in ratios.values())
    assert model.narrow == narrow_table(ratios)
    assert len(model.padded_to) == max(NARROW_SIZES) + 1
    assert all(model.padded_to[count] in NARROW_SIZES and model.padded_to[count] >= count for count in range(1, 65))
    # an MKL pack per size it was timed at, kept where it was that size's fastest way and some count runs there
    assert sorted(model.mkl_ratios) == [size for size in MKL_PACK_SIZES if size in NARROW_SIZES]
    won = {size for size, ratio in model.mkl_ratios.items() if ratio < 1.0 and size in model.padded_to}
    assert set(model.mkl_packs) == won
    # packed for oneDNN where that was the fastest way (MKL's packs not faster), and the copies kept only then
    assert sorted(model.packed_ratios) == sorted(NARROW_SIZES)
    wins = {size for size, ratio in model.packed_ratios.items() if ratio <= 1.0}
    marked = [count > 0 and model.padded_to[count] in wins - set(model.mkl_packs) for count in range(65)]
    assert marked == (model.packed or [False] * 65)
    assert bool(model.packed_weights) == any(marked)


def test_calibration_without_packing_keeps_no_packed_copies(tiny_models):
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    model = LeanLlama(loaded.model, loaded.max_context)
    model.calibrate_narrow(sizes=(1, 2, 8), repeats=1, pack=False)
    assert model.packed == [] and model.packed_weights == {} and model.packed_ratios == {}
    assert model.mkl_packs == {} and model.mkl_ratios == {}


def test_a_packed_weight_gives_the_plain_product():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 16, generator=generator)
    packed = pack_weight(weight)
    assert packed is not None  # torch's CPU build has oneDNN
    for rows in (1, 3, 17):
        inputs = torch.randn(rows, 16, generator=generator)
        torch.testing.assert_close(packed_product(inputs, packed), inputs @ weight.T)


def test_an_mkl_pack_gives_the_plain_product():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator)
    for size in (1, 3, 8, 24):
        packed = mkl_pack(weight, size)
        assert packed is not None  # torch's CPU build has MKL
        inputs = torch.randn(size, 64, generator=generator)
        torch.testing.assert_close(mkl_product(inputs, packed, weight, size), inputs @ weight.T)


def test_a_size_pads_to_the_fastest_measured_size_at_or_above_it():
    table = padded_sizes({1: 3.0, 2: 2.0, 4: 4.0, 8: 3.5, 16: 3.5, 24: 9.0})
    assert table[:9] == [0, 2, 2, 8, 8, 8, 8, 8, 8]  # 1 pads to 2; 3-8 to 8 (a tie goes to the smaller size)
    assert table[9:17] == [16] * 8 and table[17:] == [24] * 8  # only 24 is at or above 17
    assert padded_sizes({}) == []
    for count in range(1, 25):  # a padded size pads to itself
        assert table[table[count]] == table[count]


def copied(model: LeanLlama, cache: LeanCache) -> LeanCache:
    """A cache of `model` holding what `cache` holds."""
    alone = model.new_cache()
    alone.keys[:, :, : cache.length] = cache.keys[:, :, : cache.length]
    alone.values[:, :, : cache.length] = cache.values[:, :, : cache.length]
    alone.length = cache.length
    return alone


def test_chains_in_one_pool_are_attended_as_one_matrix(tiny_models):
    """The slot path is taken where it applies (chains of the pool's caches, their slots at most half empty)
    and gives each row its lone logits; a tree row, a foreign cache or a sparse range go row by row."""
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    model = LeanLlama(loaded.model, loaded.max_context, pooled=True)
    generator = torch.Generator().manual_seed(5)
    caches = [model.new_cache() for _ in range(12)]  # past the pool's first 8 slots: it grows
    assert [cache.slot for cache in caches] == list(range(12))
    for index, cache in enumerate(caches):
        model.forward(ids(generator, tiny_models.vocab_size, 3 + index), cache)
    taken = []
    original = model._attend_slots

    def spy(*args):
        taken.append(args[-1])
        return original(*args)

    model._attend_slots = spy  # type: ignore[method-assign]
    rows = [caches[i] for i in (2, 3, 5)]  # slots 2..5: one gap
    new = [ids(generator, tiny_models.vocab_size, count) for count in (1, 4, 2)]
    solo = LeanLlama(loaded.model, loaded.max_context)
    expected = [solo.forward(tokens, copied(solo, cache)) for cache, tokens in zip(rows, new, strict=True)]
    outputs = model.forward_batch([Feed(cache, tokens) for cache, tokens in zip(rows, new, strict=True)])
    assert len(taken) == len(model.layers) and taken[0].span == 4 and taken[0].width == 4
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE)
    # A long draft beside one-token rows: padding every slot to its width would cost more than it alone.
    rows = [caches[i] for i in (6, 7, 8, 9)]
    new = [ids(generator, tiny_models.vocab_size, count) for count in (1, 8, 1, 1)]
    expected = [solo.forward(tokens, copied(solo, cache)) for cache, tokens in zip(rows, new, strict=True)]
    taken.clear()
    outputs = model.forward_batch([Feed(cache, tokens) for cache, tokens in zip(rows, new, strict=True)])
    assert taken[0].width == 1 and taken[0].alone == [1]
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE)
    taken.clear()
    model.forward_batch([Feed(caches[0], [5]), Feed(caches[11], [6])])  # slots 0 and 11: mostly empty
    tree = torch.ones(2, caches[1].length + 2, dtype=torch.bool)
    model.forward_batch([Feed(caches[1], [5, 6], mask=tree), Feed(caches[4], [7])])
    model.forward_batch([Feed(caches[6], [5]), Feed(solo.new_cache(), [6])])
    assert taken == []
    del caches[3], rows  # a collected cache's slot is free again, and the lowest free is taken first
    assert model.new_cache().slot == 3


def test_a_slot_batch_is_as_wide_as_pays():
    assert slot_width([1] * 8, 8) == 1 and slot_width([4] * 8, 8) == 4
    assert slot_width([7, 1, 1, 3, 1, 2, 1, 1], 8) == 1  # three rows alone beat padding eight slots to 7
    assert slot_width([2, 2, 2, 2, 2, 2, 2, 7], 8) == 2
    assert slot_width([1, 4, 2], 3) == 4  # few rows: padding is cheap


def test_a_slot_is_released_without_the_pools_lock(tiny_models):
    """A cache collected by a garbage collection that runs inside the pool's growth (which holds the lock)
    releases its slot on that same thread: releasing must not wait for the lock."""
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    model = LeanLlama(loaded.model, loaded.max_context, pooled=True)
    assert model.pool is not None
    cache = model.new_cache()
    with model.pool._lock:
        del cache  # would deadlock if releasing took the lock
    assert model.new_cache().slot == 0
