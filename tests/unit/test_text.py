"""Incremental detokenisation with stop strings (TextStream), on the tiny word-level tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.controller.text import TextStream


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def feed(stream: TextStream, chunks: list[list[int]]) -> tuple[list[int], str]:
    kept_all, text = [], ""
    for chunk in chunks:
        if stream.stopped:
            break
        kept, delta = stream.add(chunk)
        kept_all += kept
        text += delta
    return kept_all, text + stream.finish()


def test_tokenizer_round_trip(tok):
    assert tok.decode(ids(tok, "the cat sat on a mat")) == "the cat sat on a mat"


def test_no_stop_strings_releases_everything(tok):
    stream = TextStream(tok, [])
    kept, delta = stream.add(ids(tok, "the cat"))
    assert kept == ids(tok, "the cat") and delta == "the cat"
    kept, delta = stream.add(ids(tok, "sat"))
    assert delta == " sat"
    assert stream.finish() == ""
    assert not stream.stopped


def test_stop_string_cuts_tokens_and_text(tok):
    stream = TextStream(tok, ["sat"])
    kept, text = feed(stream, [ids(tok, "the cat sat on a mat")])
    assert stream.stopped
    # Tokens are kept up to the one completing the stop string; the text ends before it.
    assert kept == ids(tok, "the cat sat")
    assert stream.ids == ids(tok, "the cat sat")
    assert stream.text == "the cat "
    assert text == "the cat "


def test_stop_string_arriving_token_by_token(tok):
    stream = TextStream(tok, ["sat"])
    deltas = []
    for token in ids(tok, "the cat sat on"):
        if stream.stopped:
            break
        kept, delta = stream.add([token])
        deltas.append((kept, delta))
    assert stream.stopped
    assert [d for _, d in deltas] == ["the", " cat", " "]
    assert deltas[-1][0] == ids(tok, "sat")
    assert stream.finish() == ""


def test_partial_stop_prefix_is_held_back_then_released(tok):
    stream = TextStream(tok, ["cat sat"])
    assert stream.add(ids(tok, "the"))[1] == "the"
    # "cat" could start "cat sat": held back.
    kept, delta = stream.add(ids(tok, "cat"))
    assert kept == ids(tok, "cat")
    assert delta == " "
    # "dog" settles it: not the stop string, the held text comes out.
    kept, delta = stream.add(ids(tok, "dog"))
    assert delta == "cat dog"
    assert stream.finish() == ""
    assert stream.text == "the cat dog"


def test_partial_stop_prefix_completed_is_never_emitted(tok):
    stream = TextStream(tok, ["cat sat"])
    emitted = stream.add(ids(tok, "the"))[1] + stream.add(ids(tok, "cat"))[1]
    kept, delta = stream.add(ids(tok, "sat on"))
    assert stream.stopped
    assert kept == ids(tok, "sat")
    assert emitted + delta + stream.finish() == "the "


def test_held_back_prefix_comes_out_at_finish(tok):
    stream = TextStream(tok, ["mat x"])
    _kept, delta = stream.add(ids(tok, "a mat"))
    assert delta == "a "
    assert not stream.stopped
    assert stream.finish() == "mat"


def test_earliest_of_several_stop_strings_wins(tok):
    stream = TextStream(tok, ["mat", "cat"])
    kept, text = feed(stream, [ids(tok, "the cat sat on a mat")])
    assert kept == ids(tok, "the cat")
    assert text == "the "


def test_empty_stop_string_is_ignored(tok):
    stream = TextStream(tok, [""])
    _kept, text = feed(stream, [ids(tok, "the cat")])
    assert not stream.stopped and text == "the cat"


def test_special_tokens_are_skipped_in_text(tok):
    stream = TextStream(tok, [])
    kept, text = feed(stream, [[*ids(tok, "the cat"), tok.eos_token_id]])
    assert kept[-1] == tok.eos_token_id
    assert text == "the cat"


WORD_POOL = ["the", "cat", "sat", "on", "a", "mat", "dog"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORD_POOL), min_size=1, max_size=14),
    cuts=st.lists(st.integers(1, 4), min_size=1, max_size=14),
    stop_words=st.lists(st.sampled_from(WORD_POOL), min_size=1, max_size=2),
    trim=st.tuples(st.integers(0, 2), st.integers(0, 2)),
)
def test_stream_properties(tok, words, cuts, stop_words, trim):
    stop = " ".join(stop_words)
    stop = stop[trim[0] : len(stop) - trim[1]] or stop
    all_ids = ids(tok, " ".join(words))
    chunks, position = [], 0
    for size in cuts * len(all_ids):
        if position >= len(all_ids):
            break
        chunks.append(all_ids[position : position + size])
        position += size

    stream = TextStream(tok, [stop])
    emitted, kept_all = "", []
    full_text = tok.decode(all_ids)
    for chunk in chunks:
        if stream.stopped:
            break
        kept, delta = stream.add(chunk)
        kept_all += kept
        emitted += delta
        # Whatever is released is final: never a stop string, never taken back.
        assert stop not in emitted
        assert full_text.startswith(emitted)
    emitted += stream.finish()

    hit = full_text.find(stop)
    if hit < 0:
        assert not stream.stopped
        assert kept_all == all_ids
        assert emitted == full_text
    else:
        assert stream.stopped
        assert emitted == full_text[:hit] == stream.text
        # The kept tokens end with the one that completes the stop string.
        assert stop in tok.decode(kept_all)
        assert stop not in tok.decode(kept_all[:-1])
        assert kept_all == all_ids[: len(kept_all)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "stop", "end"]), min_size=150, max_size=400),
    chunk=st.integers(min_value=1, max_value=7),
)
def test_long_answers_decode_the_same_as_a_whole(tok, words, chunk):
    """Whether or not the tokenizer lets the stream settle a prefix (this word-level one joins words
    with spaces, so it never does), the text must equal decoding everything."""
    token_ids = ids(tok, " ".join(words))
    stream = TextStream(tok, ["cat sat on a mat stop end the"])  # a long stop string, rarely hit
    kept, text = feed(stream, [token_ids[i : i + chunk] for i in range(0, len(token_ids), chunk)])
    expected = tok.decode(kept, skip_special_tokens=True)
    if not stream.stopped:
        assert stream.text == text == expected
