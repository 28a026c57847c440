"""The OpenAI-compatible HTTP layer without services: request mapping, error shapes, stream chunks, and
the app in this process (uvicorn on a loopback port) over a fake servicer, called with the openai client."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import grpc
import openai
import pytest

from banditspec.errors import InvalidArgument, ResourceExhausted, Unavailable, grpc_errors
from banditspec.v1 import generation_pb2
from services.controller.openai_api import (
    ApiError,
    Backend,
    ChatCompletionRequest,
    ChunkWriter,
    CompletionRequest,
    HttpServer,
    chat_to_pb,
    completion_to_pb,
    error_body,
)

# mapping ---------------------------------------------------------------------------------------


def test_completion_maps_to_the_grpc_request():
    body = CompletionRequest(
        model="m",
        prompt="hello world",
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        seed=42,
        stop="\n",
        top_k=5,
        policy="exp3spec",
        allowed_arms=["local/pld/6"],
    )
    pb = completion_to_pb(body)
    assert pb.text == "hello world" and pb.max_new_tokens == 7
    assert pb.temperature == pytest.approx(0.5) and pb.top_p == pytest.approx(0.9) and pb.seed == 42
    assert list(pb.stop) == ["\n"] and pb.top_k == 5 and pb.policy == generation_pb2.POLICY_EXP3SPEC
    assert list(pb.allowed_arms) == ["local/pld/6"] and pb.request_id


def test_completion_defaults_leave_the_controllers_defaults():
    pb = completion_to_pb(CompletionRequest(model="m", prompt=[3, 4, 5]))
    assert list(pb.token_ids.ids) == [3, 4, 5] and pb.max_new_tokens == 0  # filled by the backend
    assert not pb.HasField("temperature") and not pb.HasField("top_p") and not pb.HasField("seed")
    assert completion_to_pb(CompletionRequest(model="m", prompt=["one"])).text == "one"


def test_chat_maps_messages_and_content_parts():
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            ],
            "max_tokens": 9,
            "max_completion_tokens": 4,
            "stop": ["a", "b"],
        }
    )
    pb = chat_to_pb(body)
    assert [(m.role, m.content) for m in pb.chat.messages] == [("system", "be brief"), ("user", "hi there")]
    assert pb.max_new_tokens == 4 and list(pb.stop) == ["a", "b"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 1}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"policy": "greedy"}, "policy"),
        ({"prompt": ["one", "two"]}, "prompt"),
    ],
)
def test_unsupported_completion_parameters_are_refused(extra, param):
    with pytest.raises(ApiError) as raised:
        completion_to_pb(CompletionRequest.model_validate({"model": "m", "prompt": "x", **extra}))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and raised.value.param == param


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": []}, "messages"),
    ],
)
def test_unsupported_chat_parameters_are_refused(extra, param):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(ApiError) as raised:
        chat_to_pb(ChatCompletionRequest.model_validate(body))
    assert raised.value.param == param


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
        (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
        (grpc.StatusCode.INTERNAL, 500, "server_error"),
    ],
)
def test_grpc_codes_become_http_statuses(code, status, kind):
    got, body = error_body(code, "why", "p")
    assert got == status
    assert body == {"error": {"message": "why", "type": kind, "param": "p", "code": code.name.lower()}}


def _response(text="a b", token_ids=(5, 6), finish=generation_pb2.FINISH_REASON_EOS) -> generation_pb2.GenerateResponse:
    stats = generation_pb2.GenerationStats(
        rounds=2, generated_tokens=len(token_ids), prompt_tokens=3, policy="ucbspec", seed=2**63 + 1
    )
    stats.arms.add(arm="local/pld/6", pulls=1, drafted_tokens=6, accepted_tokens=1, mean_reward=10.0)
    return generation_pb2.GenerateResponse(
        request_id="r1", text=text, token_ids=list(token_ids), finish_reason=finish, stats=stats
    )


def _events(chunks: list[bytes]) -> list:
    out = []
    for chunk in chunks:
        text = chunk.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        payload = text[len("data: ") : -2]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_chunks():
    writer = ChunkWriter(True, "r1", "tiny", 1, include_usage=True)
    start = writer.start()
    assert start is not None
    events = _events([start, writer.text("a"), writer.text(" b"), *writer.finish(_response())])
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["a", " b"]
    last = events[3]
    assert last["choices"][0]["finish_reason"] == "stop" and last["banditspec"]["token_ids"] == [5, 6]
    assert last["banditspec"]["seed"] == 2**63 + 1 and last["banditspec"]["arms"][0]["pulls"] == 1
    assert events[4]["choices"] == [] and events[4]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
    }
    assert events[5] == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == "chatcmpl-r1" for e in events[:5])


def test_completion_chunks():
    writer = ChunkWriter(False, "r1", "tiny", 1, include_usage=False)
    assert writer.start() is None
    finish = _response(finish=generation_pb2.FINISH_REASON_CONTEXT)
    events = _events([writer.text("a"), *writer.finish(finish)])
    assert events[0]["choices"][0] == {"index": 0, "text": "a", "logprobs": None, "finish_reason": None}
    assert events[1]["choices"][0]["finish_reason"] == "length" and "usage" not in events[1]
    assert events[2] == "[DONE]"


# the app in this process --------------------------------------------------------------------------


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def encode(self, text):
        return [3] * len(text.split())

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [3] * sum(len(m["content"].split()) for m in messages)


class FakeServicer:
    """The servicer's surface the HTTP layer calls, with its error decorator; `fail` raises before output,
    `fail_midway` after the first round."""

    def __init__(self) -> None:
        info = SimpleNamespace(model_name="/models/tiny", vocab_size=100, max_context=64)
        self.controller = SimpleNamespace(tokenizer=FakeTokenizer(), target=SimpleNamespace(info=info))
        self.fail: Exception | None = None
        self.fail_midway: Exception | None = None
        self.requests: list[generation_pb2.GenerateRequest] = []
        self.hang = False
        self.cancelled = asyncio.Event()

    @grpc_errors
    async def Generate(self, request, context):
        self.requests.append(request)
        if self.fail:
            raise self.fail
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return _response()

    @grpc_errors
    async def GenerateStream(self, request, context):
        self.requests.append(request)
        if self.fail:
            raise self.fail
        yield generation_pb2.GenerateStreamResponse(round=generation_pb2.RoundUpdate(round=1, text="a", token_ids=[5]))
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except (asyncio.CancelledError, GeneratorExit):
                self.cancelled.set()
                raise
        if self.fail_midway:
            raise self.fail_midway
        yield generation_pb2.GenerateStreamResponse(round=generation_pb2.RoundUpdate(round=2, text=" b", token_ids=[6]))
        yield generation_pb2.GenerateStreamResponse(final=_response())


@pytest.fixture
async def served():
    servicer = FakeServicer()
    server = HttpServer(Backend(servicer, api_key="k", max_body_bytes=64 * 1024), "127.0.0.1", 0)
    await server.start()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="k", max_retries=0)
    try:
        yield servicer, client
    finally:
        await client.close()
        await server.stop()


async def test_app_answers_and_streams(served):
    servicer, client = served
    assert [m.id async for m in client.models.list()] == ["tiny"]
    completion = await client.completions.create(model="tiny", prompt="x y", extra_headers={"X-Request-Id": "abc-1"})
    assert servicer.requests[-1].request_id == "abc-1"
    assert completion.choices[0].text == "a b" and completion.choices[0].finish_reason == "stop"
    assert servicer.requests[-1].max_new_tokens == 16  # OpenAI's default for completions
    chat = await client.chat.completions.create(model="/models/tiny", messages=[{"role": "user", "content": "x y z"}])
    assert chat.choices[0].message.content == "a b" and chat.model == "tiny"
    assert servicer.requests[-1].max_new_tokens == 64 - 3  # chat: what the context leaves
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=4
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b"


@pytest.mark.parametrize(
    ("error", "exception", "status"),
    [
        (InvalidArgument("bad"), openai.BadRequestError, 400),
        (ResourceExhausted("the queue is full"), openai.RateLimitError, 429),
        (Unavailable("still connecting"), openai.InternalServerError, 503),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_app_errors_before_output_are_statuses(served, error, exception, status, stream):
    servicer, client = served
    servicer.fail = error
    with pytest.raises(exception) as raised:
        result = await client.completions.create(model="tiny", prompt="x", max_tokens=3, stream=stream)
        if stream:
            [c async for c in result]  # type: ignore[union-attr]
    assert raised.value.status_code == status and raised.value.body["message"] == str(error)


async def test_app_error_midway_ends_the_stream_with_an_error_event(served):
    servicer, client = served
    servicer.fail_midway = Unavailable("target service: UNAVAILABLE")
    result = await client.completions.create(model="tiny", prompt="x", max_tokens=3, stream=True)
    with pytest.raises(openai.APIError, match="UNAVAILABLE"):
        [c async for c in result]


async def test_app_refuses_a_wrong_key_and_an_unknown_model(served):
    servicer, client = served
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="gpt-4", prompt="x")
    wrong = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    await wrong.close()
    assert servicer.requests == []


async def test_app_bounds_request_bodies(served):
    servicer, client = served
    with pytest.raises(openai.APIStatusError) as raised:
        await client.completions.create(model="tiny", prompt="x " * 40_000, max_tokens=3)
    assert raised.value.status_code == 413 and raised.value.body["code"] == "request_too_large"
    assert servicer.requests == []


async def test_app_refuses_penalties(served):
    _, client = served
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        await client.completions.create(model="tiny", prompt="x", presence_penalty=0.5)
    await client.completions.create(model="tiny", prompt="x", presence_penalty=0)


async def test_app_serves_https_with_the_grpc_certificate(tmp_path):
    import ssl

    trustme = pytest.importorskip("trustme")
    from banditspec.security import ServerTLS

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = ServerTLS(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    server = HttpServer(Backend(FakeServicer(), api_key=None), "127.0.0.1", 0, tls)
    await server.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    base_url = f"https://127.0.0.1:{server.port}/v1"
    try:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="none", max_retries=0, http_client=openai.DefaultAsyncHttpxClient(verify=context)
        ) as client:
            assert [m.id async for m in client.models.list()] == ["tiny"]
        async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0) as untrusting:
            with pytest.raises(openai.APIConnectionError):
                await untrusting.models.list()
    finally:
        await server.stop()


async def test_app_chat_without_a_template_is_400(served):
    servicer, client = served
    servicer.controller.tokenizer.chat_template = None
    with pytest.raises(openai.BadRequestError, match="chat template"):
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])


async def test_app_unexpected_errors_are_500_in_openais_shape(served):
    servicer, client = served
    servicer.controller.target.info = None  # a bug: not a ServiceError
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 500 and raised.value.body["type"] == "server_error"


async def test_app_cancels_a_request_whose_client_hung_up(served):
    servicer, client = served
    servicer.hang = True
    with pytest.raises(openai.APITimeoutError):
        await client.completions.create(model="tiny", prompt="x", max_tokens=3, timeout=0.3)
    await asyncio.wait_for(servicer.cancelled.wait(), timeout=5)


async def test_app_ends_a_stream_whose_client_hung_up(served):
    servicer, client = served
    servicer.hang = True
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
    )
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    await asyncio.wait_for(servicer.cancelled.wait(), timeout=5)


async def test_a_taken_port_stops_the_controller_with_a_message():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = HttpServer(Backend(FakeServicer(), api_key=None), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(SystemExit, match="cannot bind"):
            await server.start()
