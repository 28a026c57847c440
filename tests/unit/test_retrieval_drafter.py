"""The retrieval (REST) drafter and its datastore: the suffix array, lookup, the greedy trie path,
the .npz file, `banditspec datastore build`, and loading one into a running stack."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditspec.datastore import SEPARATOR, Datastore, suffix_array
from banditspec.sampling import SamplingParams
from banditspec.training.datastore_build import build_datastore, recorded_outputs
from services.draft.drafters.base import DraftSession, ServiceSettings
from services.draft.drafters.retrieval import RetrievalDrafter, RetrievalOptions
from services.draft.specs import DrafterSpec

documents = st.lists(st.lists(st.integers(0, 3), max_size=12), max_size=5)


def session(context: list[int]) -> DraftSession:
    return DraftSession(context=list(context), sampling=SamplingParams(), seed=0)


def drafter(docs: list[list[int]], **options) -> RetrievalDrafter:
    return RetrievalDrafter("rest", build_datastore(docs, "fp", "test"), **options)


# the suffix array and lookup -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(SEPARATOR, 4), max_size=40))
def test_suffix_array_matches_sorting_the_suffixes(tokens):
    array = np.array(tokens, dtype=np.int32)
    assert suffix_array(array).tolist() == sorted(range(len(tokens)), key=lambda i: tokens[i:])


@settings(max_examples=100, deadline=None)
@given(documents)
def test_build_lays_out_documents_with_separators(docs):
    datastore = build_datastore(docs, "fp", "test")
    expected = [token for doc in docs if doc for token in [*doc, SEPARATOR]]
    assert datastore.tokens.dtype == np.int32 and datastore.tokens.tolist() == expected
    assert datastore.num_documents == sum(1 for doc in docs if doc)
    assert datastore.num_tokens == sum(map(len, docs))
    assert datastore.suffixes.tolist() == sorted(range(len(expected)), key=lambda i: expected[i:])


@settings(max_examples=200, deadline=None)
@given(documents, st.lists(st.integers(0, 3), min_size=1, max_size=4))
def test_lookup_finds_every_occurrence_within_documents(docs, query):
    datastore = build_datastore(docs, "fp", "test")
    expected = sorted(
        sum(len(d) + 1 for d in docs[:k] if d) + i
        for k, doc in enumerate(docs)
        for i in range(len(doc) - len(query) + 1)
        if doc[i : i + len(query)] == query
    )
    assert sorted(datastore.occurrences(query).tolist()) == expected


def test_lookup_never_crosses_a_document_boundary():
    datastore = build_datastore([[1, 2], [3, 4], [2, 3]], "fp", "test")
    assert datastore.occurrences([2, 3]).tolist() == [6]
    assert datastore.occurrences([4, 2]).tolist() == []
    assert datastore.occurrences([5]).tolist() == []


def test_build_rejects_negative_ids():
    with pytest.raises(ValueError, match="token ids"):
        build_datastore([[1, -1, 2]], "fp", "test")


# the drafter -----------------------------------------------------------------------------------


def test_proposes_the_majority_continuation():
    rest = drafter([[1, 2, 3, 4, 5]] * 3 + [[1, 2, 3, 9, 9]])
    assert rest.propose(session([7, 2, 3]), 2).token_ids == [4, 5]
    assert rest.propose(session([7, 2, 3]), 1).token_ids == [4]
    proposal = rest.propose(session([8, 8, 1, 2, 3]), 8)
    assert proposal.token_ids == [4, 5] and proposal.probs is None  # stops where the documents end


def test_prefers_the_longest_matching_suffix():
    rest = drafter([[1, 2, 3, 4]] * 3 + [[7, 2, 3, 8]])
    assert rest.propose(session([7, 2, 3]), 3).token_ids == [8]
    assert rest.propose(session([5, 2, 3]), 3).token_ids == [4]


def test_nothing_to_propose():
    rest = drafter([[1, 2, 3, 4]])
    assert rest.propose(session([1, 2, 3]), 0).token_ids == []
    assert rest.propose(session([4, 1]), 3).token_ids == []  # 4 is never followed by 1
    assert rest.propose(session([3]), 3).token_ids == []  # shorter than min_depth
    assert rest.propose(session([9, 9, 9]), 3).token_ids == []
    assert drafter([]).propose(session([1, 2]), 3).token_ids == []


def test_weak_branches_are_not_proposed():
    # After "1 2 3 4" four continuations have a quarter of the occurrences each: below 0.3.
    rest = drafter([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 4, 7], [1, 2, 3, 4, 8]])
    assert rest.propose(session([2, 3]), 4).token_ids == [4]
    assert drafter([[1, 2, 5], [1, 2, 6], [1, 2, 7], [1, 2, 8]]).propose(session([1, 2]), 4).token_ids == []
    lenient = drafter([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 4, 7], [1, 2, 3, 4, 8]], min_share=0.2)
    assert lenient.propose(session([2, 3]), 4).token_ids == [4, 5]


def test_a_capped_sample_keeps_the_majority():
    # In suffix-array order the 40 occurrences followed by 1 come first: the sample must spread out.
    rest = drafter([[6, 7, 1]] * 40 + [[6, 7, 9]] * 100, max_occurrences=8)
    assert rest.propose(session([6, 7]), 1).token_ids == [9]


def test_reports_its_datastore(tmp_path):
    path = tmp_path / "store.npz"
    build_datastore([[1, 2, 3], [4, 5]], "abc123", "unit test").save(path)
    rest = RetrievalDrafter.load("rest", path, max_depth=8)
    assert rest.vocab_fingerprint == "abc123" and rest.kind == "retrieval"
    assert str(path) in rest.source and "5 tokens" in rest.source and rest.max_depth == 8
    assert (rest.model_free, rest.runs_on_worker, rest.learns_from_outputs) == (True, False, False)
    assert rest.vocab_size is None
    with pytest.raises(ValueError, match="min_depth"):
        RetrievalDrafter.load("rest", path, max_depth=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rest=retrieval:PATH:16", RetrievalOptions("PATH", 16)),
        ("rest=retrieval:PATH", RetrievalOptions("PATH")),
        ("rest=retrieval:C:/data/x.npz", RetrievalOptions("C:/data/x.npz")),  # only a trailing :DIGITS is a depth
        ("rest=retrieval:a:16:8", RetrievalOptions("a:16", 8)),
        ("rest=retrieval:PATH:0", RetrievalOptions("PATH")),  # a depth of 0 took the default, and still does
    ],
)
def test_spec(text, expected):
    assert DrafterSpec.parse(text).options == expected


@pytest.mark.parametrize("text", ["r=retrieval", "r=retrieval:", "r=retrieval::16", "r=retrieval:PATH:300"])
def test_bad_spec(text):
    with pytest.raises(ValueError, match="drafter spec"):
        DrafterSpec.parse(text)


def test_built_from_a_spec(tmp_path):
    path = tmp_path / "store.npz"
    build_datastore([[1, 2, 3], [4, 5]], "abc123", "unit test").save(path)
    default = DrafterSpec.parse(f"rest=retrieval:{path}").build(ServiceSettings())
    assert isinstance(default, RetrievalDrafter) and default.max_depth == 16
    deep = DrafterSpec.parse(f"rest=retrieval:{path}:32").build(ServiceSettings())
    assert isinstance(deep, RetrievalDrafter) and deep.max_depth == 32


# the file --------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    datastore = build_datastore([[1, 2, 3], [], [3, 2, 1, 2]], "abc123", "two docs")
    path = tmp_path / "store.datastore"  # any name: nothing is appended
    datastore.save(path)
    assert path.is_file() and list(tmp_path.iterdir()) == [path]
    loaded = Datastore.load(path)
    assert np.array_equal(loaded.tokens, datastore.tokens) and loaded.tokens.dtype == np.int32
    assert np.array_equal(loaded.suffixes, datastore.suffixes)
    assert (loaded.vocab_fingerprint, loaded.source) == ("abc123", "two docs")
    assert loaded.occurrences([1, 2]).tolist() == datastore.occurrences([1, 2]).tolist()


def test_bad_files_are_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="no datastore file"):
        Datastore.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable datastore"):
        Datastore.load(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, something=np.arange(3))
    with pytest.raises(ValueError, match="not a readable datastore"):
        Datastore.load(other)
    pickled = tmp_path / "pickled.npz"
    good = build_datastore([[1, 2]], "fp", "x")
    np.savez(
        pickled,
        format_version=np.array(1, dtype=np.int32),
        tokens=good.tokens,
        suffixes=good.suffixes,
        vocab_fingerprint=np.array(["fp", None], dtype=object),
        source=np.array("x"),
    )
    with pytest.raises(ValueError, match="not a readable datastore"):
        Datastore.load(pickled)
    broken = tmp_path / "broken.npz"
    np.savez(
        broken,
        format_version=np.array(1, dtype=np.int32),
        tokens=good.tokens,
        suffixes=good.suffixes[:1],
        vocab_fingerprint=np.array("fp"),
        source=np.array("x"),
    )
    with pytest.raises(ValueError, match="not a valid datastore"):
        Datastore.load(broken)


def test_recorded_outputs_accepts_json_lines_and_generate_json(tmp_path):
    path = tmp_path / "outputs.jsonl"
    pretty = json.dumps({"request_id": "r", "token_ids": [4, 5], "stats": {"rounds": 1}}, indent=2)
    empty = json.dumps({"token_ids": []})
    path.write_text(json.dumps({"token_ids": [1, 2, 3]}) + "\n\n" + pretty + "\n" + empty + "\n")
    assert list(recorded_outputs(path)) == [[1, 2, 3], [4, 5], []]
    path.write_text(json.dumps({"token_ids": [1]}) + "\n" + json.dumps({"text": "no ids"}) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        list(recorded_outputs(path))


# the command -----------------------------------------------------------------------------------


def banditspec(*argv: str) -> None:
    """The command line in this process: parser and command as `banditspec` runs them, without a
    second interpreter importing transformers (the stack's processes already start through `-m banditspec.cli`)."""
    from banditspec.cli import build_parser

    args = build_parser().parse_args(list(argv))
    args.func(args)


def test_datastore_build_command(tmp_path, tiny_models, tiny_tokenizer, capsys):
    from banditspec.models import vocab_fingerprint

    corpus = tmp_path / "corpus"
    (corpus / "nested").mkdir(parents=True)
    (corpus / "a.txt").write_text("the cat sat on a mat")
    (corpus / "nested" / "b.txt").write_text("a dog ran to the big red sun")
    (corpus / "skipped.md").write_text("fish swim")
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_text(json.dumps({"token_ids": [7, 8, 9]}) + "\n")
    out = tmp_path / "store.npz"
    banditspec(
        "datastore",
        "build",
        "--tokenizer",
        str(tiny_models.target),
        "--out",
        str(out),
        "--text",
        str(corpus),
        "--outputs",
        str(outputs),
    )
    printed = capsys.readouterr().out
    assert "17 tokens, 3 documents" in printed and "seconds" in printed and str(out) in printed

    datastore = Datastore.load(out)
    assert datastore.vocab_fingerprint == vocab_fingerprint(tiny_tokenizer)
    texts = ("the cat sat on a mat", "a dog ran to the big red sun")
    docs = [*(tiny_tokenizer.encode(text, add_special_tokens=False) for text in texts), [7, 8, 9]]
    assert datastore.tokens.tolist() == [t for doc in docs for t in [*doc, SEPARATOR]]
    assert str(corpus) in datastore.source

    with pytest.raises(SystemExit, match="--text"):
        banditspec("datastore", "build", "--tokenizer", str(tiny_models.target), "--out", str(out))
    with pytest.raises(SystemExit, match="no such file or directory"):
        banditspec(
            "datastore",
            "build",
            "--tokenizer",
            str(tiny_models.target),
            "--out",
            str(out),
            "--text",
            str(tmp_path / "nope"),
        )


# through the services --------------------------------------------------------------------------
