"""The model drafter on its own: greedy drafts follow the draft model's argmax and stop early where it
is unsure (min_confidence), after at least one token."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banditspec.lean_llama import LeanLlama
from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from services.draft.drafters.base import DraftSession, ServiceSettings
from services.draft.drafters.model import ModelDrafterOptions
from services.draft.drafters.model_drafter import ModelDrafter
from services.draft.specs import DrafterSpec

PROMPT = [5, 9, 13, 17, 21, 25]


def session() -> DraftSession:
    return DraftSession(list(PROMPT), SamplingParams(), seed=0, prompt_length=len(PROMPT))


def argmax_continuation(drafter: ModelDrafter, steps: int) -> tuple[list[int], list[float]]:
    ids, confidences = list(PROMPT), []
    with torch.inference_mode():
        for _ in range(steps):
            logits = drafter.loaded.model(torch.tensor([ids])).logits[0, -1].float()
            probs = torch.softmax(logits, -1)
            ids.append(int(probs.argmax()))
            confidences.append(float(probs.max()))
    return ids[len(PROMPT) :], confidences


def test_greedy_draft_stops_at_the_first_unsure_token(tiny_models):
    never = ModelDrafter.load("m", str(tiny_models.target), device="cpu", dtype="float32", min_confidence=0.0)
    tokens, confidences = argmax_continuation(never, 6)
    assert never.propose(session(), 6).token_ids == tokens

    ordered = sorted(confidences)
    # midway between observed confidences, so float noise between cached and full forwards can't flip a test
    for threshold in [(a + b) / 2 for a, b in itertools.pairwise(ordered)] + [1.0]:
        drafter = ModelDrafter(f"m{threshold}", never.loaded, min_confidence=threshold)
        expected = tokens[:1]
        for token, confidence in zip(tokens[1:], confidences[1:], strict=True):
            if confidence < threshold:
                break
            expected.append(token)
        assert drafter.propose(session(), 6).token_ids == expected, threshold


def options(text: str) -> ModelDrafterOptions:
    spec = DrafterSpec.parse(text)
    assert isinstance(spec.options, ModelDrafterOptions)
    return spec.options


def test_spec_sets_and_disables_the_threshold():
    assert options("m=model:/x@bfloat16~0.25").min_confidence == 0.25
    assert options("m=model:/x~-1").min_confidence == 0.0  # never stop early
    assert options("m=model:/x").min_confidence is None  # the drafter's default
    assert options("m=model:/x~0").min_confidence == 0.0  # ~0: never stop early
    home = options("m=model:~/drafts/d@bfloat16~0.5")
    assert (home.model_path, home.dtype, home.min_confidence) == ("~/drafts/d", "bfloat16", 0.5)
    assert options("m=model:~/drafts/d").model_path == "~/drafts/d"
    with pytest.raises(ValueError, match="at most 1"):
        DrafterSpec.parse("m=model:/x~5")


def test_built_from_a_spec_with_its_defaults_and_capabilities(tiny_models):
    settings = ServiceSettings(device="cpu", dtype="float32")
    default = DrafterSpec.parse(f"m=model:{tiny_models.target}").build(settings)
    assert isinstance(default, ModelDrafter)
    assert (default.min_confidence, default.lookahead, default.looks_ahead) == (0.4, 0, False)
    assert (default.model_free, default.runs_on_worker, default.learns_from_outputs) == (False, True, False)
    assert default.vocab_size == default.loaded.vocab_size and default.kind == "model"
    assert str(default.loaded.dtype) == "torch.float32"  # the service's dtype when the spec names none
    tuned = DrafterSpec.parse(f"m=model:{tiny_models.target}~0^3").build(settings)
    assert isinstance(tuned, ModelDrafter)
    assert (tuned.min_confidence, tuned.lookahead, tuned.looks_ahead) == (0.0, 3, True)


# lookahead -------------------------------------------------------------------------------------------


def float64_drafter(tiny_models, name: str, lookahead: int, min_confidence: float) -> ModelDrafter:
    """In float64, a token-at-a-time forward and a block forward agree to ~1e-15: no argmax near-ties."""
    loaded = load_causal_lm(str(tiny_models.target), device="cpu", dtype="float32")
    loaded = dataclasses.replace(loaded, model=loaded.model.to(torch.float64), dtype=torch.float64)
    drafter = ModelDrafter(name, loaded, min_confidence=min_confidence, lookahead=lookahead)
    drafter.decoder = CountingDecoder(drafter.decoder)
    return drafter


@pytest.fixture(scope="module")
def float64_models(tiny_models):
    return {
        confidence: (
            float64_drafter(tiny_models, "plain", 0, confidence),
            float64_drafter(tiny_models, "ahead", 8, confidence),
        )
        for confidence in (0.0, 0.15, 0.3)  # on the tiny model, 0.15 stops ~20% of drafts and 0.3 ~75%
    }


def next_greedy_token(drafter: ModelDrafter, ids: list[int]) -> int:
    with torch.inference_mode():
        return int(drafter.loaded.model(torch.tensor([ids])).logits[0, -1].argmax())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_lookahead_proposals_equal_plain_drafting(float64_models, data):
    """Whatever the rounds' outcomes, and wherever the lookahead is cut short, a drafter with lookahead
    proposes exactly what one without proposes; and when a round is accepted whole with the drafter's own
    next token as bonus, the proposal comes from the lookahead."""
    plain, ahead = float64_models[data.draw(st.sampled_from(sorted(float64_models)), label="min_confidence")]
    hits_before = ahead.lookahead_hits
    prompt = data.draw(st.lists(st.integers(3, 40), min_size=1, max_size=8), label="prompt")
    plain_session, ahead_session = session_with(prompt), session_with(prompt)
    expected_hits = 0
    proposal_forwards = {"plain": 0, "ahead": 0}  # not counting lookaheads

    def propose_both(gamma: int) -> list[int]:
        for name, drafter, s in (("plain", plain, plain_session), ("ahead", ahead, ahead_session)):
            calls = drafter.decoder.calls
            tokens = drafter.propose(s, gamma).token_ids
            proposal_forwards[name] += drafter.decoder.calls - calls
            if name == "plain":
                draft = tokens
        assert tokens == draft
        return draft

    for _ in range(data.draw(st.integers(1, 6), label="rounds")):
        gamma = data.draw(st.integers(1, 6), label="gamma")
        draft = propose_both(gamma)
        forwards = data.draw(st.integers(0, 10), label="forwards before preemption")
        ahead.draft_ahead(ahead_session, preempt_after(forwards, ahead))
        outcome = data.draw(st.sampled_from(["whole, own bonus", "whole, other bonus", "part"]), label="outcome")
        accepted = draft if outcome != "part" else draft[: data.draw(st.integers(0, len(draft) - 1))]
        own = next_greedy_token(plain, plain_session.context + accepted)
        other = st.integers(3, 40).filter(lambda t, own=own: t != own)
        bonus = own if outcome == "whole, own bonus" else data.draw(other)
        for s in (plain_session, ahead_session):
            s.context.extend([*accepted, bonus])
        # The lookahead drafts once it has fed the guessed bonus: two forwards when γ was reached, one
        # when the draft stopped at an unsure token.
        expected_hits += outcome == "whole, own bonus" and forwards >= 2
    propose_both(4)
    hits = ahead.lookahead_hits - hits_before
    assert hits >= expected_hits
    # A hit drafts at least its first token without a forward; a miss costs what plain drafting does.
    assert proposal_forwards["ahead"] <= proposal_forwards["plain"] - hits


def session_with(prompt: list[int]) -> DraftSession:
    return DraftSession(list(prompt), SamplingParams(), seed=0, prompt_length=len(prompt))


class CountingDecoder:
    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner.forward(*args, **kwargs)


def preempt_after(forwards: int, drafter: ModelDrafter):
    """A `preempted` callback that turns true after the drafter's decoder has run `forwards` more times."""
    decoder = drafter.decoder
    start = decoder.calls
    return lambda: decoder.calls - start >= forwards


def test_lookahead_is_off_for_sampled_sessions_and_unknown_sessions(float64_models):
    _, ahead = float64_models[0.0]
    sampled = DraftSession(list(PROMPT), SamplingParams(temperature=1.0), seed=1, prompt_length=len(PROMPT))
    ahead.propose(sampled, 3)
    ahead.draft_ahead(sampled, lambda: False)
    assert sampled.state["ahead"].ahead == []
    ahead.draft_ahead(session(), lambda: False)  # no proposal yet: nothing to guess from


def test_spec_sets_the_lookahead():
    assert options("m=model:/x@bfloat16~0.25^8").lookahead_tokens == 8
    spec = options("m=model:/x^6")
    assert (spec.model_path, spec.lookahead_tokens, spec.min_confidence) == ("/x", 6, None)
    assert options("m=model:/x^0").lookahead_tokens == 0  # ^0: none
    assert options("m=model:/x").lookahead_tokens is None  # the drafter's default
    assert DrafterSpec.from_pb(DrafterSpec.parse("m=model:/x^5").to_pb()).options == options("m=model:/x^5")
    with pytest.raises(ValueError, match="at most 64"):
        DrafterSpec.parse("m=model:/x^65")


def test_sampled_drafts_ship_q_and_replay_with_the_seed(tiny_models):
    drafter = ModelDrafter.load("m", str(tiny_models.target), device="cpu", dtype="float32")

    def sampled(seed: int, temperature: float = 1.0):
        params = SamplingParams(temperature=temperature)
        return drafter.propose(DraftSession(list(PROMPT), params, seed=seed, prompt_length=len(PROMPT)), 5)

    first = sampled(7)
    assert len(first.token_ids) == 5 and first.probs.shape == (5, drafter.loaded.vocab_size)
    torch.testing.assert_close(first.probs.sum(-1), torch.ones(5))
    assert all(first.probs[i, t] > 0 for i, t in enumerate(first.token_ids))
    again = sampled(7)
    assert again.token_ids == first.token_ids and torch.equal(again.probs, first.probs)
    # A temperature far below any logit gap is greedy: one-hot rows, never NaN.
    cold = sampled(1, temperature=1e-39)
    assert cold.token_ids == argmax_continuation(drafter, 5)[0]
    assert torch.equal(cold.probs.max(-1).values, torch.ones(5))


def test_drafts_stop_at_the_model_context(tiny_models):
    drafter = ModelDrafter.load("m", str(tiny_models.target), device="cpu", dtype="float32", min_confidence=0.0)
    limit = drafter.loaded.max_context
    for room in (2, 1, 0):
        context = [5 + i % 20 for i in range(limit - room)]
        assert len(drafter.propose(DraftSession(context, SamplingParams(), seed=0), 4).token_ids) == room


# batching across sessions ----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batched_proposals_equal_proposals_one_at_a_time(float64_models, data):
    """Sessions of different lengths, γ, sampling and round outcomes proposed as one batch get what each
    gets alone: the same tokens, the same q, the same state for the next round."""
    confidence = data.draw(st.sampled_from(sorted(float64_models)), label="min_confidence")
    loaded = float64_models[confidence][0].loaded
    alone = ModelDrafter("d", loaded, min_confidence=confidence)
    batched = ModelDrafter("d", loaded, min_confidence=confidence)
    assert isinstance(batched.decoder, LeanLlama)  # the batched forward is what is under test
    count = data.draw(st.integers(2, 5), label="sessions")
    pairs = []
    for index in range(count):
        prompt = data.draw(st.lists(st.integers(3, 40), min_size=1, max_size=12), label="prompt")
        sampled = data.draw(st.booleans(), label="sampled")
        params = SamplingParams(temperature=0.8, top_p=0.9) if sampled else SamplingParams()
        pairs.append(tuple(DraftSession(list(prompt), params, seed=index, prompt_length=len(prompt)) for _ in "ab"))
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        gammas = [data.draw(st.integers(0, 6), label="gamma") for _ in pairs]
        expected = [alone.propose(one, gamma) for (one, _), gamma in zip(pairs, gammas, strict=True)]
        got = batched.propose_batch([(other, gamma) for (_, other), gamma in zip(pairs, gammas, strict=True)])
        for want, have in zip(expected, got, strict=True):
            assert have.token_ids == want.token_ids
            if want.probs is None:
                assert have.probs is None
            else:
                torch.testing.assert_close(have.probs, want.probs)
        for (one, other), proposal in zip(pairs, expected, strict=True):
            accepted = proposal.token_ids[: data.draw(st.integers(0, len(proposal.token_ids)), label="accepted")]
            bonus = data.draw(st.integers(3, 40), label="bonus")
            for s in (one, other):
                s.context.extend([*accepted, bonus])


def test_a_batch_names_each_session_once(tiny_models):
    drafter = ModelDrafter.load("m", str(tiny_models.target), device="cpu", dtype="float32")
    shared = session()
    with pytest.raises(ValueError, match="twice"):
        drafter.propose_batch([(shared, 2), (shared, 3)])
