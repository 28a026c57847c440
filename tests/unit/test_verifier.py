"""The lossless verification rule on hand-made distributions, the shared logits → probabilities
processing, and TokenDistribution encoding."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from banditspec import distributions
from banditspec.sampling import SamplingParams, argmax_rows, probabilities
from banditspec.v1 import common_pb2
from services.target.verifier import Verdict, verify_greedy, verify_sampled

SIGNIFICANCE = 1e-3


def one_hot_logits(winners: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(winners), vocab)
    for row, token in enumerate(winners):
        logits[row, token] = 5.0
        logits[row, (token + 1) % vocab] = 1.0  # a runner-up, to be sure only the max counts
    return logits


# greedy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_argmax_rows_agrees_with_torch_argmax_ties_included(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4099, generator=generator).to(dtype)
    logits[0, 7] = logits[0, 4000] = 100.0  # a tie: the first index wins in both
    logits[1] = 0.0
    with torch.inference_mode():  # as the target's forwards make them
        rows = logits[:5] * 1
    assert argmax_rows(logits) == torch.argmax(logits, dim=-1).tolist()
    assert argmax_rows(rows) == torch.argmax(rows, dim=-1).tolist()
    assert argmax_rows(logits)[:2] == [7, 0]


def test_greedy_accepts_the_whole_matching_draft_and_adds_the_bonus_token():
    verdict = verify_greedy(one_hot_logits([3, 1, 4, 2]), [3, 1, 4])
    assert verdict == Verdict(accepted=3, tokens=[3, 1, 4, 2])


def test_greedy_stops_at_the_first_mismatch_and_emits_the_correction():
    verdict = verify_greedy(one_hot_logits([3, 1, 4, 2]), [3, 5, 4])
    assert verdict == Verdict(accepted=1, tokens=[3, 1])


def test_greedy_mismatch_at_the_first_position():
    verdict = verify_greedy(one_hot_logits([0, 1, 2]), [5, 1])
    assert verdict == Verdict(accepted=0, tokens=[0])


def test_greedy_without_draft_emits_one_target_token():
    assert verify_greedy(one_hot_logits([4]), []) == Verdict(accepted=0, tokens=[4])


def test_greedy_does_not_accept_after_a_mismatch_even_if_later_tokens_match():
    verdict = verify_greedy(one_hot_logits([3, 1, 4, 2]), [0, 1, 4])
    assert verdict == Verdict(accepted=0, tokens=[3])


# sampled ---------------------------------------------------------------------------------------

P = torch.tensor(
    [
        [0.40, 0.25, 0.15, 0.10, 0.06, 0.04],
        [0.05, 0.10, 0.50, 0.05, 0.20, 0.10],
        [0.30, 0.10, 0.10, 0.10, 0.10, 0.30],
    ]
)
Q = torch.tensor(
    [
        [0.05, 0.50, 0.05, 0.30, 0.05, 0.05],
        [0.30, 0.30, 0.10, 0.10, 0.10, 0.10],
    ]
)


def chi_square_p(observed: Counter, expected_probs: torch.Tensor, draws: int) -> float:
    vocab = expected_probs.numel()
    obs = np.array([observed.get(i, 0) for i in range(vocab)], dtype=float)
    exp = expected_probs.double().numpy() * draws
    support = exp > 0
    assert obs[~support].sum() == 0, "a token with zero target probability was emitted"
    return stats.chisquare(obs[support], exp[support] * obs[support].sum() / exp[support].sum()).pvalue


def run_many(draws: int, draft_ids: list[int], draft_probs: torch.Tensor | None, seed: int = 0):
    """Verify `draws` drafts. With draft_probs, each draft is sampled from q (as a drafter would),
    so only the length of draft_ids matters; without, draft_ids is a deterministic draft."""
    generator = torch.Generator().manual_seed(seed)
    drafter = torch.Generator().manual_seed(seed + 1000)
    verdicts = []
    for _ in range(draws):
        ids = draft_ids
        if draft_probs is not None:
            ids = [int(torch.multinomial(row, 1, generator=drafter)) for row in draft_probs]
        verdicts.append(verify_sampled(P[: len(ids) + 1], ids, draft_probs, generator))
    return verdicts


@pytest.mark.parametrize("draft_token", [0, 1, 5])
def test_sampled_point_mass_draft_emits_first_token_from_p(draft_token):
    draws = 10_000
    verdicts = run_many(draws, [draft_token], None, seed=draft_token)
    first = Counter(v.tokens[0] for v in verdicts)
    assert chi_square_p(first, P[0], draws) > SIGNIFICANCE
    # A point mass is accepted with probability p(x).
    accepted = sum(v.accepted for v in verdicts) / draws
    assert abs(accepted - float(P[0, draft_token])) < 5 * math.sqrt(0.25 / draws)


def test_sampled_full_q_draft_emits_tokens_from_p():
    draws = 15_000
    verdicts = run_many(draws, [0, 0], Q, seed=11)
    first = Counter(v.tokens[0] for v in verdicts)
    assert chi_square_p(first, P[0], draws) > SIGNIFICANCE
    # The first draft token is accepted with probability Σ_x min(p(x), q(x)).
    accepted_first = sum(v.accepted >= 1 for v in verdicts) / draws
    overlap = float(torch.minimum(P[0], Q[0]).sum())
    assert overlap == pytest.approx(0.05 + 0.25 + 0.05 + 0.10 + 0.05 + 0.04)
    assert abs(accepted_first - overlap) < 5 * math.sqrt(0.25 / draws)
    # Given the first draft was accepted, the next token (accepted draft or correction) follows p_1.
    second = Counter(v.tokens[1] for v in verdicts if v.accepted >= 1)
    assert chi_square_p(second, P[1], sum(second.values())) > SIGNIFICANCE


def test_sampled_bonus_token_follows_the_last_row_when_all_drafts_are_accepted():
    draws = 10_000
    generator = torch.Generator().manual_seed(3)
    # q == p: every draft is accepted; the bonus comes from P[2].
    verdicts = [verify_sampled(P, [2, 2], P[:2].clone(), generator) for _ in range(draws)]
    assert all(v.accepted == 2 and v.tokens[:2] == [2, 2] for v in verdicts)
    bonus = Counter(v.tokens[2] for v in verdicts)
    assert chi_square_p(bonus, P[2], draws) > SIGNIFICANCE


def test_sampled_point_mass_on_a_zero_probability_token_is_always_rejected():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        verdict = verify_sampled(p, [2], None, generator)
        assert verdict.accepted == 0 and verdict.tokens[0] in (0, 1)


def test_sampled_empty_draft_samples_from_p():
    draws = 10_000
    generator = torch.Generator().manual_seed(9)
    first = Counter(verify_sampled(P[:1], [], None, generator).tokens[0] for _ in range(draws))
    assert chi_square_p(first, P[0], draws) > SIGNIFICANCE


def test_sampled_is_reproducible_for_a_seed():
    a = [v.tokens for v in run_many(50, [1, 0], Q, seed=42)]
    b = [v.tokens for v in run_many(50, [1, 0], Q, seed=42)]
    assert a == b


def test_sampled_draft_token_with_zero_q_raises():
    q = Q.clone()
    q[0] = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="zero probability"):
        verify_sampled(P[:3], [0, 1], q, torch.Generator().manual_seed(0))


# sampling.probabilities ------------------------------------------------------------------------


def logits_for(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(probs))


def test_probabilities_temperature_scales_the_logits():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.5):
        got = probabilities(logits, SamplingParams(temperature=temperature))
        torch.testing.assert_close(got, torch.softmax(logits / temperature, dim=-1))
    assert probabilities(logits, SamplingParams(temperature=1.0)).dtype == torch.float32


def test_probabilities_top_k_keeps_the_k_largest():
    logits = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9])
    got = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (got > 0).nonzero().flatten().tolist() == [1, 3]
    kept = torch.softmax(torch.tensor([2.0, 1.5]), dim=-1)
    torch.testing.assert_close(got[[1, 3]], kept)
    # top_k >= vocabulary size is off.
    torch.testing.assert_close(
        probabilities(logits, SamplingParams(temperature=1.0, top_k=5)), torch.softmax(logits, dim=-1)
    )


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.45, [0]), (0.7, [0, 2]), (0.85, [0, 2, 1]), (0.97, [0, 2, 1, 3]), (1.0, [0, 2, 1, 3])],
)
def test_probabilities_top_p_keeps_the_smallest_prefix_reaching_top_p(top_p, kept):
    logits = logits_for([0.5, 0.15, 0.3, 0.05])
    got = probabilities(logits, SamplingParams(temperature=1.0, top_p=top_p))
    assert sorted((got > 0).nonzero().flatten().tolist()) == sorted(kept)
    base = torch.tensor([0.5, 0.15, 0.3, 0.05])
    expected = torch.zeros(4)
    expected[kept] = base[kept] / base[kept].sum()
    torch.testing.assert_close(got, expected)


def test_probabilities_top_k_then_top_p_on_batched_rows():
    logits = torch.stack([logits_for([0.5, 0.15, 0.3, 0.05]), logits_for([0.1, 0.2, 0.3, 0.4])])
    got = probabilities(logits, SamplingParams(temperature=1.0, top_k=3, top_p=0.6))
    # row 0: top-3 {0, 2, 1} renormalised to 0.526, 0.316, 0.158 → top-p 0.6 keeps {0, 2}
    # row 1: top-3 {3, 2, 1} renormalised to 0.444, 0.333, 0.222 → top-p 0.6 keeps {3, 2}
    assert sorted((got[0] > 0).nonzero().flatten().tolist()) == [0, 2]
    assert sorted((got[1] > 0).nonzero().flatten().tolist()) == [2, 3]
    torch.testing.assert_close(got.sum(-1), torch.ones(2))


def test_probabilities_greedy_has_no_distribution():
    with pytest.raises(ValueError):
        probabilities(torch.zeros(4), SamplingParams(temperature=0.0))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=-0.1),
        SamplingParams(temperature=float("nan")),
        SamplingParams(temperature=1.0, top_p=0.0),
        SamplingParams(temperature=1.0, top_p=1.5),
        SamplingParams(temperature=1.0, top_k=-1),
    ],
)
def test_sampling_params_validate_rejects_bad_values(params):
    with pytest.raises(ValueError):
        params.validate()


def test_sampling_params_from_pb_treats_zero_top_p_as_off():
    params = SamplingParams.from_pb(common_pb2.SamplingParams(temperature=0.5, top_k=3))
    assert params == SamplingParams(temperature=0.5, top_p=1.0, top_k=3)
    assert SamplingParams.from_pb(params.to_pb()) == params
    with pytest.raises(ValueError):
        SamplingParams.from_pb(common_pb2.SamplingParams(temperature=-1.0))


# distributions ---------------------------------------------------------------------------------


def test_distribution_dense_round_trip():
    probs = torch.softmax(torch.randn(20, generator=torch.Generator().manual_seed(0)), dim=-1)
    pb = distributions.encode(probs)
    assert not pb.token_ids  # full support: dense
    assert len(pb.probs_f32) == 4 * 20
    torch.testing.assert_close(distributions.decode(pb, 20), probs)


def test_distribution_sparse_round_trip():
    probs = torch.zeros(100)
    probs[[3, 17, 64]] = torch.tensor([0.5, 0.25, 0.25])
    pb = distributions.encode(probs)
    assert list(pb.token_ids) == [3, 17, 64]
    assert len(pb.probs_f32) == 4 * 3
    torch.testing.assert_close(distributions.decode(pb, 100), probs)


def test_distribution_decode_of_a_processed_row():
    probs = probabilities(torch.randn(50, generator=torch.Generator().manual_seed(1)), SamplingParams(1.0, top_k=5))
    torch.testing.assert_close(distributions.decode(distributions.encode(probs), 50), probs)


def f32(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("pb", "vocab"),
    [
        (common_pb2.TokenDistribution(token_ids=[1, 2], probs_f32=f32([1.0])), 4),  # count mismatch
        (common_pb2.TokenDistribution(token_ids=[1, 9], probs_f32=f32([0.5, 0.5])), 4),  # id out of vocab
        (common_pb2.TokenDistribution(token_ids=[-1, 2], probs_f32=f32([0.5, 0.5])), 4),  # negative id
        (common_pb2.TokenDistribution(probs_f32=f32([0.5, 0.5])), 4),  # dense, wrong length
        (common_pb2.TokenDistribution(probs_f32=f32([0.5, 0.5, 0.5, -0.5])), 4),  # negative mass
        (common_pb2.TokenDistribution(probs_f32=f32([0.5, 0.2, 0.2, 0.0])), 4),  # sums to 0.9
        (common_pb2.TokenDistribution(probs_f32=f32([0.5, float("nan"), 0.5, 0.0])), 4),  # NaN
        (common_pb2.TokenDistribution(probs_f32=b"\x00\x00\x80"), 4),  # not whole float32s
    ],
)
def test_distribution_decode_rejects_malformed_input(pb, vocab):
    with pytest.raises(ValueError):
        distributions.decode(pb, vocab)
