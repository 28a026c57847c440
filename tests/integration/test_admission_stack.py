"""Admission control through the controller: with one request allowed and none queued, a second request
while the first streams is RESOURCE_EXHAUSTED at once, and the first completes unharmed."""

from __future__ import annotations

import grpc
import pytest
from conftest import local_stack, reference_greedy

from banditspec.v1 import generation_pb2, generation_pb2_grpc


@pytest.fixture(scope="module")
def one_at_a_time(tiny_models, tmp_path_factory):
    controller_args = ["--max-concurrent", "1", "--max-queued", "0"]
    with local_stack(
        tmp_path_factory, "admission", tiny_models.target, ["pld=prompt_lookup"], controller_args
    ) as stack:
        yield stack


def test_a_request_beyond_capacity_is_refused_and_the_running_one_completes(one_at_a_time, target_model):
    prompt = [5, 9, 17, 23, 8]
    with grpc.insecure_channel(one_at_a_time.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        first = generation_pb2.GenerateRequest(max_new_tokens=48)
        first.token_ids.ids.extend(prompt)
        stream = stub.GenerateStream(first, timeout=120)
        next(stream)  # the first request is running
        second = generation_pb2.GenerateRequest(max_new_tokens=4)
        second.token_ids.ids.extend(prompt)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Generate(second, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity" in refused.value.details()
        final = next(m.final for m in stream if m.HasField("final"))
    assert list(final.token_ids) == reference_greedy(target_model, prompt, 48)
