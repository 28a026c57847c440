"""An OpenAI-compatible HTTP API in the controller process, on the gRPC server's event loop.

`GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions` (JSON, or server-sent events
with `stream: true`). A request becomes the same `GenerateRequest` a gRPC client would send and runs
through the same servicer method, so validation, limits, admission, metrics and the output are the gRPC
path's: greedy output is token-identical. Errors come back in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` with the HTTP status of their gRPC code; the bandit's
statistics ride in an extension field `banditspec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import grpc
import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from banditspec.errors import ServiceError
from banditspec.policy_names import POLICY_WIRE_VALUES
from banditspec.security import ServerTLS, tokens_match
from banditspec.serving import DRAIN_SECONDS
from banditspec.v1 import generation_pb2

log = structlog.get_logger()

# gRPC status → (HTTP status, OpenAI error type).
HTTP_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
FINISH_REASONS = {
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_CONTEXT: "length",
    generation_pb2.FINISH_REASON_EOS: "stop",
    generation_pb2.FINISH_REASON_STOP: "stop",
}
# Parameters of OpenAI's API this server does not implement: a request that sets them is refused rather
# than answered as if they had been honoured.
UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "tools",
    "functions",
    "logit_bias",
    "audio",
    "presence_penalty",
    "frequency_penalty",
    "prediction",
)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DISCONNECT_POLL_SECONDS = 0.5  # how often a request waiting for its answer checks that its client is there
T = TypeVar("T")


# errors ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request that failed with a gRPC status (from the servicer, or raised here)."""

    def __init__(self, code: grpc.StatusCode, message: str, param: str | None = None, error_code: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_code = error_code


def error_body(code: grpc.StatusCode, message: str, param: str | None = None, error_code: str | None = None):
    """(HTTP status, OpenAI error object) for a gRPC status."""
    status, kind = HTTP_STATUS.get(code, (500, "server_error"))
    return status, {
        "error": {"message": message, "type": kind, "param": param, "code": error_code or code.name.lower()}
    }


def error_response(error: ApiError) -> JSONResponse:
    status, body = error_body(error.code, error.message, error.param, error.error_code)
    return JSONResponse(body, status_code=status)


class CallContext:
    """What the servicer's methods use of a grpc.aio.ServicerContext, for a call that came over HTTP:
    `abort` raises ApiError, and a request has no deadline beyond the client's own."""

    def __init__(self, timeout: float | None = None) -> None:
        self._expires = None if timeout is None else time.monotonic() + timeout

    def time_remaining(self) -> float | None:
        return None if self._expires is None else max(0.0, self._expires - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise ApiError(code, details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer(self) -> str:
        return "http"

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def add_done_callback(self, callback: Callable[..., Any]) -> None:
        pass

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass


# requests --------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are accepted and ignored, as OpenAI's own SDKs add
    new ones; those this server cannot honour (UNSUPPORTED, n > 1) are refused."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # banditspec's own (extra_body in OpenAI's client): the gRPC request's fields of the same names.
    top_k: int | None = None
    policy: str | None = None
    allowed_arms: list[str] | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str]
    best_of: int | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


def _refuse_unsupported(body: _Common) -> None:
    extra = body.model_extra or {}
    for name in UNSUPPORTED:
        value = extra.get(name)
        if value not in (None, False, [], 0):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"'{name}' is not supported by this server", name)
    if body.n != 1:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"only n = 1 is supported, got n = {body.n}", "n")
    if isinstance(body, CompletionRequest) and body.best_of not in (None, 1):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "only best_of = 1 is supported", "best_of")
    response_format = extra.get("response_format")
    if response_format and not (isinstance(response_format, dict) and response_format.get("type") == "text"):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "only response_format 'text' is supported", "response_format")
    if extra.get("tool_choice") not in (None, "none"):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "tools are not supported by this server", "tool_choice")


def _common_fields(body: _Common, request: generation_pb2.GenerateRequest) -> None:
    if body.temperature is not None:
        request.temperature = body.temperature
    if body.top_p is not None:
        request.top_p = body.top_p
    if body.seed is not None:
        request.seed = body.seed
    if body.stop:
        request.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    if body.top_k is not None:
        request.top_k = body.top_k
    if body.policy is not None:
        if body.policy not in POLICY_WIRE_VALUES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown policy {body.policy!r}; one of {', '.join(POLICY_WIRE_VALUES)}",
                "policy",
            )
        request.policy = POLICY_WIRE_VALUES[body.policy]  # type: ignore[assignment]  # an enum int
    request.allowed_arms.extend(body.allowed_arms or [])
    request.request_id = uuid.uuid4().hex[:16]


def _max_tokens(value: int | None, param: str) -> int:
    if value is not None and value <= 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{param} must be > 0, got {value}", param)
    return value or 0


def completion_to_pb(body: CompletionRequest) -> generation_pb2.GenerateRequest:
    """A /v1/completions request as the gRPC request; max_new_tokens 0 when unset (the caller fills it)."""
    _refuse_unsupported(body)
    request = generation_pb2.GenerateRequest(max_new_tokens=_max_tokens(body.max_tokens, "max_tokens"))
    prompt = body.prompt
    if isinstance(prompt, str):
        request.text = prompt
    elif prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "only one prompt per request is supported", "prompt")
        request.text = str(prompt[0])
    else:
        request.token_ids.ids.extend(int(p) for p in prompt)
    _common_fields(body, request)
    return request


def _content(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, f"content parts of type {part.type!r} are not supported", "messages"
            )
        texts.append(part.text)
    return "".join(texts)


def chat_to_pb(body: ChatCompletionRequest) -> generation_pb2.GenerateRequest:
    """A /v1/chat/completions request as the gRPC request (its ChatPrompt: the tokenizer's chat template)."""
    _refuse_unsupported(body)
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    request = generation_pb2.GenerateRequest(max_new_tokens=_max_tokens(limit, param))
    for message in body.messages:
        request.chat.messages.add(role=message.role, content=_content(message))
    if not body.messages:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "messages must not be empty", "messages")
    _common_fields(body, request)
    return request


# responses -------------------------------------------------------------------------------------


def usage(response: generation_pb2.GenerateResponse) -> dict[str, int]:
    prompt, completion = response.stats.prompt_tokens, response.stats.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extension(response: generation_pb2.GenerateResponse) -> dict[str, Any]:
    """The `banditspec` field: the request's id, its tokens and the bandit's statistics (GenerationStats)."""
    stats = json_format.MessageToDict(
        response.stats, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    stats["seed"] = int(stats["seed"])  # uint64 is a JSON string in proto3's mapping
    return {"request_id": response.request_id, "token_ids": list(response.token_ids), **stats}


def finish_reason(response: generation_pb2.GenerateResponse) -> str:
    return FINISH_REASONS.get(response.finish_reason, "stop")


def completion_body(response: generation_pb2.GenerateResponse, model: str, created: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{response.request_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": response.text, "logprobs": None, "finish_reason": finish_reason(response)}],
        "usage": usage(response),
        "banditspec": extension(response),
    }


def chat_body(response: generation_pb2.GenerateResponse, model: str, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{response.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.text},
                "logprobs": None,
                "finish_reason": finish_reason(response),
            }
        ],
        "usage": usage(response),
        "banditspec": extension(response),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class ChunkWriter:
    """OpenAI's streaming chunks for one request: text deltas, the finishing chunk, usage, [DONE]."""

    def __init__(self, chat: bool, request_id: str, model: str, created: int, include_usage: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }

    def _chunk(self, choice: dict[str, Any], **extra: Any) -> bytes:
        choice = {"index": 0, **choice, "logprobs": None}
        if self.chat:
            choice.setdefault("finish_reason", None)
        else:
            choice = {"index": 0, "text": choice.get("text", ""), "logprobs": None}
            choice["finish_reason"] = extra.pop("finish_reason", None)
        return sse({**self.head, "choices": [choice], **({"usage": None} if self.include_usage else {}), **extra})

    def start(self) -> bytes | None:
        """Chat streams open with the assistant's role."""
        return self._chunk({"delta": {"role": "assistant", "content": ""}}) if self.chat else None

    def text(self, delta: str) -> bytes:
        return self._chunk({"delta": {"content": delta}} if self.chat else {"text": delta})

    def finish(self, response: generation_pb2.GenerateResponse) -> list[bytes]:
        reason = finish_reason(response)
        if self.chat:
            last = self._chunk({"delta": {}, "finish_reason": reason}, banditspec=extension(response))
        else:
            last = self._chunk({"text": ""}, finish_reason=reason, banditspec=extension(response))
        out = [last]
        if self.include_usage:
            out.append(sse({**self.head, "choices": [], "usage": usage(response)}))
        out.append(sse("[DONE]"))
        return out


# the app ---------------------------------------------------------------------------------------


class Backend:
    """What the HTTP layer needs from the controller: the servicer's two generation methods, the
    model's name and limits, the tokenizer's prompt length, and the API key."""

    def __init__(self, servicer: Any, api_key: str | None, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self.servicer = servicer
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes  # the gRPC server's message limit, for request bodies
        self.created = int(time.time())

    @property
    def controller(self) -> Any:
        return self.servicer.controller

    def model_names(self) -> list[str]:
        """The target's model: its directory's name first (the id /v1/models lists), then its full name."""
        if self.controller.tokenizer is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "the controller is still connecting")
        full = self.controller.target.info.model_name
        short = Path(full).name or full
        return list(dict.fromkeys([short, full]))

    def check_model(self, model: str) -> str:
        names = self.model_names()
        if model not in names:
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                f"The model '{model}' does not exist; this server serves '{names[0]}'",
                "model",
                "model_not_found",
            )
        return names[0]

    def fill_max_tokens(self, request: generation_pb2.GenerateRequest) -> None:
        """Unset max_tokens: OpenAI's 16 for completions; for chat, what the target's context leaves."""
        if request.max_new_tokens:
            return
        if request.WhichOneof("prompt") != "chat":
            request.max_new_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
            return
        from services.controller.requests import prompt_ids  # the gRPC path's own chat template rendering

        info = self.controller.target.info
        try:
            length = len(prompt_ids(request, self.controller.tokenizer, info.vocab_size))
        except ServiceError as error:  # InvalidArgument, reported as the gRPC path would
            raise ApiError(error.code, str(error)) from error
        request.max_new_tokens = max(1, info.max_context - length)

    async def generate(self, request: generation_pb2.GenerateRequest) -> generation_pb2.GenerateResponse:
        return await self.servicer.Generate(request, CallContext())

    def stream(self, request: generation_pb2.GenerateRequest) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        return self.servicer.GenerateStream(request, CallContext())


def _bearer(headers: Headers) -> str | None:
    header = headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _Guard:
    """Before a request reaches a route: its body's size (bounded as gRPC messages are; a chunked body,
    with no length, is refused) and the API key on /v1/. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would hide a client's disconnect from the routes."""

    def __init__(self, app: ASGIApp, backend: Backend) -> None:
        self.app = app
        self.backend = backend

    def _refusal(self, path: str, headers: Headers) -> JSONResponse | None:
        length = headers.get("content-length", "0")
        limit = self.backend.max_body_bytes
        if "transfer-encoding" in headers or not length.isdigit() or int(length) > limit:
            _, body = error_body(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request body is larger than {limit} bytes (or has no valid length)",
                error_code="request_too_large",
            )
            return JSONResponse(body, status_code=413)
        if self.backend.api_key is None or not path.startswith("/v1/"):
            return None
        given = _bearer(headers)
        if not given:
            return error_response(
                ApiError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs an API key: send 'Authorization: Bearer <key>'",
                    error_code="missing_api_key",
                )
            )
        if not tokens_match(given, self.backend.api_key):
            return error_response(
                ApiError(grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid", error_code="invalid_api_key")
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope["path"], Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="banditspec", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path, error=repr(error))
        return error_response(ApiError(grpc.StatusCode.INTERNAL, f"internal error: {error!r}"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in problems
        )
        return error_response(ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, ".".join(location) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.INVALID_ARGUMENT}.get(
            error.status_code, grpc.StatusCode.INVALID_ARGUMENT
        )
        status, body = error_body(code, str(error.detail))
        return JSONResponse(body, status_code=error.status_code if error.status_code != 405 else status)

    app.add_middleware(_Guard, backend=backend)

    @app.get("/health")
    async def health() -> dict[str, str]:
        backend.model_names()  # UNAVAILABLE (503) while connecting
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        name = backend.model_names()[0]
        return {"object": "list", "data": [_model(name, backend.created)]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        return _model(backend.check_model(model), backend.created)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        name = backend.check_model(body.model)
        return await _run(backend, _with_id(completion_to_pb(body), request), body, name, chat=False, http=request)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        name = backend.check_model(body.model)
        return await _run(backend, _with_id(chat_to_pb(body), request), body, name, chat=True, http=request)

    return app


def _with_id(pb: generation_pb2.GenerateRequest, request: Request) -> generation_pb2.GenerateRequest:
    """A client's `X-Request-Id` (printable, at most 64 characters) becomes the request's id in the logs."""
    given = request.headers.get("x-request-id", "")
    if given and len(given) <= 64 and given.isprintable():
        pb.request_id = given
    return pb


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "banditspec"}


async def _until_disconnected(http: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled if the client hangs up first: an abandoned request (a client's timeout) stops
    generating, releases its sessions and frees its admission slot."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if await http.is_disconnected():
                raise ApiError(grpc.StatusCode.CANCELLED, "the client disconnected")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _run(
    backend: Backend,
    request: generation_pb2.GenerateRequest,
    body: _Common,
    model: str,
    chat: bool,
    http: Request,
) -> JSONResponse | StreamingResponse:
    created = int(time.time())
    backend.fill_max_tokens(request)
    if not body.stream:
        response = await _until_disconnected(http, backend.generate(request))
        return JSONResponse((chat_body if chat else completion_body)(response, model, created))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    writer = ChunkWriter(chat, request.request_id, model, created, include_usage)
    updates = backend.stream(request)
    # The first update comes after validation and admission: their errors are still an HTTP status.
    try:
        first = await _until_disconnected(http, anext(updates))
    except BaseException:
        await updates.aclose()  # type: ignore[attr-defined]
        raise
    return StreamingResponse(_events(updates, first, writer), media_type="text/event-stream")


async def _events(
    updates: AsyncIterator[generation_pb2.GenerateStreamResponse],
    first: generation_pb2.GenerateStreamResponse,
    writer: ChunkWriter,
) -> AsyncIterator[bytes]:
    # aclosing: a client that hangs up ends the generation (and releases its sessions) at once.
    async with aclosing(updates) as stream:  # type: ignore[type-var]
        start = writer.start()
        if start is not None:
            yield start
        update: generation_pb2.GenerateStreamResponse | None = first
        try:
            while update is not None:
                if update.HasField("round"):
                    if update.round.text:
                        yield writer.text(update.round.text)
                else:
                    for chunk in writer.finish(update.final):
                        yield chunk
                update = await anext(stream, None)
        except ApiError as error:  # after the first bytes the status is sent: the error goes in the stream
            yield sse(error_body(error.code, error.message, error.param, error.error_code)[1])
            yield sse("[DONE]")


# the server ------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the gRPC server's SIGTERM/SIGINT drain stops both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn serving `create_app(backend)` as a task on the running loop."""

    def __init__(
        self, backend: Backend, host: str, port: int, tls: ServerTLS | None = None, grace_seconds: float = DRAIN_SECONDS
    ) -> None:
        tls_options: dict[str, Any] = {}
        if tls is not None:
            tls_options = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
            if tls.client_ca:
                tls_options.update(ssl_ca_certs=tls.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        self.tls = tls is not None
        config = uvicorn.Config(
            create_app(backend),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(grace_seconds),
            **tls_options,
        )
        self.server = _Server(config)
        self.host = host
        self.port = port
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        try:  # bound here: uvicorn's own bind failure would exit the process from inside the event loop
            sock = self.server.config.bind_socket()
        except SystemExit as error:
            raise SystemExit(f"the HTTP API cannot bind {self.host}:{self.port} (see the error above)") from error
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self._task.done():
                raise SystemExit(f"the HTTP API did not start on {self.host}:{self.port}")
            await asyncio.sleep(0.02)
        scheme = "https" if self.tls else "http"
        log.info("OpenAI-compatible HTTP API", url=f"{scheme}://{self.host}:{self.port}/v1")

    async def stop(self) -> None:
        """Stop accepting, let running requests finish (up to the grace period), then close."""
        if self._task is None:
            return
        self.server.should_exit = True
        await self._task
        self._task = None

    def ready_info(self) -> dict[str, Any]:
        return {"http_port": self.port}
