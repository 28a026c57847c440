"""The draft registry's release finish-sync: drafters that learn from outputs see exactly the finished
answer, and nothing out of step with what the service holds."""

from __future__ import annotations

import pytest

from banditspec.errors import InvalidArgument
from banditspec.sampling import SamplingParams
from services.draft.drafters.prompt_lookup import PromptLookupDrafter
from services.draft.registry import MAX_DRAFT_TOKENS, DrafterRegistry


class Recorder:
    """A drafter that records what it was taught."""

    name, kind, vocab_fingerprint, source, device = "rec", "suffix", "", "test", "cpu"

    def __init__(self) -> None:
        self.taught: list[tuple[list[int], int]] = []

    def propose(self, session, num_tokens):
        raise NotImplementedError

    def finish(self, session) -> None:
        self.taught.append((list(session.context), session.prompt_length))

    def close(self) -> None:
        pass


@pytest.fixture
def registry():
    registry = DrafterRegistry()
    registry.add(Recorder())
    return registry


def test_whole_finished_context_is_learned_with_its_prompt_boundary(registry):
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    assert registry.release("s", 0, [1, 2, 3, 7, 8], prompt_length=3)
    assert registry.get("rec").taught == [([1, 2, 3, 7, 8], 3)]


def test_incremental_finish_sync_extends_the_held_session(registry):
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    registry.release("s", 3, [9, 9], prompt_length=3)
    assert registry.get("rec").taught == [([1, 2, 3, 9, 9], 3)]


def test_out_of_step_sync_is_not_learned(registry):
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    assert registry.release("s", 5, [9], prompt_length=3)  # released, but not learned from
    assert registry.get("rec").taught == []
    assert "s" not in registry.sessions


def test_a_context_never_held_needs_its_prompt_boundary(registry):
    assert not registry.release("x", 0, [1, 2, 3], prompt_length=0)
    assert registry.get("rec").taught == []
    assert not registry.release("x", 0, [1, 2, 3], prompt_length=2)  # nothing held, but learned
    assert registry.get("rec").taught == [([1, 2, 3], 2)]


def test_num_tokens_is_bounded():
    registry = DrafterRegistry()
    pld = PromptLookupDrafter("pld")
    registry.add(pld)
    session = registry.sync("s", 0, [1, 2, 1, 2], SamplingParams(), 0)
    with pytest.raises(InvalidArgument):
        registry.propose(pld, session, MAX_DRAFT_TOKENS + 1)
    assert registry.propose(pld, session, MAX_DRAFT_TOKENS)[0].token_ids == [1, 2]


def test_a_rejected_sync_leaves_the_session_as_it_was():
    registry = DrafterRegistry(max_context=8)
    registry.add(PromptLookupDrafter("pld"))
    session = registry.sync("s", 0, [1, 2, 1, 2], SamplingParams(), 0)
    for ids, vocab_size in (([3, -1], None), ([1] * 5, None), ([3, 50], 50), ([3], 3)):
        with pytest.raises(InvalidArgument):
            registry.sync("s", 4, ids, SamplingParams(), 0, vocab_size=vocab_size)
        assert session.context == [1, 2, 1, 2]
    assert registry.sync("s", 4, [3, 49], SamplingParams(), 0, vocab_size=50).context == [1, 2, 1, 2, 3, 49]
    with pytest.raises(InvalidArgument, match="at most 8 tokens"):
        registry.sync("t", 0, list(range(9)), SamplingParams(), 0)
