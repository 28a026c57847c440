"""The shipped pydocs family served by the stack: lossless, and its drafts are accepted."""

from __future__ import annotations

import grpc
import pytest
import torch
from conftest import local_stack, reference_greedy
from transformers import AutoModelForCausalLM

from banditspec.model_paths import resolve_model_path
from banditspec.v1 import generation_pb2, generation_pb2_grpc

PROMPTS = [
    ".. function:: dumps(obj, *, skipkeys=False, ensure_ascii=True",
    "The :mod:`socket` module provides access to the BSD socket interface.",
    "   >>> import json\n   >>> json.dumps(",
    "+------------+------------------+\n| Option     | Meaning          |\n",
]
MAX_NEW = 40


@pytest.fixture(scope="module")
def pydocs_stack(tmp_path_factory):
    drafters = ["dm=model:pydocs:draft-m", "ds=model:pydocs:draft-s", "pld=prompt_lookup"]
    with local_stack(tmp_path_factory, "pydocs-stack", "pydocs", drafters, ["--policy", "ucbspec"]) as stack:
        yield stack


def test_pydocs_models_serve_losslessly_and_drafts_are_accepted(pydocs_stack):
    target_dir = resolve_model_path("pydocs")
    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    accepted = {"local/dm/4": 0, "local/ds/4": 0}
    with grpc.insecure_channel(pydocs_stack.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for prompt in PROMPTS:
            expected = reference_greedy(model, tokenizer.encode(prompt), MAX_NEW)
            for arm in [*accepted, None]:
                request = generation_pb2.GenerateRequest(text=prompt, max_new_tokens=MAX_NEW)
                if arm is not None:
                    request.policy = generation_pb2.POLICY_FIXED
                    request.allowed_arms.append(arm)
                response = stub.Generate(request, timeout=120)
                assert list(response.token_ids) == expected, (prompt, arm)
                if arm is not None:
                    accepted[arm] += next(a.accepted_tokens for a in response.stats.arms if a.arm == arm)
    # trained drafts agree with their target well beyond chance (1/4096 per token)
    assert all(count > MAX_NEW for count in accepted.values()), accepted
