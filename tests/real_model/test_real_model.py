"""The default checkpoint (SmolLM2-135M-Instruct) through the stack: greedy output equals
transformers generate() token for token on chat prompts, under UCBSpec and with a SmolLM2 model drafter
(the checkpoint itself, so every draft token is accepted) as a fixed arm."""

from __future__ import annotations

import grpc
import pytest
from conftest import TWO_GAMMAS, local_stack, reference_greedy

from banditspec.tokens import common_prefix_length
from banditspec.v1 import generation_pb2, generation_pb2_grpc

pytestmark = pytest.mark.real_model

MAX_NEW = 48
SELF_DRAFT = "default"  # no SmolLM2 draft is shipped; the target drafting for itself exercises the path
CHATS = [
    "What is the capital of France? Answer in one sentence.",
    "List three colours of the rainbow.",
    "Write a haiku about the sea. The sea is blue, the sea is deep, the sea is wide.",
]


@pytest.fixture(scope="module")
def default_model():
    from banditspec.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="module")
def real_stack(default_model, tmp_path_factory):
    controller_args = ["--policy", "ucbspec", *TWO_GAMMAS]
    drafters = ["pld=prompt_lookup", "sfx=suffix", f"d3=model:{SELF_DRAFT}"]
    # Verify padding on, as served: the real model's CPU forward curve pads short verifies.
    with local_stack(
        tmp_path_factory,
        "real-stack",
        default_model,
        drafters,
        controller_args,
        startup_timeout=600,
        target_args=(),
        http_port=0,
    ) as stack:
        yield stack


def test_greedy_chat_output_equals_transformers(real_stack, default_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    model = AutoModelForCausalLM.from_pretrained(str(default_model), dtype=torch.float32).eval()
    with grpc.insecure_channel(real_stack.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for content in CHATS:
            messages = [{"role": "user", "content": content}]
            encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            prompt = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
            expected = reference_greedy(model, prompt, MAX_NEW)
            assert len(expected) >= 8, "the reference answer is too short to compare meaningfully"

            for policy, name, arms in (
                (generation_pb2.POLICY_UCBSPEC, "ucbspec", []),
                (generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL, "ucbspec-cf", []),
                (generation_pb2.POLICY_FIXED, "fixed", ["local/d3/4"]),
            ):
                request = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW, policy=policy, allowed_arms=arms)
                request.chat.messages.add(role="user", content=content)
                response = stub.Generate(request, timeout=300)

                assert response.stats.prompt_tokens == len(prompt)
                assert list(response.token_ids) == expected, (content, name)
                assert response.text == tokenizer.decode(expected, skip_special_tokens=True)
                assert response.stats.policy == name
                assert sum(a.pulls for a in response.stats.arms) == response.stats.rounds
                if arms:  # the draft model proposed, and some of it was accepted
                    (arm,) = [a for a in response.stats.arms if a.pulls]
                    assert arm.arm == arms[0] and arm.accepted_tokens > 0, arm


def test_openai_chat_stream_equals_transformers(real_stack, default_model):
    """The OpenAI-compatible API, streaming, through the official client: the chat template and greedy
    tokens of transformers."""
    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    model = AutoModelForCausalLM.from_pretrained(str(default_model), dtype=torch.float32).eval()
    messages = [{"role": "user", "content": CHATS[0]}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = reference_greedy(model, list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded), MAX_NEW)
    with openai.OpenAI(base_url=real_stack.http_url(), api_key="none", max_retries=0, timeout=300) as client:
        (name,) = [m.id for m in client.models.list().data]
        stream = client.chat.completions.create(
            model=name, messages=messages, max_tokens=MAX_NEW, temperature=0, stream=True
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].model_extra["banditspec"]["token_ids"] == expected
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


CONCURRENT_CHATS = [
    "Hi!",
    "Name two planets.",
    "Explain in two sentences why the sky is blue, as you would to a child who asks at bedtime.",
    "Here is a list: apples, pears, plums, cherries, grapes, figs. Repeat the list, then say which fruit you "
    "would pick for a pie and why, in a few sentences.",
    "Write a short poem about autumn leaves falling in a quiet park.",
]


def margin_at(model, ids: list[int]) -> float:
    """The target's top-1 minus top-2 logit for the token after `ids`."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def test_concurrent_greedy_requests_equal_the_target_alone(real_stack, default_model):
    """Five clients with prompts of different lengths at once: their rounds share the target's forwards, and
    every answer is still the target's own greedy answer. A flip at a near-tie would be reported with the
    target's logit margin there (batched kernels may round differently); the comparison is never loosened."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    model = AutoModelForCausalLM.from_pretrained(str(default_model), dtype=torch.float32).eval()
    prompts = []
    for content in CONCURRENT_CHATS:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    assert len({len(p) for p in prompts}) == len(prompts)  # every prompt length differs

    def generate(prompt: list[int]) -> list[int]:
        with grpc.insecure_channel(real_stack.address("controller")) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            request = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW, policy=generation_pb2.POLICY_UCBSPEC)
            request.token_ids.ids.extend(prompt)
            return list(stub.Generate(request, timeout=600).token_ids)

    with ThreadPoolExecutor(len(prompts)) as pool:
        outputs = list(pool.map(generate, prompts))
    for prompt, output in zip(prompts, outputs, strict=True):
        expected = reference_greedy(model, prompt, MAX_NEW)
        if output != expected:
            at = common_prefix_length(output, expected)
            margin = margin_at(model, prompt + expected[:at])
            pytest.fail(f"token {at} differs from the target alone (logit margin there {margin:.2e}): {prompt[:8]}…")


def test_long_text_streams_like_a_whole_decode(default_model):
    """With SmolLM2's byte-level tokenizer the stream settles its prefix and decodes only the tail."""
    import random

    from transformers import AutoTokenizer

    from services.controller.text import TextStream

    tokenizer = AutoTokenizer.from_pretrained(str(default_model))
    text = " ".join(f"Ünïcode line {i}: naïve café — 数据 {i * i} ✓." for i in range(150))
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    rng = random.Random(0)
    stream, released, position = TextStream(tokenizer, []), "", 0
    while position < len(token_ids):
        step = rng.randint(1, 7)
        _, delta = stream.add(token_ids[position : position + step])
        released += delta
        position += step
    released += stream.finish()
    assert stream.settled > len(token_ids) // 2
    assert released == stream.text == tokenizer.decode(token_ids, skip_special_tokens=True)
