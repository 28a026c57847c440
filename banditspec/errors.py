"""Domain errors and their gRPC status, mapped once at the service edge."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import grpc
import structlog

REASON_KEY = "banditspec-reason"
SESSION_LOST = "SESSION_LOST"

log = structlog.get_logger()


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL
    reason = ""


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class OutOfRange(ServiceError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class SessionLost(ServiceError):
    """The service does not hold this session (restart, eviction): the caller resends the full context."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = SESSION_LOST


class SessionReleased(ServiceError):
    """A call for a session its caller already released (it arrived late): not reopened."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfSync(SessionLost):
    """The caller's idea of the session's context length differs from the service's."""


def is_session_lost(error: grpc.RpcError) -> bool:
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    trailers = error.trailing_metadata() or ()
    return any(key == REASON_KEY and value == SESSION_LOST for key, value in trailers)


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, ServiceError):
        if error.reason:
            context.set_trailing_metadata(((REASON_KEY, error.reason),))
        await context.abort(error.code, str(error))
    if isinstance(error, ValueError):  # validation in plain-Python layers
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    log.exception("unhandled error", error=repr(error))
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error!r}")


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain exceptions raised by an async servicer method (unary or streaming) into statuses."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as error:  # every failure becomes a status, never a crash
                await _abort(context, error)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # every failure becomes a status, never a crash
            await _abort(context, error)

    return unary_wrapper
