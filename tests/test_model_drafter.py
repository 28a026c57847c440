"""The model drafter on its own: greedy drafts follow the draft model's argmax and stop early where it
is unsure (min_confidence), after at least one token."""

from __future__ import annotations

import pytest
import torch

from banditspec.sampling import SamplingParams
from services.draft.drafters.base import DraftSession
from services.draft.drafters.model import ModelDrafter
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
    return ids[len(PROMPT):], confidences


def test_greedy_draft_stops_at_the_first_unsure_token(tiny_models):
    never = ModelDrafter.load("m", str(tiny_models.target), device="cpu", dtype="float32", min_confidence=0.0)
    tokens, confidences = argmax_continuation(never, 6)
    assert never.propose(session(), 6).token_ids == tokens

    ordered = sorted(confidences)
    # midway between observed confidences, so float noise between cached and full forwards can't flip a test
    for threshold in [(a + b) / 2 for a, b in zip(ordered, ordered[1:])] + [1.0]:
        drafter = ModelDrafter(f"m{threshold}", never.loaded, min_confidence=threshold)
        expected = tokens[:1]
        for token, confidence in zip(tokens[1:], confidences[1:]):
            if confidence < threshold:
                break
            expected.append(token)
        assert drafter.propose(session(), 6).token_ids == expected, threshold


def test_spec_sets_and_disables_the_threshold():
    assert DrafterSpec.parse("m=model:/x@bfloat16~0.25").min_confidence == 0.25
    assert DrafterSpec.parse("m=model:/x~-1").min_confidence == -1.0
    assert DrafterSpec.parse("m=model:/x").min_confidence == 0.0  # the drafter's default
    assert DrafterSpec.parse("m=model:/x~0").min_confidence == -1.0  # ~0: never stop early
    home = DrafterSpec.parse("m=model:~/drafts/d@bfloat16~0.5")
    assert (home.model_path, home.dtype, home.min_confidence) == ("~/drafts/d", "bfloat16", 0.5)
    assert DrafterSpec.parse("m=model:~/drafts/d").model_path == "~/drafts/d"
    with pytest.raises(ValueError, match="at most 1"):
        DrafterSpec.parse("m=model:/x~5")
    assert DrafterSpec.parse("s=suffix:off").memory_tokens == -1
    assert DrafterSpec.parse("s=suffix:24:0").memory_tokens == -1
