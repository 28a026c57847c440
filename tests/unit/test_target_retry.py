"""TargetSession's retries: UNAVAILABLE is retried with backoff and the full context until the round's time
is nearly spent, then Unavailable says why; SESSION_LOST is retried once at once; other errors are not."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from banditspec.errors import REASON_KEY, SESSION_LOST, Unavailable
from banditspec.sampling import SamplingParams
from services.controller.clients import GIVE_UP_MARGIN_SECONDS, TargetSession
from services.controller.domain import Deadline


def rpc_error(code: grpc.StatusCode, trailers=()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "from the fake")


class FakeStub:
    def __init__(self, errors: list[grpc.aio.AioRpcError]) -> None:
        self.errors = errors
        self.requests: list = []
        self.VerifyStream = None

    async def OpenSession(self, request, timeout):
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return type("Response", (), {"compute_seconds": 0.25})()


class FakeClient:
    address = "fake:1"

    def __init__(self, errors) -> None:
        self.stub = FakeStub(errors)


def session(errors, seconds: float = 60.0) -> TargetSession:
    return TargetSession(FakeClient(errors), "s", SamplingParams(), 7, Deadline(seconds, 60.0))  # type: ignore[arg-type]


def test_unavailable_is_retried_until_the_target_answers():
    target = session([rpc_error(grpc.StatusCode.UNAVAILABLE)] * 3)
    assert asyncio.run(target.open([3, 4, 5])) == 0.25
    assert target.retries == 3 and len(target.client.stub.requests) == 4


def test_a_target_that_stays_away_is_unavailable_before_the_deadline():
    target = session([rpc_error(grpc.StatusCode.UNAVAILABLE)] * 1000, seconds=1.5)
    start = time.monotonic()
    with pytest.raises(Unavailable, match="target service at fake:1 unavailable for"):
        asyncio.run(target.open([3, 4, 5]))
    assert time.monotonic() - start < 1.5 - GIVE_UP_MARGIN_SECONDS / 2


def test_session_lost_is_retried_once_and_other_errors_not_at_all():
    lost = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, [(REASON_KEY, SESSION_LOST)])
    assert asyncio.run(session([lost]).open([3])) == 0.25
    with pytest.raises(grpc.aio.AioRpcError):
        asyncio.run(session([lost, lost]).open([3]))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(session([rpc_error(grpc.StatusCode.INTERNAL)]).open([3]))
    assert error.value.code() == grpc.StatusCode.INTERNAL
