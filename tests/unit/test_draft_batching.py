"""The draft service's model worker: proposals that wait for a model drafter run as one batch, each gets
what it would get alone, and model-free proposals never wait for a model forward."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import ServicerContext

from banditspec.v1 import draft_pb2
from services.draft.server import DraftConfig, DraftServicer
from services.draft.specs import DrafterSpec

PROMPTS = [[5, 9, 13, 17], [4, 8, 15, 16, 23, 42, 7], [11, 12], [30, 31, 32, 33, 34, 35, 36, 37, 38]]


def request(session: str, drafter: str, prompt: list[int], gamma: int = 4) -> draft_pb2.ProposeRequest:
    return draft_pb2.ProposeRequest(session_id=session, drafter=drafter, num_tokens=gamma, new_context_ids=prompt)


@pytest.fixture
async def servicer(tiny_models):
    servicer = DraftServicer(DraftConfig(drafters=[], device="cpu", dtype="float32"))
    for spec in (f"m=model:{tiny_models.target}~0", "pld=prompt_lookup"):
        await servicer.load(DrafterSpec.parse(spec))
    yield servicer
    servicer.shutdown()


async def test_waiting_proposals_run_as_one_batch_with_the_drafts_they_get_alone(servicer):
    alone = [await servicer.Propose(request(f"alone{i}", "m", p), ServicerContext()) for i, p in enumerate(PROMPTS)]
    gate = threading.Event()
    holding = asyncio.create_task(servicer.models.run(gate.wait))  # a busy model thread
    await asyncio.sleep(0)
    batches_before = servicer.models.batches
    waiting = [
        asyncio.create_task(servicer.Propose(request(f"s{i}", "m", p), ServicerContext()))
        for i, p in enumerate(PROMPTS)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    together = await asyncio.gather(*waiting)
    await holding
    assert servicer.models.batches - batches_before == 1
    assert [list(r.draft_ids) for r in together] == [list(r.draft_ids) for r in alone]
    assert all(len(r.draft_ids) == 4 for r in together)


async def test_model_free_proposals_do_not_wait_for_the_model_thread(servicer):
    gate = threading.Event()
    holding = asyncio.create_task(servicer.models.run(gate.wait))
    await asyncio.sleep(0)
    try:
        model = asyncio.create_task(servicer.Propose(request("m0", "m", PROMPTS[0]), ServicerContext()))
        lookup = await asyncio.wait_for(servicer.Propose(request("p0", "pld", [1, 2, 3, 1, 2]), ServicerContext()), 5)
        assert list(lookup.draft_ids)[:2] == [3, 1]  # answered while the model thread is held
        assert not model.done()
    finally:
        gate.set()
    await model
    await holding


async def test_a_cancelled_proposal_leaves_its_batch(servicer):
    gate = threading.Event()
    holding = asyncio.create_task(servicer.models.run(gate.wait))
    await asyncio.sleep(0)
    kept = asyncio.create_task(servicer.Propose(request("kept", "m", PROMPTS[1]), ServicerContext()))
    dropped = asyncio.create_task(servicer.Propose(request("dropped", "m", PROMPTS[2]), ServicerContext()))
    await asyncio.sleep(0.05)
    dropped.cancel()
    await asyncio.sleep(0.05)  # the cancellation reaches the waiting proposal before the batch starts
    gate.set()
    assert len((await kept).draft_ids) == 4
    with pytest.raises(asyncio.CancelledError):
        await dropped
    await holding
    assert servicer.models.batches == 1 and servicer.models.batched_proposals == 1
    assert not servicer.models.work_waiting()


async def test_every_model_forward_runs_on_one_thread_and_a_load_leaves_no_thread_behind(tiny_models, monkeypatch):
    """GNU OpenMP gives each thread that runs a parallel region a team of its own, and a second team slows
    every forward (model_worker.py): proposals and lookahead share the worker thread, and a model is
    loaded on a thread that exits after."""
    import services.draft.server as draft_server

    loaders: list[threading.Thread] = []
    build = draft_server.build_drafter

    def recorded_build(*args):
        loaders.append(threading.current_thread())
        return build(*args)

    monkeypatch.setattr(draft_server, "build_drafter", recorded_build)
    servicer = DraftServicer(DraftConfig(drafters=[], device="cpu", dtype="float32"))
    try:
        drafter, _ = await servicer.load(DrafterSpec.parse(f"ahead=model:{tiny_models.target}^4"))
        assert drafter.looks_ahead
        (loader,) = loaders
        loader.join(timeout=10)
        assert not loader.is_alive()
        ran_on: dict[str, set[int]] = {"propose": set(), "lookahead": set()}
        propose_batch, draft_ahead = drafter.propose_batch, drafter.draft_ahead

        def recorded_propose(*args, **kwargs):
            ran_on["propose"].add(threading.get_native_id())
            return propose_batch(*args, **kwargs)

        def recorded_ahead(*args, **kwargs):
            ran_on["lookahead"].add(threading.get_native_id())
            return draft_ahead(*args, **kwargs)

        monkeypatch.setattr(drafter, "propose_batch", recorded_propose)
        monkeypatch.setattr(drafter, "draft_ahead", recorded_ahead)
        for i, prompt in enumerate(PROMPTS):
            await servicer.Propose(request(f"s{i}", "ahead", prompt), ServicerContext())
        for _ in range(200):  # the lookahead runs after its proposal returns
            if ran_on["lookahead"]:
                break
            await asyncio.sleep(0.05)
        await servicer.models.run(lambda: None)  # after any lookahead still queued
        assert ran_on["lookahead"], "no lookahead ran"
        assert len(ran_on["propose"] | ran_on["lookahead"]) == 1
        assert loader.native_id not in ran_on["propose"]
    finally:
        servicer.shutdown()
