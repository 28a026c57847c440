"""Admission control: a bounded number of requests run, a bounded number wait in arrival order, and the
rest are refused at once with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio

import pytest

from banditspec.errors import ResourceExhausted
from services.controller.admission import Admission


async def test_running_waiting_and_refused():
    admission = Admission(limit=2, queue=1)
    release = asyncio.Event()
    order: list[int] = []

    async def request(index: int) -> None:
        async with admission.slot():
            order.append(index)
            await release.wait()

    running = [asyncio.create_task(request(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert (admission.running, admission.waiting) == (2, 1)
    with pytest.raises(ResourceExhausted, match="at capacity"):
        async with admission.slot():
            pass
    release.set()
    await asyncio.gather(*running)
    assert order == [0, 1, 2]  # the waiting request ran once a slot freed
    assert (admission.running, admission.waiting) == (0, 0)


async def test_a_failed_request_frees_its_slot():
    admission = Admission(limit=1, queue=0)
    with pytest.raises(RuntimeError):
        async with admission.slot():
            raise RuntimeError("boom")
    async with admission.slot():
        assert admission.running == 1
