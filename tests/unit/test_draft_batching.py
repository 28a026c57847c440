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
