"""Token-tree drafts: the trie merge, prompt lookup and suffix trees branching, and the draft service
passing tree_tokens in and draft_parents out."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import Aborted, ServicerContext
from hypothesis import given, settings
from hypothesis import strategies as st

from banditspec.errors import InvalidArgument
from banditspec.sampling import SamplingParams
from banditspec.v1 import draft_pb2
from services.draft.drafters.base import DraftSession, Proposal, merge_paths, tree_proposal
from services.draft.drafters.prompt_lookup import MAX_TREE_MATCHES, PromptLookupDrafter
from services.draft.drafters.suffix import SuffixDrafter
from services.draft.registry import MAX_TREE_TOKENS, DrafterRegistry
from services.draft.specs import DrafterSpec

TOKENS = st.integers(min_value=0, max_value=4)  # a small alphabet, so that patterns repeat


def session(context: list[int]) -> DraftSession:
    return DraftSession(list(context), SamplingParams(), seed=0, prompt_length=len(context))


def check_tree(proposal: Proposal, tree_tokens: int, max_depth: int) -> None:
    """Parents are earlier tokens, within budget and depth, and no two siblings are the same token."""
    assert len(proposal.token_ids) <= tree_tokens
    if proposal.parents is None:
        assert len(proposal.token_ids) <= max_depth
        return
    assert len(proposal.parents) == len(proposal.token_ids)
    assert proposal.parents != [i - 1 for i in range(len(proposal.parents))]  # a single path is a chain
    depth: list[int] = []
    for index, parent in enumerate(proposal.parents):
        assert -1 <= parent < index
        depth.append(1 if parent < 0 else depth[parent] + 1)
    assert max(depth) <= max_depth
    siblings = [(parent, token) for parent, token in zip(proposal.parents, proposal.token_ids, strict=True)]
    assert len(set(siblings)) == len(siblings)


def paths(proposal: Proposal) -> list[list[int]]:
    """Root-to-leaf token paths, in the order of their leaves."""
    parents = proposal.parents or list(range(-1, len(proposal.token_ids) - 1))
    prefix: list[list[int]] = []
    for parent, token in zip(parents, proposal.token_ids, strict=True):
        prefix.append(([] if parent < 0 else prefix[parent]) + [token])
    inner = set(parents)
    return [prefix[i] for i in range(len(prefix)) if i not in inner]


def node_paths(proposal: Proposal) -> list[tuple[int, ...]]:
    """Every node's path from the root."""
    parents = proposal.parents or list(range(-1, len(proposal.token_ids) - 1))
    prefix: list[tuple[int, ...]] = []
    for parent, token in zip(parents, proposal.token_ids, strict=True):
        prefix.append((() if parent < 0 else prefix[parent]) + (token,))
    return prefix


def first_path(proposal: Proposal) -> list[int]:
    """The path the target tries first: the first child at every step."""
    parents = proposal.parents or list(range(-1, len(proposal.token_ids) - 1))
    tokens, at = [], -1
    while (child := next((i for i, p in enumerate(parents) if p == at), None)) is not None:
        tokens.append(proposal.token_ids[child])
        at = child
    return tokens


# the trie merge ----------------------------------------------------------------------------------


def test_merge_shares_prefixes_and_orders_siblings_best_first():
    tree = merge_paths([[1, 2, 3], [1, 2, 4], [1, 5], [6]], max_tokens=16, max_depth=8)
    assert tree.token_ids == [1, 2, 3, 4, 5, 6]
    assert tree.parents == [-1, 0, 1, 1, 0, -1]
    assert paths(tree) == [[1, 2, 3], [1, 2, 4], [1, 5], [6]]


def test_merge_respects_budget_and_depth():
    tree = merge_paths([[1, 2, 3, 4], [1, 2, 5, 6], [7, 8]], max_tokens=5, max_depth=3)
    assert tree.token_ids == [1, 2, 3, 5, 7] and tree.parents == [-1, 0, 1, 1, -1]  # depth 3 cut both, 8 over budget
    tree = merge_paths([[1, 2, 3, 4], [1, 2, 5, 6], [7, 8]], max_tokens=5, max_depth=8)
    assert tree.token_ids == [1, 2, 3, 4, 5] and tree.parents == [-1, 0, 1, 2, 1]  # the second path cut at 5


def test_a_single_path_is_a_chain():
    assert merge_paths([[1, 2, 3], [1, 2], [1, 2, 3]], 8, 8) == Proposal([1, 2, 3])
    assert merge_paths([[1, 2, 3], [4]], 2, 8) == Proposal([1, 2])  # the budget left no branch
    assert merge_paths([], 8, 8) == Proposal([])
    assert tree_proposal([5, 6], [-1, 0]) == Proposal([5, 6])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(TOKENS, max_size=8), max_size=8),
    st.integers(min_value=1, max_value=20),
    st.integers(min_value=1, max_value=8),
)
def test_merge_is_a_valid_tree_holding_its_paths_in_order(candidates, max_tokens, max_depth):
    tree = merge_paths(candidates, max_tokens, max_depth)
    check_tree(tree, max_tokens, max_depth)
    held = set(node_paths(tree))
    cut = [tuple(c[:max_depth]) for c in candidates]
    # Each candidate's prefixes are in the tree, up to the first one the budget left out; after that no
    # later candidate adds a token.
    for candidate in cut:
        prefixes = [candidate[:k] for k in range(1, len(candidate) + 1)]
        kept = [p in held for p in prefixes]
        assert kept == sorted(kept, reverse=True)  # a prefix of the candidate, never a hole
        if not all(kept):
            assert len(tree.token_ids) == max_tokens
    assert held <= {c[:k] for c in cut for k in range(1, len(c) + 1)}
    if cut and cut[0]:
        best = list(cut[0][:max_tokens])  # tried first (a later candidate may extend it)
        assert first_path(tree)[: len(best)] == best


# prompt lookup -----------------------------------------------------------------------------------

SEVERAL_MATCHES = [1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 8, 2, 3, 6, 9, 1, 2, 3]


def test_pld_tree_holds_each_match_continuation():
    drafter = PromptLookupDrafter("pld", 1, 3, scaled=False)
    tree = drafter.propose(session(SEVERAL_MATCHES), 3, tree_tokens=16)
    check_tree(tree, 16, 3)
    # (1, 2, 3)'s matches latest first, then the match only (2, 3) has; (3,) has no other.
    assert paths(tree) == [[5, 9, 8], [4, 9, 1], [6, 9, 1]]
    assert first_path(tree) == drafter.propose(session(SEVERAL_MATCHES), 3).token_ids


def test_pld_tree_within_budget_keeps_the_best_matches():
    drafter = PromptLookupDrafter("pld", 1, 3, scaled=False)
    tree = drafter.propose(session(SEVERAL_MATCHES), 3, tree_tokens=5)
    assert paths(tree) == [[5, 9, 8], [4, 9]]
    assert drafter.propose(session(SEVERAL_MATCHES), 3, tree_tokens=2) == Proposal([5, 9])  # one path: a chain


def test_pld_tree_of_one_match_is_a_chain_and_zero_budget_is_todays_chain():
    drafter = PromptLookupDrafter("pld", 1, 3)
    context = [7, 1, 2, 3, 4, 5, 1, 2, 3]
    assert drafter.propose(session(context), 4, tree_tokens=8) == Proposal([4, 5, 1, 2])
    assert drafter.propose(session(SEVERAL_MATCHES), 3, tree_tokens=0) == drafter.propose(session(SEVERAL_MATCHES), 3)


def reference_pld_continuations(context, num_tokens, low, high, scaled):
    """Distinct matches from the definition: longest n-gram first, latest occurrence first."""
    seen, continuations = set(), []
    for n in range(min(high, len(context) - 1), low - 1, -1):
        length = num_tokens if not scaled or n == high else min(num_tokens, max(1, 2 * (n - 1)))
        for start in range(len(context) - 1 - n, -1, -1):
            if context[start : start + n] == context[-n:] and start + n not in seen:
                seen.add(start + n)
                continuations.append(context[start + n : start + n + length])
    return continuations[:MAX_TREE_MATCHES]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(TOKENS, max_size=60),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=24),
    st.tuples(st.integers(1, 3), st.integers(0, 2)),
    st.booleans(),
)
def test_pld_tree_matches_the_brute_force_reference(context, num_tokens, tree_tokens, ngrams, scaled):
    low, high = ngrams[0], ngrams[0] + ngrams[1]
    drafter = PromptLookupDrafter("pld", low, high, scaled=scaled)
    tree = drafter.propose(session(context), num_tokens, tree_tokens=tree_tokens)
    check_tree(tree, tree_tokens, num_tokens)
    expected = merge_paths(reference_pld_continuations(context, num_tokens, low, high, scaled), tree_tokens, num_tokens)
    assert tree == expected
    chain = drafter.propose(session(context), num_tokens).token_ids
    assert first_path(tree)[: min(len(chain), tree_tokens)] == chain[:tree_tokens]  # today's chain is tried first


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(TOKENS, min_size=1, max_size=10), min_size=1, max_size=6), st.integers(1, 16))
def test_pld_tree_grows_incrementally_like_a_fresh_index(chunks, tree_tokens):
    drafter = PromptLookupDrafter("pld", 1, 3)
    growing = session([])
    for chunk in chunks:
        growing.context.extend(chunk)
        chain = drafter.propose(growing, 4)  # chains and trees share the index
        assert drafter.propose(growing, 4, tree_tokens=tree_tokens) == drafter.propose(
            session(growing.context), 4, tree_tokens=tree_tokens
        )
        assert chain == drafter.propose(session(growing.context), 4)


# suffix trees ------------------------------------------------------------------------------------


def test_suffix_tree_branches_by_frequency():
    # After (1, 2): 3 three times, 4 twice, 5 once; then each branch continues its own way.
    context = [1, 2, 3, 7, 1, 2, 3, 7, 1, 2, 3, 7, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 5, 9, 1, 2]
    drafter = SuffixDrafter("sfx", threshold=0.1)
    chain = drafter.propose(session(context), 2)
    assert chain == Proposal([3, 7])
    tree = drafter.propose(session(context), 2, tree_tokens=6)
    check_tree(tree, 6, 2)
    assert paths(tree) == [[3, 7], [4, 8], [5, 9]]
    assert [t for t, p in zip(tree.token_ids, tree.parents or [], strict=True) if p < 0] == [3, 4, 5]  # best first
    # Within a budget of 3, the three most probable nodes: 3 (1/2), 3→7 (1/2), 4 (1/3).
    assert paths(drafter.propose(session(context), 2, tree_tokens=3)) == [[3, 7], [4]]
    # The threshold prunes branches as it stops the chain: 5 has 1/6.
    assert paths(SuffixDrafter("sfx", threshold=0.2).propose(session(context), 2, tree_tokens=6)) == [[3, 7], [4, 8]]
    assert SuffixDrafter("sfx", threshold=0.4).propose(session(context), 2, tree_tokens=6) == Proposal([3, 7])


def test_suffix_tree_from_remembered_outputs_and_zero_budget():
    drafter = SuffixDrafter("sfx")
    for output in ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 5, 6]):
        drafter.finish(DraftSession([0, *output], SamplingParams(), 0, prompt_length=1))
    tree = drafter.propose(session([9, 9, 1, 2]), 2, tree_tokens=8)
    assert paths(tree) == [[3, 4], [5, 6]]
    assert drafter.propose(session([9, 9, 1, 2]), 2, tree_tokens=0) == drafter.propose(session([9, 9, 1, 2]), 2)


def substring_counts(sequences: list[list[int]], depth: int) -> Counter:
    """What the truncated suffix trie holds (as in test_suffix_drafter): every substring of ≤ depth tokens."""
    counts: Counter = Counter()
    for seq in sequences:
        for start in range(len(seq)):
            for end in range(start + 1, min(start + depth, len(seq)) + 1):
                counts[tuple(seq[start:end])] += 1
    return counts


def reference_tree_probabilities(context, num_tokens, drafter):
    """Every continuation of the longest match the tree could hold, with its path probability."""
    counts = substring_counts([context], drafter.max_depth)
    longest = min(len(context), drafter.max_depth - 1, max(drafter.min_match, drafter.max_depth - num_tokens))

    def children(prefix):
        return {s[-1]: c for s, c in counts.items() if len(s) == len(prefix) + 1 and s[:-1] == prefix}

    for length in range(longest, drafter.min_match - 1, -1):
        prefix = tuple(context[-length:])
        if not children(prefix):
            continue
        found: dict[tuple[int, ...], float] = {}
        frontier = [((), prefix, 1.0)]
        while frontier:
            path, at, probability = frontier.pop()
            if len(path) == num_tokens:
                continue
            options = children(at)
            total = sum(options.values())
            for token, count in options.items():
                p = probability * (count / total)
                if p >= drafter.threshold:
                    found[(*path, token)] = p
                    frontier.append(((*path, token), (*at, token), p))
        return found
    return {}


@settings(max_examples=150, deadline=None)
@given(st.lists(TOKENS, max_size=40), st.integers(1, 6), st.integers(1, 24), st.sampled_from([0.05, 0.1, 0.3]))
def test_suffix_tree_holds_the_most_probable_continuations(context, num_tokens, tree_tokens, threshold):
    drafter = SuffixDrafter("sfx", max_depth=8, threshold=threshold)
    tree = drafter.propose(session(context), num_tokens, tree_tokens=tree_tokens)
    check_tree(tree, tree_tokens, num_tokens)
    reference = reference_tree_probabilities(context, num_tokens, drafter)
    held = node_paths(tree)
    assert set(held) <= set(reference)
    best = sorted(reference.values(), reverse=True)[:tree_tokens]
    assert sorted((reference[p] for p in held), reverse=True) == pytest.approx(best)
    chain = drafter.propose(session(context), num_tokens).token_ids
    if len(reference) <= tree_tokens:  # room for every branch: the chain is the path tried first
        assert first_path(tree) == chain


# the draft service -------------------------------------------------------------------------------


def test_registry_bounds_tree_tokens_and_leaves_chains_to_drafters_without_trees():
    registry = DrafterRegistry()
    pld = PromptLookupDrafter("pld", 1, 3, scaled=False)
    registry.add(pld)
    held = registry.sync("s", 0, SEVERAL_MATCHES, SamplingParams(), 0)
    for bad in (-1, MAX_TREE_TOKENS + 1):
        with pytest.raises(InvalidArgument, match="tree_tokens"):
            registry.propose(pld, held, 3, bad)
    assert registry.propose(pld, held, 3, MAX_TREE_TOKENS)[0].parents is not None


async def test_servicer_proposes_trees_and_rejects_a_bad_budget():
    import grpc

    from services.draft.server import DraftConfig, DraftServicer

    servicer = DraftServicer(DraftConfig(drafters=[]))
    try:
        await servicer.load(DrafterSpec.parse("pld=prompt_lookup:1-3:fixed"))
        request = draft_pb2.ProposeRequest(
            session_id="s",
            drafter="pld",
            new_context_ids=SEVERAL_MATCHES,
            num_tokens=3,
            tree_tokens=16,
            score_drafters=["pld"],
        )
        tree = await servicer.Propose(request, ServicerContext())
        assert list(tree.draft_ids) == [5, 9, 8, 4, 9, 1, 6, 9, 1]
        assert list(tree.draft_parents) == [-1, 0, 1, -1, 3, 4, -1, 6, 7]
        assert [list(a.draft_ids) for a in tree.alternatives] == []  # the drafter asked for is not scored
        chain = await servicer.Propose(
            draft_pb2.ProposeRequest(session_id="s", drafter="pld", context_length=len(SEVERAL_MATCHES), num_tokens=3),
            ServicerContext(),
        )
        assert list(chain.draft_ids) == [5, 9, 8] and list(chain.draft_parents) == []
        # Scoring asks for a larger tree than the one proposed: the drafter's own tree comes as an alternative.
        scored = await servicer.Propose(
            draft_pb2.ProposeRequest(
                session_id="s", drafter="pld", context_length=len(SEVERAL_MATCHES), num_tokens=3,
                score_drafters=["pld"], score_num_tokens=3, score_tree_tokens=16,
            ),
            ServicerContext(),
        )  # fmt: skip
        assert list(scored.draft_ids) == [5, 9, 8] and list(scored.draft_parents) == []
        [alternative] = scored.alternatives
        assert list(alternative.draft_ids) == list(tree.draft_ids)
        assert list(alternative.draft_parents) == list(tree.draft_parents)
        bad_score = draft_pb2.ProposeRequest(
            session_id="s", drafter="pld", context_length=len(SEVERAL_MATCHES), num_tokens=3, score_tree_tokens=-2
        )
        with pytest.raises(Aborted) as aborted:
            await servicer.Propose(bad_score, ServicerContext())
        assert (
            aborted.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT and "score_tree_tokens" in aborted.value.args[1]
        )
        for bad in (-1, MAX_TREE_TOKENS + 1):
            request = draft_pb2.ProposeRequest(
                session_id="s",
                drafter="pld",
                context_length=len(SEVERAL_MATCHES),
                new_context_ids=[4],
                num_tokens=3,
                tree_tokens=bad,
            )
            with pytest.raises(Aborted) as aborted:
                await servicer.Propose(request, ServicerContext())
            assert aborted.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT and "tree_tokens" in aborted.value.args[1]
        assert len(servicer.registry.sessions["s"].context) == len(SEVERAL_MATCHES)  # left as it was
    finally:
        servicer.shutdown()
