"""At temperature > 0 the stack's output is distributed exactly as the target's own sampling.

Two tokens per request over many seeds, through the real stack; the exact distribution of the
2-token continuation is enumerated from the target model with the same logits → probabilities
processing; a chi-square test (rare cells pooled) at a fixed significance compares them. Outputs of
six tokens (drafts of 3–4 tokens accepted in part, residual samples after a rejection) are checked by
rank against the target's conditionals (sampling_stats.py), with the check's own power shown.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import RPC_TIMEOUT, reference_greedy
from sampling_stats import RankCounts, biased, rank_counts
from scipy import stats

from banditspec.sampling import SamplingParams, probabilities
from banditspec.v1 import generation_pb2

SIGNIFICANCE = 1e-3
REQUESTS = 500


def lookup_prompt(token: int) -> list[int]:
    """Prompt lookup proposes `token` here: the suffix (5, 6) occurred before, followed by it."""
    return [5, 6, token, 9, 5, 6]


@pytest.fixture(scope="module")
def prompt(target_model) -> list[int]:
    """A prompt whose prompt-lookup proposal the target finds likely, so lookup drafts are
    accepted sometimes and rejected sometimes."""
    best, best_prob = None, -1.0
    with torch.inference_mode():
        for token in range(3, target_model.config.vocab_size):
            probs = torch.softmax(target_model(torch.tensor([lookup_prompt(token)])).logits[0, -1], dim=-1)
            if 0.2 < float(probs[token]) < 0.9:
                return lookup_prompt(token)
            if float(probs[token]) > best_prob:
                best, best_prob = token, float(probs[token])
    return lookup_prompt(best)


def exact_two_token_distribution(model, prompt: list[int], params: SamplingParams, eos: int) -> dict[tuple, float]:
    with torch.inference_mode():
        first = probabilities(model(torch.tensor([prompt])).logits[0, -1], params)
        cells: dict[tuple, float] = {}
        for a in torch.nonzero(first).flatten().tolist():
            if a == eos:  # generation ends at EOS after one token
                cells[(a,)] = float(first[a])
                continue
            second = probabilities(model(torch.tensor([[*prompt, a]])).logits[0, -1], params)
            for b in torch.nonzero(second).flatten().tolist():
                cells[(a, b)] = float(first[a]) * float(second[b])
    total = sum(cells.values())
    assert abs(total - 1.0) < 1e-4
    return cells


def chi_square_pvalue(samples: Counter, expected: dict[tuple, float]) -> float:
    n = sum(samples.values())
    unexpected = set(samples) - set(expected)
    assert not unexpected, f"outputs the target can never produce: {sorted(unexpected)[:5]}"
    # Pool the cells with expected count < 5 into one.
    observed, expected_counts, pool_obs, pool_exp = [], [], 0, 0.0
    for cell, prob in expected.items():
        if prob * n >= 5:
            observed.append(samples.get(cell, 0))
            expected_counts.append(prob * n)
        else:
            pool_obs += samples.get(cell, 0)
            pool_exp += prob * n
    if pool_exp > 0:
        observed.append(pool_obs)
        expected_counts.append(pool_exp)
    assert len(observed) >= 5, "too few cells for a meaningful test"
    expected_counts = np.array(expected_counts) * n / sum(expected_counts)
    return stats.chisquare(observed, expected_counts).pvalue


def generate_many(stub, prompt, params: SamplingParams, policy, arms, seeds, max_new_tokens: int) -> list:
    """One sampled request per seed, six at a time; the responses in seed order."""

    def one(seed):
        request = generation_pb2.GenerateRequest(
            max_new_tokens=max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=seed,
            policy=policy,
            allowed_arms=arms,
        )
        request.token_ids.ids.extend(prompt)
        return stub.Generate(request, timeout=RPC_TIMEOUT)

    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(one, seeds))


def sample_outputs(stub, prompt, params: SamplingParams, policy, arms, seeds) -> tuple[Counter, Counter]:
    responses = generate_many(stub, prompt, params, policy, arms, seeds, max_new_tokens=2)
    drafts = Counter()
    for response in responses:
        for arm in response.stats.arms:
            drafts[arm.arm, "drafted"] += arm.drafted_tokens
            drafts[arm.arm, "accepted"] += arm.accepted_tokens
    return Counter(tuple(r.token_ids) for r in responses), drafts


CASES = [
    # a sampled model draft that ships q, differing from p: rejections and residual sampling
    pytest.param(
        SamplingParams(temperature=1.0, top_k=5), generation_pb2.POLICY_FIXED, ["local/near/2"], id="model-q-topk"
    ),
    # a deterministic prompt-lookup draft: a point mass q
    pytest.param(
        SamplingParams(temperature=0.8, top_p=0.8), generation_pb2.POLICY_FIXED, ["local/pld/3"], id="pld-topp"
    ),
    # EXP3Spec draws an arm from the first round on: both kinds of drafts and the target alone mix
    pytest.param(
        SamplingParams(temperature=1.3, top_k=4, top_p=0.95),
        generation_pb2.POLICY_EXP3SPEC,
        ["local/near/2", "local/pld/3", "target-only"],
        id="exp3-mixed",
    ),
]


@pytest.mark.parametrize(("params", "policy", "arms"), CASES)
def test_stack_samples_from_the_target_distribution(
    generation_stub, target_model, tiny_tokenizer, prompt, params, policy, arms
):
    expected = exact_two_token_distribution(target_model, prompt, params, tiny_tokenizer.eos_token_id)
    samples, drafts = sample_outputs(generation_stub, prompt, params, policy, arms, seeds=range(1000, 1000 + REQUESTS))
    # The drafts were really used, and accepted and rejected at times (else the test proves little).
    for arm in arms:
        if arm != "target-only":
            assert drafts[arm, "drafted"] > REQUESTS // 10, drafts
    drafted = sum(drafts[arm, "drafted"] for arm in arms)
    accepted = sum(drafts[arm, "accepted"] for arm in arms)
    assert 0 < accepted < drafted, drafts
    pvalue = chi_square_pvalue(samples, expected)
    assert pvalue > SIGNIFICANCE, f"p = {pvalue:.2e}; observed {samples.most_common(8)}"


def test_chi_square_check_is_sensitive(target_model, tiny_tokenizer, prompt):
    """Guards the statistical check itself: exact samples pass, a modest distortion is caught."""
    params = SamplingParams(temperature=1.0, top_k=5)
    expected = exact_two_token_distribution(target_model, prompt, params, tiny_tokenizer.eos_token_id)
    generator = np.random.default_rng(0)
    cells = list(expected)
    probs = np.array([expected[c] for c in cells])
    probs /= probs.sum()
    draws = generator.choice(len(cells), size=REQUESTS, p=probs)
    assert chi_square_pvalue(Counter(cells[i] for i in draws), expected) > SIGNIFICANCE
    # Mass moved away from the most likely cell.
    top = int(np.argmax(probs))
    distorted = probs.copy()
    distorted[top] *= 0.4
    distorted /= distorted.sum()
    draws = generator.choice(len(cells), size=REQUESTS, p=distorted)
    assert chi_square_pvalue(Counter(cells[i] for i in draws), expected) < SIGNIFICANCE


@pytest.mark.parametrize("arm", ["local/near/2", "local/other/2", "local/pld/3", "local/same/4", "target-only"])
def test_same_seed_same_output(generation_stub, prompt, arm):
    def generate(seed):
        request = generation_pb2.GenerateRequest(
            max_new_tokens=16, temperature=1.0, seed=seed, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm]
        )
        request.token_ids.ids.extend(prompt)
        return generation_stub.Generate(request, timeout=RPC_TIMEOUT)

    outputs = {}
    for seed in (1, 2, 3, 4):
        first, second = generate(seed), generate(seed)
        assert list(first.token_ids) == list(second.token_ids)
        assert first.stats.seed == seed
        outputs[seed] = tuple(first.token_ids)
    assert len(set(outputs.values())) > 1, "different seeds should (almost surely) give different samples"


def test_unseeded_request_reports_the_seed_it_drew_and_replays(generation_stub, prompt):
    request = generation_pb2.GenerateRequest(
        max_new_tokens=12, temperature=1.0, policy=generation_pb2.POLICY_FIXED, allowed_arms=["local/other/4"]
    )
    request.token_ids.ids.extend(prompt)
    first = generation_stub.Generate(request, timeout=RPC_TIMEOUT)
    request.seed = first.stats.seed
    replay = generation_stub.Generate(request, timeout=RPC_TIMEOUT)
    assert list(replay.token_ids) == list(first.token_ids)


# outputs of several tokens: multi-token drafts accepted in part, residual sampling after a rejection ------

LONG = 6  # new tokens per request
LONG_REQUESTS = 300
POWER_RUNS = 10


def sample_long(stub, prompt, params: SamplingParams, policy, arms, seeds) -> tuple[list[list[int]], Counter]:
    responses = generate_many(stub, prompt, params, policy, arms, seeds, max_new_tokens=LONG)
    totals = Counter()
    for response in responses:
        for arm in response.stats.arms:
            if arm.arm != "target-only":
                totals["pulls"] += arm.pulls
                totals["drafted"] += arm.drafted_tokens
                totals["accepted"] += arm.accepted_tokens
                # more accepted than rounds: some round of this request accepted several tokens
                totals["several accepted"] += arm.accepted_tokens > arm.pulls
    return [list(r.token_ids) for r in responses], totals


LONG_CASES = [
    # a model draft with q: a rejection at any of 4 positions, then a residual sample
    pytest.param(SamplingParams(temperature=1.0, top_k=5), generation_pb2.POLICY_FIXED, ["local/near/4"], id="model-q"),
    # prompt lookup's point-mass drafts of 3 tokens, from a prompt that holds the target's likely continuation
    pytest.param(SamplingParams(temperature=0.3, top_k=3), generation_pb2.POLICY_FIXED, ["local/pld/3"], id="pld"),
]


@pytest.fixture(scope="module")
def echo_prompt(target_model) -> list[int]:
    """Every token but EOS, each followed by the target's greedy choice after it: whatever the target
    samples, prompt lookup finds it and proposes 3 tokens, the first often the target's likely one."""
    pairs = []
    for token in range(1, target_model.config.vocab_size):
        pairs += [token, *reference_greedy(target_model, [token], 1)]
    return pairs


@pytest.mark.parametrize(("params", "policy", "arms"), LONG_CASES)
def test_long_sampled_outputs_follow_the_target(
    generation_stub, target_model, prompt, echo_prompt, params, policy, arms
):
    prompt = echo_prompt if arms == ["local/pld/3"] else prompt
    outputs, totals = sample_long(generation_stub, prompt, params, policy, arms, range(5000, 5000 + LONG_REQUESTS))
    # Drafts of several tokens, accepted in part: rejections, and rounds that accepted more than one token.
    assert 0 < totals["accepted"] < totals["drafted"], totals
    assert totals["drafted"] > 2 * totals["pulls"], totals
    if arms == ["local/near/4"]:  # point-mass drafts of a random model's text rarely hold for two tokens
        assert totals["several accepted"] > LONG_REQUESTS // 20, totals
    counts = rank_counts(target_model, prompt, outputs, params)
    assert counts.positions > LONG_REQUESTS * LONG // 2
    pvalue = counts.pvalue()
    assert pvalue > SIGNIFICANCE, f"p = {pvalue:.2e}; by rank observed {counts.observed}, expected {counts.expected}"


def simulated_counts(model, prompt, params, eos: int, bias: float, generator: torch.Generator) -> RankCounts:
    """Rank counts of LONG_REQUESTS outputs drawn from the target's conditionals, each moved by `bias` in
    total variation (0: exact sampling), counted against the exact ones: the long test's data, simulated."""
    counts = RankCounts()
    sequences = torch.tensor([prompt] * LONG_REQUESTS)
    alive = [True] * LONG_REQUESTS
    with torch.inference_mode():
        for _ in range(LONG):
            logits = model(sequences).logits[:, -1]
            drawn = []
            for row in range(LONG_REQUESTS):
                probs = probabilities(logits[row], params)
                token = int(torch.multinomial(biased(probs, bias) if bias else probs, 1, generator=generator))
                if alive[row]:
                    counts.add(probs, token)
                    alive[row] = token != eos
                drawn.append(token)
            sequences = torch.cat([sequences, torch.tensor(drawn)[:, None]], dim=1)
    return counts


@pytest.mark.parametrize("params", [case.values[0] for case in LONG_CASES], ids=[case.id for case in LONG_CASES])
def test_long_check_has_the_power_to_matter(target_model, tiny_tokenizer, prompt, echo_prompt, params):
    """With the long test's sample size, exact sampling passes and a bias of total variation 0.05 per token
    (mass moved from the target's top token to its second) is caught in most runs."""
    generator = torch.Generator().manual_seed(0)
    eos = tiny_tokenizer.eos_token_id
    prompt = echo_prompt if params.top_k == 3 else prompt
    passed = sum(
        simulated_counts(target_model, prompt, params, eos, 0.0, generator).pvalue() > SIGNIFICANCE
        for _ in range(POWER_RUNS)
    )
    caught = sum(
        simulated_counts(target_model, prompt, params, eos, 0.05, generator).pvalue() < SIGNIFICANCE
        for _ in range(POWER_RUNS)
    )
    assert passed >= POWER_RUNS - 1, passed
    assert caught >= 0.8 * POWER_RUNS, f"caught {caught} of {POWER_RUNS}"
