"""Token trees through the real stack: prompt lookup and the suffix tree propose trees (several matches,
frequent branches), the target verifies each tree in one forward. Greedy output stays token-identical to
the target alone; sampled output follows the target's distribution (chi-square over two-token outputs,
as test_sampling_distribution.py does for chains), with both siblings of the tree's root tried. The same
drafters also run inside the controller (`--local-drafter`, arms inproc/...) and must behave alike."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
import torch
from conftest import RPC_TIMEOUT, list_arm_names, local_stack, reference_greedy
from test_sampling_distribution import SIGNIFICANCE, chi_square_pvalue, exact_two_token_distribution, generate_many

from banditspec.sampling import SamplingParams, probabilities
from banditspec.v1 import generation_pb2, generation_pb2_grpc

TREE = ["local/pld/3t8", "local/sfx/3t8", "inproc/pld/3t8", "inproc/sfx/3t8"]
# (5, 6) is followed by three different tokens: prompt lookup's tree has three branches at its root.
BRANCHING = [5, 6, 7, 9, 5, 6, 8, 9, 5, 6, 10, 9, 5, 6]
PROMPTS = [BRANCHING, [3, 4, 5, 6, 3, 4, 5], [20, 21, 22, 20, 21, 23, 20, 21], [7, 8, 9, 7, 8]]
REQUESTS = 500


@pytest.fixture(scope="module")
def tree_stub(tiny_models, tmp_path_factory):
    drafters = ["pld=prompt_lookup:1-3:fixed", "sfx=suffix"]
    args = ["--policy", "ucbspec", "--warm-start", "off", "--model-free-gammas", "3", "--tree-tokens", "8"]
    args += [f"--local-drafter={drafter}" for drafter in drafters]
    with (
        local_stack(tmp_path_factory, "tree", tiny_models.target, drafters, args) as stack,
        grpc.insecure_channel(stack.address("controller")) as channel,
    ):
        yield generation_pb2_grpc.GenerationServiceStub(channel)


def generate(
    stub, prompt: list[int], arm: str, max_new_tokens: int = 24, **sampling
) -> generation_pb2.GenerateResponse:
    request = generation_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm], **sampling
    )
    request.token_ids.ids.extend(prompt)
    return stub.Generate(request, timeout=RPC_TIMEOUT)


def arm_stats(response, arm: str):
    return next(a for a in response.stats.arms if a.arm == arm)


def test_drafters_that_branch_get_tree_arms(tree_stub):
    names = list_arm_names(tree_stub)
    assert set(TREE) <= set(names), names
    assert {"local/pld/3", "local/sfx/3", "inproc/pld/3", "inproc/sfx/3", "target-only"} <= set(names)


@pytest.mark.parametrize("arm", ["inproc/pld/3", "inproc/sfx/3"])
def test_greedy_output_of_in_process_chains_equals_the_target_alone(tree_stub, target_model, arm):
    for prompt in PROMPTS:
        response = generate(tree_stub, prompt, arm)
        assert list(response.token_ids) == reference_greedy(target_model, prompt, 24), prompt
    assert arm_stats(response, arm).drafted_tokens > 0


@pytest.mark.parametrize("arm", TREE)
def test_greedy_tree_output_equals_the_target_alone(tree_stub, target_model, arm):
    for prompt in PROMPTS:
        response = generate(tree_stub, prompt, arm)
        assert list(response.token_ids) == reference_greedy(target_model, prompt, 24), prompt


@pytest.mark.parametrize("arm", ["local/pld/3t8", "inproc/pld/3t8"])
def test_a_tree_is_proposed_and_verified_whole(tree_stub, target_model, arm):
    """On the branching prompt the first round's tree has more tokens than its depth: a tree, not a chain."""
    request = generation_pb2.GenerateRequest(max_new_tokens=8, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm])
    request.token_ids.ids.extend(BRANCHING)
    events = list(tree_stub.GenerateStream(request, timeout=RPC_TIMEOUT))
    rounds = [e.round for e in events if e.HasField("round") and e.round.arm]
    print([(r.drafted, r.accepted, list(r.token_ids)) for r in rounds])
    assert rounds[0].drafted > 3  # three matches' continuations, within the budget of 8
    assert all(r.accepted <= 3 for r in rounds)
    assert list(events[-1].final.token_ids) == reference_greedy(target_model, BRANCHING, 8)


@pytest.fixture(scope="module")
def sampled_prompt(target_model) -> tuple[list[int], tuple[int, int]]:
    """A prompt whose lookup tree has two root branches (a and b follow (5, 6)) that the target finds
    plausible, so each branch is accepted at times and rejected at times."""
    params = SamplingParams(temperature=1.0)
    a, b = 3, 4
    best = None
    with torch.inference_mode():
        for _ in range(6):
            prompt = [5, 6, a, 9, 5, 6, b, 9, 5, 6]
            p = probabilities(target_model(torch.tensor([prompt])).logits[0, -1], params)
            pa, pb = float(p[a]), float(p[b])
            score = min(pa, pb)
            if best is None or score > best[0]:
                best = (score, prompt, (a, b))
            if 0.05 < pa < 0.8 and 0.05 < pb < 0.8:
                break
            top = torch.topk(p, 2).indices.tolist()
            a, b = top[0], top[1]
    assert best is not None
    return best[1], best[2]


@pytest.mark.parametrize("arm", ["local/pld/3t8", "inproc/pld/3t8"])
def test_sampled_tree_output_follows_the_target(tree_stub, target_model, tiny_tokenizer, sampled_prompt, arm):
    prompt, (a, b) = sampled_prompt
    params = SamplingParams(temperature=1.0)
    expected = exact_two_token_distribution(target_model, prompt, params, tiny_tokenizer.eos_token_id)
    responses = generate_many(
        tree_stub, prompt, params, generation_pb2.POLICY_FIXED, [arm], range(REQUESTS), max_new_tokens=2
    )
    drafted = sum(arm_stats(r, arm).drafted_tokens for r in responses)
    accepted = sum(arm_stats(r, arm).accepted_tokens for r in responses)
    firsts = [r.token_ids[0] for r in responses]
    # Trees were proposed (two tokens at the root), and the target took each branch at times and neither at times.
    assert drafted >= 2 * REQUESTS, drafted
    assert 0 < accepted < REQUESTS
    assert firsts.count(a) > 0 and firsts.count(b) > 0 and any(t not in (a, b) for t in firsts)
    samples = Counter(tuple(r.token_ids) for r in responses)
    pvalue = chi_square_pvalue(samples, expected)
    assert pvalue > SIGNIFICANCE, f"p = {pvalue:.2e}; observed {samples.most_common(8)}"


@pytest.mark.parametrize("host", ["local", "inproc"])
def test_counterfactual_policy_scores_tree_arms_without_pulling_them(tree_stub, target_model, host):
    """ucbspec-cf asks prompt lookup and the suffix tree for their trees each round and scores the tree arms
    against the verified text, as it scores chains; output stays the target's own. It asks the drafters of
    the pulled arm's host, so each host's arms are played apart."""
    arms = [name for name in list_arm_names(tree_stub) if name.startswith(f"{host}/")]
    request = generation_pb2.GenerateRequest(
        max_new_tokens=24, policy=generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL, allowed_arms=[*arms, "target-only"]
    )
    request.token_ids.ids.extend(BRANCHING)
    response = tree_stub.Generate(request, timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == reference_greedy(target_model, BRANCHING, 24)
    observed = {a.arm: a.counterfactual_observations for a in response.stats.arms}
    assert all(observed.get(arm, 0) > 0 for arm in TREE if arm.startswith(f"{host}/")), observed


def test_the_controllers_own_drafters_are_scored_in_rounds_that_did_not_ask_them(tree_stub, target_model):
    """In-process drafters cost no RPC to ask: ucbspec-cf scores their arms in every round, also the rounds
    that played target-only or the draft service's arm."""
    arms = ["target-only", "local/pld/3", "inproc/sfx/3"]
    # Long enough that the other arms get rounds whichever arm the measured rewards favour (24 tokens once
    # gave 9 rounds, 5 of them the suffix tree's).
    request = generation_pb2.GenerateRequest(
        max_new_tokens=96, policy=generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL, allowed_arms=arms
    )
    request.token_ids.ids.extend(BRANCHING)
    response = tree_stub.Generate(request, timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == reference_greedy(target_model, BRANCHING, 96)
    inproc = arm_stats(response, "inproc/sfx/3")
    others = response.stats.rounds - inproc.pulls
    print(
        f"rounds {response.stats.rounds}, inproc/sfx/3 pulled {inproc.pulls}, scored {inproc.counterfactual_observations}"
    )
    assert others >= 5
    # One draft to score per round that did not play it; the last few may still wait on text to decide them.
    assert others - 3 <= inproc.counterfactual_observations <= others, (others, inproc)
