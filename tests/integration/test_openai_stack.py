"""The OpenAI-compatible HTTP API and the typed gRPC client, against a real stack (tiny models) with an
API key: the official `openai` client, streaming and not, gets the gRPC path's greedy output."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import openai
import pytest
from conftest import local_stack

from banditspec.client import ArmInfo, AsyncClient, Client, ClientError, Result, Round

API_KEY = "test-key-0123456789"
PROMPT = "the cat sat on the mat and the dog ran to the big red sun"
# The tiny tokenizer has no chat template; the controller gets a copy with one (words only: it must
# encode to known ids), so chat requests go through the same template as gRPC's ChatPrompt.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}go{% endif %}"
MESSAGES = [{"role": "system", "content": "we go fast"}, {"role": "user", "content": "the cat sat on the mat"}]


@pytest.fixture(scope="module")
def http_stack(tiny_models, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path_factory.mktemp("chat-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models.target))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(tokenizer_dir))
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    drafters = ["pld=prompt_lookup:1-3:fixed", f"same=model:{tiny_models.target}^8"]
    controller_args = ["--policy", "ucbspec", "--warm-start", "off", "--tokenizer", str(tokenizer_dir)]
    controller_args += ["--api-key-file", str(key_file)]
    with local_stack(tmp_path_factory, "http", tiny_models.target, drafters, controller_args, http_port=0) as stack:
        yield stack


@pytest.fixture(scope="module")
def oai(http_stack):
    with openai.OpenAI(base_url=http_stack.http_url(), api_key=API_KEY, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(http_stack):
    with Client(http_stack.address("controller"), api_key=API_KEY) as client:
        yield client


def _extension(response) -> dict:
    return response.model_extra["banditspec"]


def test_models_lists_the_target(oai, tiny_models):
    models = oai.models.list()
    assert [m.id for m in models.data] == [tiny_models.target.name]
    assert oai.models.retrieve(tiny_models.target.name).id == tiny_models.target.name


def test_completion_is_the_grpc_output(oai, grpc_client, tiny_models):
    expected = grpc_client.generate(PROMPT, max_new_tokens=12, temperature=0.0)
    completion = oai.completions.create(model=tiny_models.target.name, prompt=PROMPT, max_tokens=12, temperature=0)
    choice = completion.choices[0]
    assert choice.text == expected.text
    assert _extension(completion)["token_ids"] == expected.token_ids
    assert choice.finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens == len(expected.token_ids)
    assert completion.usage.prompt_tokens == expected.stats.prompt_tokens
    stats = _extension(completion)
    assert stats["policy"] == "ucbspec" and stats["rounds"] > 0
    assert sum(arm["pulls"] for arm in stats["arms"]) <= stats["rounds"]


def test_completion_stream_is_the_grpc_output(oai, grpc_client, tiny_models):
    expected = grpc_client.generate(PROMPT, max_new_tokens=16, stop=["blue"])
    chunks = list(
        oai.completions.create(
            model=tiny_models.target.name,
            prompt=PROMPT,
            max_tokens=16,
            stop="blue",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.text
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and _extension(finishing[0])["token_ids"] == expected.token_ids
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)


def test_chat_is_the_grpc_chat_output(oai, grpc_client, tiny_models):
    expected = grpc_client.generate(messages=MESSAGES, max_new_tokens=10)
    chat = oai.chat.completions.create(model=tiny_models.target.name, messages=MESSAGES, max_tokens=10, seed=3)
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == expected.text
    assert _extension(chat)["token_ids"] == expected.token_ids
    assert _extension(chat)["seed"] == 3
    assert chat.usage.prompt_tokens == expected.stats.prompt_tokens


async def test_async_chat_stream_is_the_grpc_chat_output(http_stack, tiny_models):
    async with AsyncClient(http_stack.address("controller"), api_key=API_KEY) as client:
        expected = await client.generate(messages=MESSAGES, max_new_tokens=10)
    async with openai.AsyncOpenAI(base_url=http_stack.http_url(), api_key=API_KEY, max_retries=0) as oai:
        stream = await oai.chat.completions.create(
            model=tiny_models.target.name, messages=MESSAGES, max_completion_tokens=10, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert _extension(chunks[-1])["token_ids"] == expected.token_ids
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_sampled_requests_with_a_seed_repeat(oai, tiny_models):
    def once():
        return oai.completions.create(
            model=tiny_models.target.name, prompt=PROMPT, max_tokens=8, temperature=0.9, top_p=0.9, seed=11
        )

    first, second = once(), once()
    assert _extension(first)["seed"] == 11
    assert first.choices[0].text == second.choices[0].text


@pytest.mark.parametrize(
    ("options", "param"),
    [({"temperature": -1}, None), ({"n": 2}, "n"), ({"logprobs": 2}, "logprobs"), ({"max_tokens": 100000}, None)],
)
def test_invalid_requests_are_400_in_openais_shape(oai, tiny_models, options, param):
    with pytest.raises(openai.BadRequestError) as raised:
        oai.completions.create(model=tiny_models.target.name, prompt=PROMPT, **{"max_tokens": 4, **options})
    assert raised.value.status_code == 400
    error = raised.value.body
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as raised:
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4)
    assert raised.value.body["code"] == "model_not_found"


def test_api_key_is_required(http_stack):
    client = openai.OpenAI(base_url=http_stack.http_url(), api_key="wrong", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert raised.value.status_code == 401 and raised.value.body["code"] == "invalid_api_key"
    with pytest.raises(urllib.error.HTTPError) as missing:  # the openai client always sends one
        urllib.request.urlopen(f"{http_stack.http_url()}/models", timeout=30)
    assert missing.value.code == 401
    assert json.loads(missing.value.read())["error"]["type"] == "authentication_error"


def test_error_body_over_plain_http(http_stack):
    request = urllib.request.Request(
        f"{http_stack.http_url()}/completions",
        data=json.dumps({"model": "target", "prompt": PROMPT, "max_tokens": "many"}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400
    body = json.loads(raised.value.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "max_tokens"


# the typed gRPC client ---------------------------------------------------------------------------


def test_typed_client(grpc_client):
    arms = grpc_client.arms()
    assert all(isinstance(a, ArmInfo) for a in arms) and any(a.drafter == "same" for a in arms)
    result = grpc_client.generate(PROMPT, max_new_tokens=12, allowed_arms=[a.name for a in arms if a.drafter])
    assert isinstance(result, Result) and result.finish_reason in ("length", "eos")
    assert result.stats.generated_tokens == len(result.token_ids)
    updates = list(grpc_client.stream(PROMPT, max_new_tokens=12))
    rounds, final = updates[:-1], updates[-1]
    assert all(isinstance(u, Round) for u in rounds) and isinstance(final, Result)
    assert "".join(r.text for r in rounds) == final.text == result.text
    assert [t for r in rounds for t in r.token_ids] == final.token_ids == result.token_ids


def test_typed_client_errors(http_stack, grpc_client):
    with pytest.raises(ClientError) as raised:
        grpc_client.generate(PROMPT, max_new_tokens=-1)
    assert raised.value.code.name == "INVALID_ARGUMENT"
    with Client(http_stack.address("controller"), api_key="wrong") as client, pytest.raises(ClientError) as raised:
        client.arms()
    assert raised.value.code.name == "PERMISSION_DENIED"


async def test_async_typed_client(http_stack):
    async with AsyncClient(http_stack.address("controller"), api_key=API_KEY) as client:
        arms = await client.arms()
        assert arms
        result = await client.generate([3, 4, 5, 3, 4], max_new_tokens=8)
        updates = [u async for u in client.stream([3, 4, 5, 3, 4], max_new_tokens=8)]
    assert isinstance(updates[-1], Result) and updates[-1].token_ids == result.token_ids


def test_sigterm_drains_the_http_api_with_grpc(tiny_models, tmp_path_factory):
    """SIGTERM stops both servers: a running stream still ends with its finishing chunk, the process exits
    0, and the HTTP port is closed."""
    controller_args = ["--warm-start", "off"]
    with local_stack(
        tmp_path_factory, "http-drain", tiny_models.target, ["pld=prompt_lookup"], controller_args, http_port=0
    ) as stack:
        controller = next(s for s in stack.services if s.name == "controller")
        client = openai.OpenAI(base_url=stack.http_url(), api_key="none", max_retries=0, timeout=60)
        with client:
            stream = client.completions.create(
                model=tiny_models.target.name, prompt=PROMPT, max_tokens=200, stream=True
            )
            chunks = [next(iter(stream))]
            controller.process.send_signal(signal.SIGTERM)
            chunks += list(stream)
            assert chunks[-1].choices[0].finish_reason in ("length", "stop")
            assert controller.process.wait(timeout=30) == 0
            with pytest.raises(openai.APIConnectionError):
                client.models.list()
