"""The target answers Info only once its start-up measurements are done: a controller that asked while it
measured would have taken empty forward curves for the target's (and exited on a missing decode step)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from banditspec.errors import Unavailable
from banditspec.v1 import target_pb2
from services.target.engine import TargetEngine
from services.target.server import TargetConfig, TargetServicer


def test_info_is_unavailable_until_the_forwards_are_measured(tiny_models, monkeypatch):
    measuring, finish = threading.Event(), threading.Event()
    measure = TargetEngine.measure_forwards

    def held(engine: TargetEngine) -> list[float]:
        measuring.set()
        finish.wait(60)
        return measure(engine)

    monkeypatch.setattr(TargetEngine, "measure_forwards", held)
    servicer = TargetServicer()
    config = TargetConfig(model=str(tiny_models.target), device="cpu", dtype="float32")
    loading = threading.Thread(target=servicer.load, args=(config,))
    loading.start()
    info = TargetServicer.Info.__wrapped__  # the method itself; the decorator turns its errors into statuses
    try:
        assert measuring.wait(60)
        with pytest.raises(Unavailable, match="still loading"):
            asyncio.run(info(servicer, target_pb2.TargetInfoRequest(), None))
    finally:
        finish.set()
        loading.join(120)
    response = asyncio.run(info(servicer, target_pb2.TargetInfoRequest(), None))
    assert len(response.forward_seconds) >= 1 and response.decode_step_seconds > 0
    assert len(response.batch_forward_seconds) == len(response.batch_forward_rows) >= 1
    assert servicer.scheduler is not None
