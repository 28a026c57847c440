"""Token-tree verification: the tree's mask and positions, the greedy and sampled acceptance rules on
hand-made distributions (the sampled rule is lossless, and the test tells it from a wrong one), and the
target engine on the tiny Llama: a tree gives greedy decoding's tokens, leaves only its accepted path in
the cache, shares a forward with chain rows, and bad trees are refused."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from banditspec.errors import InvalidArgument
from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from banditspec.token_tree import (
    accept_greedy,
    accept_sampled,
    check_parents,
    children,
    depths,
    feed_mask,
    feed_positions,
    is_chain,
)
from banditspec.v1 import target_pb2
from services.target.engine import TargetEngine, VerifyJob, VerifyResult

GREEDY = SamplingParams()
SIGNIFICANCE = 1e-3  # a lossless rule fails the chi-square test with this probability


# the tree's shape -------------------------------------------------------------------------------


def test_mask_and_positions_let_each_node_see_its_ancestors_at_its_depth():
    parents = [-1, -1, 0, 2]  # root → (a, b), a → c → d
    assert depths(parents) == [1, 1, 2, 3]
    assert children(parents) == [[0, 1], [2], [], [3], []]
    assert feed_positions(parents, 10) == [10, 11, 11, 12, 13]
    mask = feed_mask(parents, 3)
    assert mask.shape == (5, 8)
    assert mask[:, :3].all()  # the cached context
    assert mask[:, 3:].int().tolist() == [
        [1, 0, 0, 0, 0],  # root
        [1, 1, 0, 0, 0],  # a
        [1, 0, 1, 0, 0],  # b: not its sibling a
        [1, 1, 0, 1, 0],  # c
        [1, 1, 0, 1, 1],  # d
    ]


def test_a_chain_of_parents_is_a_chain():
    assert is_chain([]) and is_chain([-1, 0, 1])
    assert not is_chain([-1, -1]) and not is_chain([-1, 0, 0])


@pytest.mark.parametrize(
    ("parents", "count", "message"),
    [([-1], 2, "1 draft parents for 2"), ([0], 1, r"draft_parents\[0\] is 0"), ([-1, -2], 2, "is -2"),
     ([-1, 1], 2, r"draft_parents\[1\] is 1")],
)  # fmt: skip
def test_bad_parents_are_refused(parents, count, message):
    with pytest.raises(InvalidArgument, match=message):
        check_parents(parents, count)


# greedy -----------------------------------------------------------------------------------------


def one_hot_logits(winners: list[int], vocab: int = 8) -> torch.Tensor:
    logits = torch.zeros(len(winners), vocab)
    for row, token in enumerate(winners):
        logits[row, token] = 5.0
        logits[row, (token + 1) % vocab] = 1.0
    return logits


def test_greedy_follows_the_branch_holding_the_argmax():
    # root → (3, 5), 5 → (1, 2), 2 → 4; the target wants 5, 2, 4, then 7
    draft, parents = [3, 5, 1, 2, 4], [-1, -1, 1, 1, 3]
    # feed rows: root, 3, 5, 1, 2, 4
    verdict = accept_greedy(one_hot_logits([5, 0, 2, 0, 4, 7]), draft, parents)
    assert verdict.path == [1, 3, 4] and verdict.accepted == 3
    assert verdict.tokens == [5, 2, 4, 7]


def test_greedy_emits_the_correction_where_no_child_matches():
    verdict = accept_greedy(one_hot_logits([5, 0, 6, 0, 4, 7]), [3, 5, 1, 2, 4], [-1, -1, 1, 1, 3])
    assert verdict.path == [1] and verdict.tokens == [5, 6]
    verdict = accept_greedy(one_hot_logits([6, 0, 0]), [3, 5], [-1, -1])
    assert verdict.path == [] and verdict.tokens == [6]


def test_greedy_takes_the_first_of_duplicate_siblings():
    verdict = accept_greedy(one_hot_logits([5, 1, 2]), [5, 5], [-1, -1])
    assert verdict.path == [0] and verdict.tokens == [5, 1]


# sampled ----------------------------------------------------------------------------------------

# Target distributions per feed row of the tree below: root, then each draft node.
P = torch.tensor(
    [
        [0.10, 0.40, 0.05, 0.30, 0.15],
        [0.50, 0.10, 0.10, 0.20, 0.10],
        [0.20, 0.20, 0.20, 0.20, 0.20],
        [0.05, 0.05, 0.60, 0.10, 0.20],
        [0.30, 0.00, 0.30, 0.20, 0.20],
        [0.25, 0.25, 0.25, 0.25, 0.00],
    ]
)
# root → (1, 1 again, 3, 0); the first 1 → (2, 0)
TREE_IDS, TREE_PARENTS = [1, 1, 3, 0, 2], [-1, -1, -1, -1, 0]

Rule = Callable[[torch.Tensor, list[int], list[int], torch.Generator], list[int]]


def tree_rule(probs: torch.Tensor, draft: list[int], parents: list[int], generator: torch.Generator) -> list[int]:
    return accept_sampled(probs, draft, parents, generator).tokens


def unnormalised_rule(
    probs: torch.Tensor, draft: list[int], parents: list[int], generator: torch.Generator
) -> list[int]:
    """Wrong on purpose: tries the root's children with probability p(x) each, never renormalising."""
    p = probs[0].clone()
    for child in children(parents)[0]:
        token = draft[child]
        if p[token] > 0 and float(torch.rand(1, generator=generator)) < float(p[token]):
            return [token]
        p[token] = 0.0
    return [int(torch.multinomial(p / p.sum(), 1, generator=generator))]


def chi_square_p(tokens: list[int], expected: torch.Tensor) -> float:
    counts = Counter(tokens)
    observed = np.array([counts.get(i, 0) for i in range(expected.numel())], dtype=float)
    support = expected.double().numpy() > 0
    assert observed[~support].sum() == 0, "a token the target gives no probability was emitted"
    want = expected.double().numpy()[support]
    return stats.chisquare(observed[support], want / want.sum() * observed[support].sum()).pvalue


def draw(rule: Rule, trials: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [rule(P, TREE_IDS, TREE_PARENTS, generator) for _ in range(trials)]


def test_the_sampled_tree_rule_is_lossless():
    emitted = draw(tree_rule, 20_000, seed=0)
    assert chi_square_p([tokens[0] for tokens in emitted], P[0]) > SIGNIFICANCE
    # After the root's first child (token 1) the next token follows that node's row, whatever its
    # children (2 and 0) were.
    after_one = [tokens[1] for tokens in emitted if tokens[0] == 1]
    assert len(after_one) > 5_000
    assert chi_square_p(after_one, P[1]) > SIGNIFICANCE


def test_the_lossless_test_rejects_a_rule_that_does_not_renormalise():
    emitted = draw(unnormalised_rule, 20_000, seed=0)
    assert chi_square_p([tokens[0] for tokens in emitted], P[0]) < SIGNIFICANCE


def test_sampled_moves_along_children_the_target_is_sure_of_and_never_emits_a_rejected_token():
    sure = torch.zeros(4, 5)
    sure[0, 3] = sure[2, 1] = sure[3, 4] = 1.0  # root → 3, 3 → 1, bonus 4
    sure[1, 0] = 1.0
    generator = torch.Generator().manual_seed(0)
    verdict = accept_sampled(sure, [2, 3, 1], [-1, -1, 1], generator)
    assert verdict.path == [1, 2] and verdict.tokens == [3, 1, 4]
    for _ in range(200):  # children 1 and 3 rejected or accepted; a correction is never a rejected child
        verdict = accept_sampled(P[:3], [1, 3], [-1, -1], generator)
        assert verdict.accepted == 1 or verdict.tokens[0] not in (1, 3)


def test_sampled_is_reproducible_for_a_seed():
    assert draw(tree_rule, 50, seed=4) == draw(tree_rule, 50, seed=4)


# the engine on the tiny Llama ------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_causal_lm(tiny_models.target, device="cpu", dtype="float32")


PROMPT = [5, 9, 12, 7, 30, 41, 8]


def greedy_continuation(loaded, prompt: list[int], count: int) -> list[int]:
    """Plain greedy decoding through chain verifies of empty drafts."""
    engine = TargetEngine(loaded)
    engine.open("g", prompt, GREEDY, seed=0)
    out: list[int] = []
    while len(out) < count:
        out.extend(engine.verify("g", len(prompt) + len(out), [], None).verdict.tokens)
    return out


def wrong(token: int, vocab: int, shift: int = 1) -> int:
    return (token + shift) % vocab


def tree_around(greedy: list[int], vocab: int) -> tuple[list[int], list[int]]:
    """A tree whose second root branch holds greedy[0:3], among wrong siblings and wrong subtrees."""
    g0, g1, g2 = greedy[:3]
    draft = [wrong(g0, vocab), g0, wrong(g0, vocab, 2), greedy[1], wrong(g1, vocab), g1, g2, wrong(g2, vocab)]
    parents = [-1, -1, -1, 0, 1, 1, 5, 5]  # node 3 (right token, wrong branch) must not count
    return draft, parents


def test_a_tree_holding_the_greedy_path_decodes_greedily_and_keeps_only_that_path(loaded, tiny_models):
    vocab = tiny_models.vocab_size
    greedy = greedy_continuation(loaded, PROMPT, 10)
    draft, parents = tree_around(greedy, vocab)
    engine = TargetEngine(loaded)
    engine.open("t", PROMPT, GREEDY, seed=0)
    result = engine.verify("t", len(PROMPT), draft, None, draft_parents=parents)
    assert result.verdict.accepted == 3 and result.verdict.tokens == greedy[:4]
    session = engine.sessions.get("t")
    assert session.context == PROMPT + greedy[:4]
    assert session.cache.length == len(session.context) - 1  # the cache holds the context but its last token

    # The kept keys and values are those a chain would have left.
    chain = TargetEngine(loaded)
    chain.open("c", PROMPT, GREEDY, seed=0)
    chain.verify("c", len(PROMPT), greedy[:3], None)
    reference = chain.sessions.get("c").cache
    length = reference.length
    assert session.cache.length == length
    torch.testing.assert_close(session.cache.keys[:, :, :length], reference.keys[:, :, :length], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(
        session.cache.values[:, :, :length], reference.values[:, :, :length], atol=2e-5, rtol=2e-5
    )

    # The next rounds (a chain, then another tree) go on from the compacted cache.
    after = engine.verify("t", len(session.context), greedy[4:7], None)
    assert after.verdict.tokens == greedy[4:8]
    draft, parents = [wrong(greedy[8], vocab), greedy[8]], [-1, -1]
    last = engine.verify("t", len(session.context), draft, None, draft_parents=parents)
    assert last.verdict.tokens == greedy[8:10]


def test_tree_and_chain_rows_share_a_forward_with_their_lone_verdicts(loaded, tiny_models):
    vocab = tiny_models.vocab_size
    prompts = {"tree": PROMPT, "chain": [11, 3, 22, 40, 6]}
    greedy = {name: greedy_continuation(loaded, prompt, 4) for name, prompt in prompts.items()}
    tree_draft, tree_parents = tree_around(greedy["tree"], vocab)
    chain_draft = [greedy["chain"][0], wrong(greedy["chain"][1], vocab), greedy["chain"][2]]

    alone, batched = TargetEngine(loaded), TargetEngine(loaded)
    for engine in (alone, batched):
        for name, prompt in prompts.items():
            engine.open(name, prompt, GREEDY, seed=0)
    expected = {
        "tree": alone.verify("tree", len(PROMPT), tree_draft, None, draft_parents=tree_parents).verdict,
        "chain": alone.verify("chain", len(prompts["chain"]), chain_draft, None).verdict,
    }
    jobs = {
        "tree": VerifyJob("tree", context_length=len(PROMPT), draft_ids=tree_draft, draft_parents=tree_parents),
        "chain": VerifyJob("chain", context_length=len(prompts["chain"]), draft_ids=chain_draft),
    }
    batch = batched.step(list(jobs.values()))
    assert batch is not None and batch.rows == 2
    for name, job in jobs.items():
        assert job.done and isinstance(job.result, VerifyResult)
        assert job.result.verdict == expected[name]
        assert batched.sessions.get(name).context == alone.sessions.get(name).context
    assert expected["tree"].tokens == greedy["tree"][:4]
    assert expected["chain"].tokens == greedy["chain"][:2]


def test_a_lone_tree_row_is_padded_like_a_chain_and_keeps_only_its_path(loaded, tiny_models):
    """A lone row runs at the cheapest measured length, tree or chain: the cost model prices every lone
    round at that length. The padding nodes hang off the root, so no node sees them, and they are dropped
    with the rest of the tree."""
    greedy = greedy_continuation(loaded, PROMPT, 4)
    draft, parents = tree_around(greedy, tiny_models.vocab_size)
    engine, plain = TargetEngine(loaded, verify_lengths=[*range(1, 9), *[14] * 6]), TargetEngine(loaded)
    for each in (engine, plain):
        each.open("t", PROMPT, GREEDY, seed=0)
    result = engine.verify("t", len(PROMPT), draft, None, draft_parents=parents)
    unpadded = plain.verify("t", len(PROMPT), draft, None, draft_parents=parents)
    assert (result.batch.tokens, unpadded.batch.tokens) == (14, len(draft) + 1)  # 9 tokens run as 14
    assert result.verdict == unpadded.verdict and result.verdict.tokens == greedy[:4]
    held, reference = engine.sessions.get("t").cache, plain.sessions.get("t").cache
    assert held.length == reference.length == len(PROMPT) + 3
    torch.testing.assert_close(held.keys[:, :, : held.length], reference.keys[:, :, : held.length])
    torch.testing.assert_close(held.values[:, :, : held.length], reference.values[:, :, : held.length])
    after = engine.verify("t", len(PROMPT) + 4, [], None)  # and the session goes on from there
    assert after.verdict.tokens == plain.verify("t", len(PROMPT) + 4, [], None).verdict.tokens


def test_a_sampled_session_verifies_trees_reproducibly(loaded, tiny_models):
    sampling = SamplingParams(temperature=0.8, top_k=20)
    draft, parents = [4, 9, 9, 17, 5, 6], [-1, -1, 1, 1, 3, 3]
    verdicts = []
    for _ in range(2):
        engine = TargetEngine(loaded)
        engine.open("s", PROMPT, sampling, seed=7)
        rounds = [engine.verify("s", len(PROMPT), draft, None, draft_parents=parents).verdict]
        session = engine.sessions.get("s")
        rounds.append(engine.verify("s", len(session.context), draft, None, draft_parents=parents).verdict)
        assert session.cache.length == len(session.context) - 1
        assert all(0 <= token < tiny_models.vocab_size for verdict in rounds for token in verdict.tokens)
        verdicts.append(rounds)
    assert verdicts[0] == verdicts[1]


def test_explicit_chain_parents_take_the_chain_path(loaded):
    engine, plain = TargetEngine(loaded, lean=False), TargetEngine(loaded)
    engine.open("s", PROMPT, GREEDY, seed=0)
    plain.open("s", PROMPT, GREEDY, seed=0)
    got = engine.verify("s", len(PROMPT), [4, 5, 6], None, draft_parents=[-1, 0, 1])  # no tree: fine off the lean path
    assert got.verdict == plain.verify("s", len(PROMPT), [4, 5, 6], None).verdict


@pytest.mark.parametrize(
    ("lean", "parents", "probs", "message"),
    [
        (True, [-1, 0], False, "2 draft parents for 3"),
        (True, [-1, 5, 0], False, r"draft_parents\[1\] is 5"),
        (True, [-1, -1, 0], True, "draft_probs must be empty for a token tree"),
        (False, [-1, -1, 0], False, "token trees need a Llama-architecture target"),
    ],
)
def test_a_bad_tree_is_an_invalid_argument_and_the_session_goes_on(loaded, lean, parents, probs, message):
    engine = TargetEngine(loaded, lean=lean)
    engine.open("s", PROMPT, SamplingParams(temperature=1.0), seed=0)
    draft_probs = torch.full((3, loaded.vocab_size), 1.0 / loaded.vocab_size) if probs else None
    with pytest.raises(InvalidArgument, match=message):
        engine.verify("s", len(PROMPT), [4, 5, 6], draft_probs, draft_parents=parents)
    assert engine.verify("s", len(PROMPT), [4], None).context_length >= len(PROMPT) + 1


def test_the_server_passes_draft_parents_and_refuses_bad_ones(loaded):
    from services.target.scheduler import Scheduler
    from services.target.server import TargetServicer

    servicer = TargetServicer()
    servicer.engine = TargetEngine(loaded)
    servicer.scheduler = Scheduler(servicer.engine)
    greedy = greedy_continuation(loaded, PROMPT, 4)
    servicer.engine.open("s", PROMPT, GREEDY, seed=0)
    draft, parents = tree_around(greedy, loaded.vocab_size)
    request = target_pb2.VerifyRequest(
        session_id="s", context_length=len(PROMPT), draft_ids=draft, draft_parents=parents
    )
    response = asyncio.run(servicer._verify(request))
    assert response.accepted == 3 and list(response.token_ids) == greedy[:4]
    bad = target_pb2.VerifyRequest(session_id="s", context_length=len(PROMPT) + 4, draft_ids=[4], draft_parents=[0])
    with pytest.raises(InvalidArgument):
        asyncio.run(servicer._verify(bad))


def test_a_path_is_kept_after_the_cache_has_grown(loaded):
    """Buffers that grew inside a forward are inference tensors; keeping a tree's path must still move
    them (a benchmark run on long prompts found it failing)."""
    from banditspec.lean_llama import LeanCache

    lean = TargetEngine(loaded).decoder
    assert lean is not None
    cache = LeanCache(len(lean.layers), lean.kv_heads, lean.head_dim, lean.dtype, lean.device, capacity=4)
    lean.forward(PROMPT, cache)  # 7 tokens: the buffers grow, inside inference mode
    moved = cache.keys[:, :, [5, 6]].clone()
    cache.keep_path(3, [5, 6])
    assert cache.length == 5
    torch.testing.assert_close(cache.keys[:, :, 3:5], moved)
