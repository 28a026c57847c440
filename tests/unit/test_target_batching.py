"""The target engine's batching: sessions stepped together get the verdicts each would get alone, prompts
prefill in chunks beside other sessions' rounds, one forward stays within its token budget, and one bad job
fails alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from banditspec.errors import OutOfSync, SessionLost, SessionReleased
from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from services.target.engine import OpenJob, TargetEngine, VerifyJob, VerifyResult

GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_causal_lm(tiny_models.target, device="cpu", dtype="float32")


def prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (5 + 7 * i,), generator=generator).tolist() for i in range(count)]


def drain(engine: TargetEngine, jobs: list) -> int:
    """Step until every job is done; returns the number of forwards."""
    steps = 0
    while not all(job.done for job in jobs):
        engine.step([job for job in jobs if not job.done])
        steps += 1
    return steps


def test_batched_rounds_equal_each_session_alone(loaded, tiny_models):
    alone, batched = TargetEngine(loaded), TargetEngine(loaded)
    texts = prompts(5, tiny_models.vocab_size)
    for index, prompt in enumerate(texts):
        alone.open(f"s{index}", prompt, GREEDY, seed=0)
    opens = [OpenJob(f"s{i}", context_ids=p, sampling=GREEDY) for i, p in enumerate(texts)]
    drain(batched, opens)
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):  # rounds with drafts of different lengths, some right, most wrong
        jobs, expected = [], []
        for index in range(len(texts)):
            session = alone.sessions.get(f"s{index}")
            draft = torch.randint(3, tiny_models.vocab_size, (index % 4,), generator=generator).tolist()
            expected.append(alone.verify(f"s{index}", len(session.context), draft, None))
            jobs.append(VerifyJob(f"s{index}", context_length=len(session.context) - len(expected[-1].verdict.tokens),
                                  draft_ids=draft))  # fmt: skip
        assert drain(batched, jobs) == 1  # one forward for every session's round
        for job, want in zip(jobs, expected, strict=True):
            assert isinstance(job.result, VerifyResult)
            assert job.result.verdict == want.verdict
            assert job.result.batch.rows == len(texts)
    for index in range(len(texts)):
        assert batched.sessions.get(f"s{index}").context == alone.sessions.get(f"s{index}").context


def test_a_long_prompt_prefills_in_chunks_beside_other_rounds(loaded, tiny_models):
    engine = TargetEngine(loaded, prefill_chunk=8, max_batch_tokens=64)
    engine.open("short", [5, 6, 7], GREEDY, seed=0)
    long_prompt = prompts(1, tiny_models.vocab_size, seed=3)[0] * 3  # 15 tokens → 14 to prefill
    opening = OpenJob("long", context_ids=long_prompt, sampling=GREEDY)
    rounds = 0
    while not opening.done:
        context = engine.sessions.get("short").context
        verify = VerifyJob("short", context_length=len(context), draft_ids=[])
        engine.step([opening, verify])
        assert verify.done and verify.error is None  # the short session's round never waits for the prompt
        batch = verify.result.batch
        assert (batch.rows, batch.prefill_rows) == (2, 1)  # the verify's forward says which row prefilled
        assert batch.prefill_tokens == [8, 6][rounds] == batch.tokens - 1
        rounds += 1
    assert rounds == 2  # 14 prompt tokens in chunks of 8
    alone = TargetEngine(loaded)
    alone.open("long", long_prompt, GREEDY, seed=0)
    first = engine.verify("long", len(long_prompt), [], None).verdict
    assert first == alone.verify("long", len(long_prompt), [], None).verdict


def test_one_forward_stays_within_its_token_budget(loaded, tiny_models):
    engine = TargetEngine(loaded, max_batch_tokens=10)
    for index, prompt in enumerate(prompts(3, tiny_models.vocab_size)):
        engine.open(f"s{index}", prompt, GREEDY, seed=0)
    jobs = [
        VerifyJob(f"s{i}", context_length=len(engine.sessions.get(f"s{i}").context), draft_ids=[4, 5, 6, 7])
        for i in range(3)
    ]
    engine.step(jobs)  # 5 tokens each: two rows fit, the third waits
    assert [job.done for job in jobs] == [True, True, False]
    assert jobs[0].result.batch.tokens == 10
    engine.step(jobs[2:])
    assert jobs[2].done and jobs[2].result.batch.rows == 1


def test_a_bad_job_fails_alone(loaded, tiny_models):
    engine = TargetEngine(loaded)
    engine.open("good", [5, 6, 7], GREEDY, seed=0)
    good = VerifyJob("good", context_length=3, draft_ids=[8])
    stale = VerifyJob("good", context_length=3, draft_ids=[9])  # the same session: waits for the next forward
    lost = VerifyJob("nobody", context_length=3, draft_ids=[8])
    engine.step([good, stale, lost])
    assert good.done and good.error is None
    assert isinstance(lost.error, SessionLost)
    assert not stale.done
    engine.step([stale])
    assert isinstance(stale.error, OutOfSync)  # the session moved on: the caller's view is stale


def test_a_lost_session_reopens_inside_the_verify(loaded, tiny_models):
    engine, alone = TargetEngine(loaded), TargetEngine(loaded)
    prompt = prompts(1, tiny_models.vocab_size, seed=5)[0]
    alone.open("s", prompt, GREEDY, seed=0)
    expected = alone.verify("s", len(prompt), [4, 5], None).verdict
    got = engine.verify("s", len(prompt), [4, 5], None, reopen=(prompt, GREEDY, 0)).verdict
    assert got == expected


def test_a_retried_verify_reopens_a_session_that_moved_on(loaded, tiny_models):
    """A verdict the caller never got (the stream broke after the target committed it): the retry carries
    the caller's context and gets the same verdict again, not OutOfSync."""
    engine = TargetEngine(loaded)
    prompt = prompts(1, tiny_models.vocab_size, seed=6)[0]
    engine.open("s", prompt, GREEDY, seed=0)
    first = engine.verify("s", len(prompt), [4, 5], None).verdict  # the session now holds more tokens
    again = engine.verify("s", len(prompt), [4, 5], None, reopen=(prompt, GREEDY, 0)).verdict
    assert again == first


def test_scheduler_survives_cancelled_callers_and_drops_released_sessions_jobs(loaded, tiny_models):
    """A cancelled call's job is dropped, or answered into the void; the scheduler keeps serving. Releasing a
    session drops its jobs not yet started, so a late open cannot bring it back."""
    from services.target.scheduler import Scheduler

    engine = TargetEngine(loaded)
    scheduler = Scheduler(engine)
    prompt = prompts(1, tiny_models.vocab_size, seed=7)[0]

    async def scenario() -> None:
        for pause in range(20):  # cancel at whatever point the scheduler is
            future = scheduler.submit(OpenJob("c", context_ids=prompt, sampling=GREEDY, seed=0))
            for _ in range(pause % 4):
                await asyncio.sleep(0)
            future.cancel()
        await asyncio.sleep(0.2)
        scheduler.forget("c")
        engine.release("c")
        assert scheduler.pending() == 0
        assert await scheduler.submit(OpenJob("s", context_ids=prompt, sampling=GREEDY, seed=0))
        job = await scheduler.submit(VerifyJob("s", context_length=len(prompt), draft_ids=[4]))
        assert isinstance(job.result, VerifyResult)

        late = scheduler.submit(OpenJob("r", context_ids=prompt, sampling=GREEDY, seed=0))
        scheduler.forget("r")  # before the loop's next pass, when the open would have run
        with pytest.raises(SessionLost):
            await late
        engine.release("r")
        assert "r" not in engine.sessions

        # An open or reopening verify that reaches the service only after the release (it came on another
        # call, which a stalled service served later) is refused, not a session nobody will release.
        for late_job in (
            OpenJob("r", context_ids=prompt, sampling=GREEDY, seed=0),
            VerifyJob("r", context_length=len(prompt), draft_ids=[4], reopen=(prompt, GREEDY, 0)),
        ):
            with pytest.raises(SessionReleased):
                await scheduler.submit(late_job)
        assert "r" not in engine.sessions
        await scheduler.close()
        with pytest.raises(RuntimeError, match="stopped"):
            scheduler.submit(OpenJob("t", context_ids=prompt, sampling=GREEDY, seed=0))

    asyncio.run(scenario())


def test_a_forward_waits_for_returning_sessions_until_they_leave(loaded, tiny_models, monkeypatch):
    """A forward waits a while for sessions whose next round is on its way; a session whose request ended
    stops that wait at once, and a wait that runs out is reported as such."""
    from services.target import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "GATHER_SHARE", 1e6)
    gathers: list[tuple[float, bool]] = []
    engine = TargetEngine(loaded)
    scheduler = scheduler_module.Scheduler(
        engine, on_gather=lambda seconds, expired: gathers.append((seconds, expired))
    )
    first, second = prompts(2, tiny_models.vocab_size, seed=3)

    async def scenario() -> None:
        monkeypatch.setattr(scheduler_module, "MAX_GATHER_SECONDS", 0.0)
        await asyncio.gather(
            scheduler.submit(OpenJob("a", context_ids=first, sampling=GREEDY, seed=0)),
            scheduler.submit(OpenJob("b", context_ids=second, sampling=GREEDY, seed=0)),
        )
        await asyncio.gather(
            scheduler.submit(VerifyJob("a", context_length=len(first), draft_ids=[4])),
            scheduler.submit(VerifyJob("b", context_length=len(second), draft_ids=[4])),
        )
        monkeypatch.setattr(scheduler_module, "MAX_GATHER_SECONDS", 60.0)  # longer than the test may take
        waiting = scheduler.submit(VerifyJob("a", context_length=len(first) + 1, draft_ids=[5]))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # held for b's next round
        scheduler.leaving("b")  # b's request ended instead
        job = await asyncio.wait_for(waiting, timeout=30)
        assert isinstance(job.result, VerifyResult)
        assert gathers and gathers[-1][1] is False

        monkeypatch.setattr(scheduler_module, "MAX_GATHER_SECONDS", 0.05)
        again = await scheduler.submit(VerifyJob("a", context_length=job.result.context_length, draft_ids=[6]))
        assert isinstance(again.result, VerifyResult)
        await scheduler.submit(VerifyJob("b", context_length=len(second) + 1, draft_ids=[6]))
        await scheduler.submit(VerifyJob("a", context_length=again.result.context_length, draft_ids=[7]))
        assert gathers[-1][1] is True  # b had come back once, so a waited for it in vain
        await scheduler.close()

    asyncio.run(scenario())
