"""Failures of the services behind the controller, on a stack of its own (processes are killed).

A draft service that goes away costs speed, never correctness: its arms leave the request, the
round falls back to the target, and after a refresh its arms are withdrawn. A target that stays
away past a request's deadline turns it into UNAVAILABLE naming the target service (restarts within
the deadline are in test_recovery.py).
"""

from __future__ import annotations

import grpc
import pytest
from conftest import RPC_TIMEOUT, TWO_GAMMAS, list_arm_names, local_stack, reference_greedy, wait_for

from banditspec.v1 import generation_pb2, generation_pb2_grpc

PROMPT = [3, 4, 5, 6, 3, 4, 5]
MAX_NEW = 16


@pytest.fixture(scope="module")
def fault_stack(tiny_models, tmp_path_factory):
    drafters = ["pld=prompt_lookup", f"near=model:{tiny_models.near}"]
    with local_stack(tmp_path_factory, "fault-stack", tiny_models.target, drafters, TWO_GAMMAS) as stack:
        yield stack


def kill(stack, name: str) -> None:
    service = next(s for s in stack.services if s.name == name)
    service.process.kill()
    service.process.wait(timeout=30)


def generate(stub, timeout=RPC_TIMEOUT, **fields):
    request = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW, **fields)
    request.token_ids.ids.extend(PROMPT)
    return stub.Generate(request, timeout=timeout)


def test_lost_draft_service_then_lost_target(fault_stack, target_model):
    expected = reference_greedy(target_model, PROMPT, MAX_NEW)
    with grpc.insecure_channel(fault_stack.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        assert "local/near/2" in list_arm_names(stub)
        assert list(generate(stub).token_ids) == expected

        kill(fault_stack, "draft")
        # Right after the loss the controller may still list the arms: the request falls back to
        # the target alone (or, after a refresh, never sees them). Either way the output is exact.
        for policy in (generation_pb2.POLICY_UCBSPEC, generation_pb2.POLICY_EXP3SPEC):
            assert list(generate(stub, policy=policy, seed=1).token_ids) == expected
        wait_for(lambda: list_arm_names(stub) == ["target-only"], timeout=20)
        response = generate(stub)
        assert list(response.token_ids) == expected
        assert [a.arm for a in response.stats.arms] == ["target-only"]
        with pytest.raises(grpc.RpcError) as error:
            generate(stub, policy=generation_pb2.POLICY_FIXED, allowed_arms=["local/near/2"])
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        kill(fault_stack, "target")
        with pytest.raises(grpc.RpcError) as error:
            generate(stub, timeout=5)  # retried with backoff until the deadline is nearly spent
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "target service" in error.value.details()
