"""Prompt lookup drafting on toy token lists, against a brute-force reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditspec.sampling import SamplingParams
from services.draft.drafters.base import DraftSession, ServiceSettings
from services.draft.drafters.prompt_lookup import PromptLookupDrafter, PromptLookupOptions
from services.draft.specs import DrafterSpec


def session(context: list[int]) -> DraftSession:
    return DraftSession(list(context), SamplingParams(), seed=0)


def propose(context: list[int], num_tokens: int, min_ngram: int = 1, max_ngram: int = 3) -> list[int]:
    drafter = PromptLookupDrafter("pld", min_ngram, max_ngram, scaled=False)
    proposal = drafter.propose(session(context), num_tokens)
    assert proposal.probs is None  # deterministic draft
    return proposal.token_ids


def reference(context: list[int], num_tokens: int, min_ngram: int, max_ngram: int) -> list[int]:
    """Longest suffix n-gram (max..min) with an earlier occurrence followed by a token; latest such
    occurrence; continue with what followed it."""
    if num_tokens <= 0:
        return []
    length = len(context)
    for n in range(max_ngram, min_ngram - 1, -1):
        if n >= length:
            continue
        suffix = context[length - n :]
        for start in range(length - n - 1, -1, -1):  # start + n < length: not the suffix itself
            if context[start : start + n] == suffix:
                return context[start + n : start + n + num_tokens]
    return []


def test_continues_the_longest_matching_ngram():
    # Suffix (1, 2, 3): its earlier occurrence is followed by 9; the bigram (2, 3) alone also
    # occurs later, followed by 7 — the longer match wins.
    context = [1, 2, 3, 9, 8, 2, 3, 7, 5, 1, 2, 3]
    assert propose(context, 2) == [9, 8]


def test_uses_the_latest_earlier_occurrence():
    context = [4, 5, 1, 4, 5, 2, 4, 5, 3, 0, 4, 5]
    assert propose(context, 1) == [3]
    assert propose(context, 3) == [3, 0, 4]


def test_falls_back_to_shorter_ngrams():
    context = [1, 2, 3, 7, 8, 6, 3]  # (8, 6, 3) and (6, 3) never occurred before; (3,) did
    assert propose(context, 2) == [7, 8]


def test_never_matches_the_suffix_itself():
    assert propose([1, 2, 3], 3) == []
    assert propose([5], 2) == []
    # The suffix (7,) matches the earlier 7 at index 0, which is followed by the suffix's 7.
    assert propose([7, 7], 3) == [7]


def test_empty_proposal_when_nothing_matches():
    assert propose([1, 2, 3, 4, 5, 6], 4) == []


def test_proposal_is_cut_at_the_end_of_the_context():
    context = [1, 2, 9, 1, 2]
    assert propose(context, 10) == [9, 1, 2]


def test_zero_tokens_requested():
    assert propose([1, 2, 1, 2], 0) == []


def test_min_ngram_excludes_short_matches():
    context = [1, 5, 6, 2, 3, 1]  # only the unigram (1,) matches
    assert propose(context, 2, min_ngram=1) == [5, 6]
    assert propose(context, 2, min_ngram=2, max_ngram=3) == []


def test_invalid_ngram_range():
    with pytest.raises(ValueError):
        PromptLookupDrafter("pld", 0, 3)
    with pytest.raises(ValueError):
        PromptLookupDrafter("pld", 3, 2)


def test_incremental_growth_matches_a_fresh_index():
    drafter = PromptLookupDrafter("pld", 1, 3, scaled=False)
    growing = session([1, 2, 3])
    steps = [[4, 1, 2], [3], [5, 1, 2, 3], [4], [9, 9, 9, 1]]
    for new in steps:
        growing.context.extend(new)
        got = drafter.propose(growing, 4).token_ids
        assert got == drafter.propose(session(growing.context), 4).token_ids
        assert got == reference(growing.context, 4, 1, 3)


@settings(max_examples=300, deadline=None)
@given(
    context=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    num_tokens=st.integers(0, 6),
    ngrams=st.tuples(st.integers(1, 4), st.integers(0, 3)),
)
def test_matches_brute_force_reference(context, num_tokens, ngrams):
    min_ngram, extra = ngrams
    max_ngram = min_ngram + extra
    assert propose(context, num_tokens, min_ngram, max_ngram) == reference(context, num_tokens, min_ngram, max_ngram)


@settings(max_examples=150, deadline=None)
@given(
    chunks=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), min_size=1, max_size=8),
    num_tokens=st.integers(1, 5),
)
def test_incremental_context_matches_reference_after_every_chunk(chunks, num_tokens):
    drafter = PromptLookupDrafter("pld", 1, 3, scaled=False)
    growing = session([])
    for chunk in chunks:
        growing.context.extend(chunk)
        assert drafter.propose(growing, num_tokens).token_ids == reference(growing.context, num_tokens, 1, 3)


def test_draft_length_scales_with_the_matched_ngram():
    """A match of n < max_ngram tokens proposes at most max(1, 2(n - 1)); a max_ngram match up to γ."""
    drafter = PromptLookupDrafter("pld", 1, 4)
    continuation = [20, 21, 22, 23, 24, 25, 26, 27]

    def proposal(context: list[int]) -> list[int]:
        return drafter.propose(DraftSession(context, SamplingParams(), 0), 8).token_ids

    assert proposal([1, *continuation, 1]) == [20]  # 1-gram match
    assert proposal([2, 1, *continuation, 3, 1]) == [20]
    assert proposal([2, 1, *continuation, 2, 1]) == [20, 21]  # 2-gram
    assert proposal([3, 2, 1, *continuation, 3, 2, 1]) == [20, 21, 22, 23]  # 3-gram
    assert proposal([4, 3, 2, 1, *continuation, 4, 3, 2, 1]) == continuation  # 4-gram = max: up to γ


# spec ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pld=prompt_lookup", PromptLookupOptions()),
        ("pld=prompt_lookup:1-3:fixed", PromptLookupOptions(1, 3, fixed_length=True)),
        ("pld=prompt_lookup:3", PromptLookupOptions(3, 3)),
        ("pld=prompt_lookup:3-", PromptLookupOptions(3, 3)),
        ("pld=prompt_lookup:fixed", PromptLookupOptions(fixed_length=True)),
        ("pld=prompt_lookup:0-3", PromptLookupOptions(None, 3)),  # a size of 0 took the default, and still does
    ],
)
def test_spec(text, expected):
    assert DrafterSpec.parse(text).options == expected


@pytest.mark.parametrize(
    "text",
    ["p=prompt_lookup:40", "p=prompt_lookup:3-2", "p=prompt_lookup:0-1", "p=prompt_lookup:1-3:no", "p=prompt_lookup:x"],
)
def test_bad_spec(text):
    with pytest.raises(ValueError, match="drafter spec"):
        DrafterSpec.parse(text)


def test_built_with_its_defaults_and_capabilities():
    drafter = DrafterSpec.parse("pld=prompt_lookup").build(ServiceSettings())
    assert isinstance(drafter, PromptLookupDrafter)
    assert (drafter.min_ngram, drafter.max_ngram, drafter.scaled) == (2, 4, True)
    assert (drafter.model_free, drafter.runs_on_worker, drafter.learns_from_outputs, drafter.looks_ahead) == (
        True,
        False,
        False,
        False,
    )
    assert drafter.vocab_size is None and drafter.kind == "prompt_lookup"
    fixed = DrafterSpec.parse("pld=prompt_lookup:1-3:fixed").build(ServiceSettings())
    assert isinstance(fixed, PromptLookupDrafter)
    assert (fixed.min_ngram, fixed.max_ngram, fixed.scaled) == (1, 3, False)
