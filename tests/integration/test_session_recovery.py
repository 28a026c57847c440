"""Sessions lost behind the controller's back are rebuilt from the full context, output unchanged.

Target and draft service here hold one session each: with several requests in flight every round
may find its session evicted by another request's, so the controller keeps reopening them
(FAILED_PRECONDITION + banditspec-reason=SESSION_LOST) and must still produce the target's output.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import RPC_TIMEOUT, TWO_GAMMAS, local_stack, reference_greedy

from banditspec.v1 import generation_pb2, generation_pb2_grpc

PROMPTS = [[3, 4, 5, 6, 3, 4, 5], [7, 8, 9, 7, 8], [10, 11, 12, 13, 10, 11], [20, 21, 22, 20, 21]]
MAX_NEW = 24


@pytest.fixture(scope="module")
def one_session_stack(tiny_models, tmp_path_factory):
    drafters = ["pld=prompt_lookup:1-3", f"near=model:{tiny_models.near}"]
    with local_stack(
        tmp_path_factory, "one-session", tiny_models.target, drafters, TWO_GAMMAS, service_args=["--max-sessions", "1"]
    ) as stack:
        yield stack


def test_concurrent_requests_survive_evictions(one_session_stack, target_model):
    channel = grpc.insecure_channel(one_session_stack.address("controller"))
    stub = generation_pb2_grpc.GenerationServiceStub(channel)

    def generate(prompt: list[int]) -> list[int]:
        request = generation_pb2.GenerateRequest(
            token_ids=generation_pb2.TokenIds(ids=prompt), max_new_tokens=MAX_NEW, policy=generation_pb2.POLICY_EXP3SPEC
        )
        return list(stub.Generate(request, timeout=RPC_TIMEOUT).token_ids)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        outputs = list(pool.map(generate, PROMPTS * 2))
    for prompt, output in zip(PROMPTS * 2, outputs, strict=True):
        assert output == reference_greedy(target_model, prompt, MAX_NEW)
    channel.close()
