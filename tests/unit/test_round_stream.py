"""RoundStream: a stream that ended between rounds (its service went away) is replaced, not written to."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.controller.clients import RoundStream


class FakeCall:
    def __init__(self, finished: bool = False, racy: bool = False) -> None:
        self.finished, self.racy, self.cancelled = finished, racy, False

    def done(self) -> bool:
        return self.finished

    async def write(self, request):
        if self.finished or self.racy:  # grpc.aio's answer to a write on a finished call
            raise asyncio.InvalidStateError("RPC already finished.")

    async def read(self):
        return "answer"

    def cancel(self) -> None:
        self.cancelled = True


def test_an_ended_stream_is_replaced_before_the_next_round():
    calls = [FakeCall(), FakeCall()]
    stream = RoundStream(lambda timeout: calls.pop(0), lambda: 60.0)
    assert asyncio.run(stream.exchange("round 1", 1.0)) == "answer"
    assert stream.call is not None
    stream.call.finished = True  # the service went away between rounds
    assert asyncio.run(stream.exchange("round 2", 1.0)) == "answer"
    assert not calls  # a second stream was opened


def test_a_stream_ending_just_before_the_write_is_unavailable():
    stream = RoundStream(lambda timeout: FakeCall(racy=True), lambda: 60.0)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(stream.exchange("round", 1.0))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stream.call is None
