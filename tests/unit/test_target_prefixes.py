"""Prompt prefixes the target reuses: a new session whose prompt starts like an open session's context or a
released session's cache starts from those keys and values, and verifies exactly as if it had prefilled
them; released caches give their slots back before the pool would grow."""

from __future__ import annotations

import pytest
import torch

from banditspec.errors import SessionReleased
from banditspec.lean_llama import POOL_SLOTS
from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from services.target.engine import OpenJob, TargetEngine
from services.target.prefixes import MIN_REUSED_TOKENS

GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_causal_lm(tiny_models.target, device="cpu", dtype="float32")


def tokens(count: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def rounds(engine: TargetEngine, session_id: str, vocab: int, count: int = 4) -> list:
    """Verdicts of a few rounds with drafts of mixed lengths (the same drafts on every engine)."""
    generator = torch.Generator().manual_seed(7)
    verdicts = []
    for index in range(count):
        draft = torch.randint(3, vocab, (index % 3,), generator=generator).tolist()
        context = engine.sessions.get(session_id).context
        verdicts.append(engine.verify(session_id, len(context), draft, None).verdict)
    return verdicts


def prefilled(engine: TargetEngine, session_id: str, prompt: list[int]) -> int:
    """Open a session; returns how many prompt tokens its forwards fed."""
    job = OpenJob(session_id, context_ids=prompt, sampling=GREEDY)
    fed = 0
    while not job.done:
        batch = engine.step([job])
        fed += batch.prefill_tokens if batch is not None else 0
    assert job.error is None
    return fed


def test_a_prompt_starting_like_an_open_session_copies_its_prefix(loaded, tiny_models):
    vocab = tiny_models.vocab_size
    shared = tokens(20, vocab, seed=1)
    first, second = shared + tokens(9, vocab, seed=2), shared + tokens(6, vocab, seed=3)
    engine, plain = TargetEngine(loaded), TargetEngine(loaded, prefix_reuse=False)
    assert prefilled(engine, "a", first) == len(first) - 1
    assert prefilled(engine, "b", second) == len(second) - 1 - len(shared)  # the shared 20 are copied
    assert engine.prefixes is not None and engine.prefixes.stats.reused_tokens == len(shared)
    assert prefilled(plain, "b", second) == len(second) - 1
    held, fresh = engine.sessions.get("b").cache, plain.sessions.get("b").cache
    torch.testing.assert_close(held.keys[:, :, : held.length], fresh.keys[:, :, : fresh.length])
    torch.testing.assert_close(held.values[:, :, : held.length], fresh.values[:, :, : fresh.length])
    assert rounds(engine, "b", vocab) == rounds(plain, "b", vocab)
    assert rounds(engine, "a", vocab) == rounds(plain_with(loaded, "a", first), "a", vocab)  # the source is intact


def plain_with(loaded, session_id: str, prompt: list[int]) -> TargetEngine:
    engine = TargetEngine(loaded, prefix_reuse=False)
    engine.open(session_id, prompt, GREEDY, seed=0)
    return engine


def test_a_released_session_cache_is_taken_over_by_the_next_prompt_like_it(loaded, tiny_models):
    vocab = tiny_models.vocab_size
    conversation = tokens(16, vocab, seed=4)
    engine = TargetEngine(loaded)
    engine.open("turn-1", conversation, GREEDY, seed=0)
    rounds(engine, "turn-1", vocab)
    answered = engine.sessions.get("turn-1").context
    slot = engine.sessions.get("turn-1").cache.slot
    assert engine.release("turn-1")
    assert engine.prefixes is not None and engine.prefixes.retained == 1
    follow_up = answered + tokens(5, vocab, seed=5)  # the next turn sends the whole conversation again
    assert prefilled(engine, "turn-2", follow_up) == len(follow_up) - len(answered)  # the last answer token
    assert engine.sessions.get("turn-2").cache.slot == slot  # no copy: the released cache itself
    assert engine.prefixes.retained == 0
    assert rounds(engine, "turn-2", vocab) == rounds(plain_with(loaded, "turn-2", follow_up), "turn-2", vocab)


def test_retained_caches_give_way_before_the_pool_grows(loaded, tiny_models):
    vocab = tiny_models.vocab_size
    engine = TargetEngine(loaded)
    assert engine.decoder is not None and engine.decoder.pool is not None and engine.prefixes is not None
    for index in range(3):
        engine.open(f"old{index}", tokens(12, vocab, seed=10 + index), GREEDY, seed=0)
        engine.release(f"old{index}")
    assert engine.prefixes.retained == 3
    for index in range(POOL_SLOTS):
        engine.open(f"new{index}", tokens(12, vocab, seed=20 + index), GREEDY, seed=0)
    assert engine.decoder.pool.slots == POOL_SLOTS  # the retained caches made room
    assert engine.prefixes.retained == 0


def test_retention_keeps_the_longest_of_a_conversation_and_refuses_short_or_released_ids(loaded, tiny_models):
    vocab = tiny_models.vocab_size
    engine = TargetEngine(loaded, retained_prefixes=2)
    assert engine.prefixes is not None
    base = tokens(12, vocab, seed=30)
    engine.open("short", tokens(MIN_REUSED_TOKENS - 2, vocab, seed=31), GREEDY, seed=0)
    engine.release("short")
    assert engine.prefixes.retained == 0  # too short to be worth keeping
    engine.open("t1", base, GREEDY, seed=0)
    engine.release("t1")
    engine.open("t2", base + tokens(4, vocab, seed=32), GREEDY, seed=0)  # takes t1's cache over
    engine.release("t2")
    assert engine.prefixes.retained == 1
    with pytest.raises(SessionReleased):
        engine.open("t2", base, GREEDY, seed=0)
    assert engine.prefixes.retained == 1  # a refused open takes no cache
    for index in range(3):
        engine.open(f"x{index}", tokens(12, vocab, seed=40 + index), GREEDY, seed=0)
        engine.release(f"x{index}")
    assert engine.prefixes.retained == 2  # at most `retained_prefixes`
    engine.prefixes.clear()
    assert engine.prefixes.retained == 0
