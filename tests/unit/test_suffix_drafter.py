"""Suffix-tree drafting on toy token lists, against a brute-force reference; then once through the
real services, where a second request learns from the first one's answer."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditspec.sampling import SamplingParams
from services.draft.drafters.base import DraftSession, ServiceSettings
from services.draft.drafters.suffix import SuffixDrafter, SuffixOptions, SuffixTrie
from services.draft.specs import DrafterSpec

TOKENS = st.integers(min_value=0, max_value=4)  # a small alphabet, so that patterns repeat
SEQUENCES = st.lists(TOKENS, max_size=40)


def session(context: list[int], prompt_length: int | None = None) -> DraftSession:
    length = len(context) if prompt_length is None else prompt_length
    return DraftSession(list(context), SamplingParams(), seed=0, prompt_length=length)


def finished(drafter: SuffixDrafter, prompt: list[int], output: list[int]) -> None:
    drafter.finish(session(prompt + output, prompt_length=len(prompt)))


def propose(context: list[int], num_tokens: int, drafter: SuffixDrafter | None = None) -> list[int]:
    proposal = (drafter or SuffixDrafter("sfx")).propose(session(context), num_tokens)
    assert proposal.probs is None  # deterministic draft
    return proposal.token_ids


# a brute-force reference: the trie as a Counter of strings ---------------------------------------


def substring_counts(sequences: list[list[int]], depth: int) -> Counter:
    """What the truncated suffix trie holds: every substring of ≤ depth tokens, with its occurrences."""
    counts: Counter = Counter()
    for seq in sequences:
        for start in range(len(seq)):
            for end in range(start + 1, min(start + depth, len(seq)) + 1):
                counts[tuple(seq[start:end])] += 1
    return counts


def trie_counts(trie: SuffixTrie) -> Counter:
    """The strings a trie holds, with their counts, references expanded."""
    counts: Counter = Counter()

    def walk(node, prefix: tuple[int, ...]) -> None:
        if node.children is None:  # a reference: one path, count 1 all along
            assert node.count == 1
            for end in range(node.pos, min(node.limit, len(node.seq))):
                counts[prefix + tuple(node.seq[node.pos : end + 1])] += 1
            return
        assert node is trie.root or node.count >= 2  # canonical: a node seen once is a reference
        assert node.total == sum(child.count for child in node.children.values())
        for token, child in node.children.items():
            counts[(*prefix, token)] += child.count
            walk(child, (*prefix, token))

    walk(trie.root, ())
    return counts


def reference_draft(counts: Counter, context: list[int], num_tokens: int, drafter: SuffixDrafter):
    """(match length, score, tokens) straight from the definition, or None."""
    longest = min(len(context), drafter.max_depth - 1, max(drafter.min_match, drafter.max_depth - num_tokens))

    def children(prefix):
        return {s[-1]: c for s, c in counts.items() if len(s) == len(prefix) + 1 and s[:-1] == prefix}

    for length in range(longest, drafter.min_match - 1, -1):
        prefix = tuple(context[-length:])
        if not children(prefix):
            continue
        tokens, probability, score = [], 1.0, 0.0
        while len(tokens) < num_tokens and (options := children(prefix)):
            token = min(options, key=lambda t: (-options[t], t))
            probability *= options[token] / sum(options.values())
            if probability < drafter.threshold:
                break
            tokens.append(token)
            score += probability
            prefix += (token,)
        return (length, score, tokens) if tokens else None
    return None


def reference_proposals(context: list[int], outputs: list[list[int]], num_tokens: int, drafter: SuffixDrafter):
    """The acceptable drafts: both trees' when their scores tie up to rounding."""
    if num_tokens <= 0:
        return [[]]
    candidates = [
        c
        for c in (
            reference_draft(substring_counts([context], drafter.max_depth), context, num_tokens, drafter),
            reference_draft(substring_counts(outputs, drafter.max_depth), context, num_tokens, drafter),
        )
        if c is not None
    ]
    if not candidates:
        return [[]]
    length, score = max(c[:2] for c in candidates)
    return [c[2] for c in candidates if c[0] == length and c[1] > score - 1e-9]


# examples ----------------------------------------------------------------------------------------


def test_continues_a_repeated_pattern_from_the_prompt():
    assert propose([1, 2, 3, 4, 5, 9, 1, 2, 3], 3) == [4, 5, 9]


def test_prefers_the_longest_match():
    # (2, 3) was followed by 7 and by 4; the longer (1, 2, 3) only by 4.
    assert propose([8, 2, 3, 7, 1, 2, 3, 4, 6, 8, 1, 2, 3], 2) == [4, 6]


def test_follows_the_most_frequent_continuation():
    assert propose([1, 2, 3, 1, 2, 3, 1, 2, 4, 5, 1, 2], 1) == [3]


def test_draft_stops_where_the_history_branches():
    context = [1, 2, 3, 7, 1, 2, 4, 8, 1, 2]  # after (1, 2): 3 or 4, half each
    assert propose(context, 4, SuffixDrafter("sfx", threshold=0.6)) == []
    assert propose(context, 4, SuffixDrafter("sfx", threshold=0.5)) == [3, 7, 1, 2]  # tie: smaller id
    # The path's probability is a product: (5, 6) → 7 is 2/3, then (5, 6, 7) → 1 is 1/2 of that.
    context = [5, 6, 7, 1, 5, 6, 7, 2, 5, 6, 8, 3, 4, 5, 6]
    assert propose(context, 3, SuffixDrafter("sfx", threshold=0.5)) == [7]
    assert propose(context, 3, SuffixDrafter("sfx", threshold=0.3)) == [7, 1, 5]


def test_match_needs_min_match_tokens():
    context = [1, 5, 6, 2, 3, 1]  # only the single token 1 occurred before
    assert propose(context, 3) == []
    assert propose(context, 3, SuffixDrafter("sfx", min_match=1)) == [5, 6, 2]


def test_respects_num_tokens_and_returns_nothing_without_a_match():
    context = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert propose(context, 0) == []
    assert propose(context, 1) == [3]
    assert propose(context, 5) == [3, 4, 5, 6, 7]
    assert propose([1, 2, 3, 4, 5, 6], 4) == []
    assert propose([], 4) == []
    assert propose([1, 2], 4) == []  # the suffix itself is no earlier occurrence


def test_the_continuation_ends_at_max_depth():
    # A match of L tokens leaves max_depth − L tokens of path; the match is cut to make room.
    context = [1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 4, 5, 6]
    assert propose(context, 1, SuffixDrafter("sfx", max_depth=5)) == [9]  # matches (3, 4, 5, 6)
    assert propose(context, 3, SuffixDrafter("sfx", max_depth=5)) == [9, 1, 2]  # matches (5, 6)
    assert propose(context, 6, SuffixDrafter("sfx", max_depth=5, min_match=3)) == [9, 1]


def test_learns_from_finished_outputs_but_not_their_prompts():
    drafter = SuffixDrafter("sfx")
    finished(drafter, prompt=[40, 41, 42, 43], output=[10, 11, 12, 13, 14])
    assert drafter.remembered_tokens == 5
    assert propose([7, 10, 11], 3, drafter) == [12, 13, 14]
    # The prompt part went only to that request's own tree, as in SuffixDecoding.
    assert propose([7, 40, 41], 3, drafter) == []
    assert propose([7, 10, 11], 3) == []  # a fresh drafter has learned nothing


def test_the_longer_match_wins_across_trees():
    drafter = SuffixDrafter("sfx")
    finished(drafter, prompt=[], output=[9, 1, 2, 3, 4])
    assert propose([1, 2, 5, 9, 1, 2], 1, drafter) == [3]  # output: (9, 1, 2); context: only (1, 2)
    assert propose([8, 1, 2, 5, 8, 1, 2], 1, drafter) == [5]  # context: (8, 1, 2); output: only (1, 2)


def test_memory_is_bounded_and_evicts_the_oldest_outputs_first():
    drafter = SuffixDrafter("sfx", memory_tokens=10)
    finished(drafter, [], [1, 2, 3, 4])
    finished(drafter, [], [5, 6, 7, 8])
    assert propose([0, 1, 2], 2, drafter) == [3, 4]
    finished(drafter, [], [20, 21, 22, 23])  # 12 tokens > 10: the first output goes
    assert drafter.remembered_tokens == 8
    assert [list(o) for o in drafter.outputs] == [[5, 6, 7, 8], [20, 21, 22, 23]]
    assert propose([0, 1, 2], 2, drafter) == []
    assert propose([0, 5, 6], 2, drafter) == [7, 8]
    assert trie_counts(drafter.global_tree) == substring_counts([[5, 6, 7, 8], [20, 21, 22, 23]], drafter.max_depth)
    finished(drafter, [], list(range(100, 130)))  # longer than the memory: only its end is kept
    assert [list(o) for o in drafter.outputs] == [list(range(120, 130))]
    assert drafter.remembered_tokens == 10


def test_node_cap_evicts_the_oldest_outputs():
    # A repeated string makes a node per (position, depth): far more nodes than tokens.
    drafter = SuffixDrafter("sfx", max_depth=8, memory_tokens=10_000, max_nodes=60)
    for start in (0, 100, 200):
        finished(drafter, [], list(range(start, start + 10)) * 2)
        assert drafter.global_tree.nodes <= 60
    assert [o[0] for o in drafter.outputs] == [200]  # only the newest fits
    assert trie_counts(drafter.global_tree) == substring_counts([list(o) for o in drafter.outputs], 8)
    assert propose([0, 201, 202], 3, drafter) == [203, 204, 205]
    alone = SuffixDrafter("sfx", max_depth=8, max_nodes=5)
    finished(alone, [], [1, 2, 3] * 4)  # too big on its own: not kept
    assert not alone.outputs and alone.global_tree.nodes == 1 and alone.remembered_tokens == 0


def test_proposals_stay_sound_while_another_thread_inserts_and_evicts():
    # The draft service learns on a thread while proposals read the global tree on the event loop.
    import threading

    drafter = SuffixDrafter("sfx", max_depth=8, memory_tokens=200)
    rng = random.Random(1)
    outputs = [[rng.randrange(8) for _ in range(60)] for _ in range(40)]
    done = threading.Event()

    def learn() -> None:
        for output in outputs:
            finished(drafter, [], output)
        done.set()

    thread = threading.Thread(target=learn)
    thread.start()
    proposals = 0
    while not done.is_set() or proposals < 50:
        context = [9, *outputs[rng.randrange(len(outputs))][:5]]  # 9 never occurs in outputs: only learned text matches
        draft = propose(context, 4, drafter)
        if draft:  # the context's tail followed by the draft occurred in some output
            string = context[-2:] + draft
            assert any(string == o[i : i + len(string)] for o in outputs for i in range(len(o))), string
        proposals += 1
    thread.join()
    assert trie_counts(drafter.global_tree) == substring_counts([list(o) for o in drafter.outputs], 8)


def test_a_proposal_does_not_wait_for_the_learner():
    # Proposals run on the service's event loop: while an output is being inserted (the learner holds the
    # lock), a round drafts from the request's own context instead of stalling every RPC.
    drafter = SuffixDrafter("sfx", max_depth=8)
    finished(drafter, [], [7, 8, 9, 10, 11])
    assert propose([5, 7, 8], 3, drafter) == [9, 10, 11]
    with drafter.global_lock:
        assert propose([5, 7, 8], 3, drafter) == []  # learned text unreachable, and no block
        assert propose([1, 2, 3, 1, 2], 2, drafter) == [3, 1]  # the session's own tree still drafts
    assert propose([5, 7, 8], 3, drafter) == [9, 10, 11]


def test_node_count_stays_bounded_by_the_remembered_tokens():
    rng = random.Random(0)
    drafter = SuffixDrafter("sfx", max_depth=8, memory_tokens=300)
    for _ in range(100):
        output = [rng.randrange(6) for _ in range(rng.randrange(1, 40))]
        finished(drafter, [], output)
        assert drafter.remembered_tokens <= 300
        assert drafter.global_tree.nodes <= 1 + drafter.remembered_tokens * drafter.max_depth
    assert trie_counts(drafter.global_tree) == substring_counts([list(o) for o in drafter.outputs], 8)
    # Evicted outputs are not kept alive: references point into remembered outputs or short copies.
    nodes, remembered = [drafter.global_tree.root], {id(o) for o in drafter.outputs}
    while nodes:
        node = nodes.pop()
        if node.children is None:
            assert id(node.seq) in remembered or len(node.seq) <= drafter.max_depth
        else:
            nodes.extend(node.children.values())
    # Nodes exist for strings seen twice: on text that seldom repeats, about one per token.
    novel = SuffixDrafter("sfx", memory_tokens=20_000)
    for _ in range(20):
        finished(novel, [], [rng.randrange(50_000) for _ in range(1000)])
    assert novel.global_tree.nodes < 1.5 * novel.remembered_tokens
    novel.close()
    assert novel.global_tree.nodes == 1 and novel.remembered_tokens == 0


# properties --------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    context=SEQUENCES,
    outputs=st.lists(SEQUENCES, max_size=3),
    num_tokens=st.integers(min_value=0, max_value=8),
    max_depth=st.integers(min_value=3, max_value=7),
    min_match=st.integers(min_value=1, max_value=2),
    threshold=st.sampled_from([0.0, 0.1, 0.4, 0.7]),
    memory_tokens=st.sampled_from([0, 5, 30, 200_000]),
)
def test_proposals_match_the_brute_force_reference(
    context, outputs, num_tokens, max_depth, min_match, threshold, memory_tokens
):
    drafter = SuffixDrafter("sfx", max_depth, memory_tokens, min_match, threshold)
    for output in outputs:
        finished(drafter, [99], output)
    # FIFO: the latest outputs that fit (the last one possibly cut to its end).
    remembered = [list(o) for o in drafter.outputs]
    kept = [o for o in outputs if o][len([o for o in outputs if o]) - len(remembered) :]
    assert all(r == o[len(o) - len(r) :] for r, o in zip(remembered, kept, strict=True))
    assert drafter.remembered_tokens == sum(map(len, remembered)) <= memory_tokens
    assert trie_counts(drafter.global_tree) == substring_counts(remembered, max_depth)
    state = session(context)
    assert drafter.propose(state, num_tokens).token_ids in reference_proposals(context, remembered, num_tokens, drafter)
    if num_tokens:
        assert trie_counts(state.state["sfx"].trie) == substring_counts([context], max_depth)


@settings(max_examples=150, deadline=None)
@given(context=SEQUENCES, outputs=st.lists(SEQUENCES, max_size=3), num_tokens=st.integers(min_value=1, max_value=8))
def test_every_proposal_continues_an_earlier_occurrence(context, outputs, num_tokens):
    drafter = SuffixDrafter("sfx", max_depth=6)
    for output in outputs:
        finished(drafter, [], output)
    draft = propose(context, num_tokens, drafter)
    assert len(draft) <= num_tokens
    if draft:
        # The matched suffix (≥ min_match tokens) and the draft lie on one path, so they occur together.
        pattern = context[-drafter.min_match :] + draft
        texts = [context, *outputs]
        assert any(text[i : i + len(pattern)] == pattern for text in texts for i in range(len(text) - len(pattern) + 1))


@settings(max_examples=150, deadline=None)
@given(
    full=SEQUENCES,
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    outputs=st.lists(SEQUENCES, max_size=2),
)
def test_incremental_updates_give_the_same_proposals_as_a_fresh_session(full, cuts, outputs):
    drafter = SuffixDrafter("sfx", max_depth=6)
    for output in outputs:
        finished(drafter, [], output)
    growing = session([])
    for cut in [*sorted({min(c, len(full)) for c in cuts}), len(full)]:
        growing.context.extend(full[len(growing.context) : cut])  # in place, as the registry does
        for num_tokens in (1, 3, 8):
            assert drafter.propose(growing, num_tokens) == drafter.propose(session(growing.context), num_tokens)
    assert trie_counts(growing.state["sfx"].trie) == substring_counts([full], 6)


@settings(max_examples=150, deadline=None)
@given(base=st.lists(SEQUENCES, max_size=4), extra=SEQUENCES, max_depth=st.integers(min_value=1, max_value=6))
def test_insert_then_evict_restores_the_tree(base, extra, max_depth):
    trie = SuffixTrie(max_depth)
    for seq in base:
        trie.add(tuple(seq))
    before, nodes = trie_counts(trie), trie.nodes
    assert before == substring_counts(base, max_depth)
    trie.add(tuple(extra))
    assert trie_counts(trie) == substring_counts([*base, extra], max_depth)
    trie.remove(tuple(extra))
    assert trie_counts(trie) == before and trie.nodes == nodes
    for seq in base:  # FIFO down to nothing
        trie.remove(tuple(seq))
    assert trie.nodes == 1 and not trie.root.children and trie.root.total == 0


# spec ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sfx=suffix", SuffixOptions()),
        ("sfx=suffix:24:off", SuffixOptions(24, 0)),
        ("sfx=suffix:off", SuffixOptions(None, 0)),
        ("sfx=suffix:24:0", SuffixOptions(24, 0)),  # 0 is off too
        ("sfx=suffix:16:5000", SuffixOptions(16, 5000)),
        ("sfx=suffix:16:", SuffixOptions(16)),
        ("sfx=suffix:0", SuffixOptions()),  # a depth of 0 took the default, and still does
    ],
)
def test_spec(text, expected):
    assert DrafterSpec.parse(text).options == expected


@pytest.mark.parametrize("text", ["s=suffix:300", "s=suffix:x", "s=suffix:8:-5", "s=suffix:off:5"])
def test_bad_spec(text):
    with pytest.raises(ValueError, match="drafter spec"):
        DrafterSpec.parse(text)


def test_built_with_its_defaults_and_capabilities():
    drafter = DrafterSpec.parse("sfx=suffix").build(ServiceSettings())
    assert isinstance(drafter, SuffixDrafter)
    assert (drafter.max_depth, drafter.memory_tokens) == (24, 200_000)
    assert (drafter.model_free, drafter.runs_on_worker, drafter.learns_from_outputs, drafter.looks_ahead) == (
        True,
        False,
        True,
        False,
    )
    off = DrafterSpec.parse("sfx=suffix:8:off").build(ServiceSettings())
    assert isinstance(off, SuffixDrafter)
    assert (off.max_depth, off.memory_tokens) == (8, 0)
