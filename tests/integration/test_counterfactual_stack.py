"""Counterfactual scoring through the services: the draft service returns alternatives of model-free
drafters, and ucbspec-cf scores unpulled drafters while staying lossless."""

from __future__ import annotations

import pytest

MAX_NEW = 32
PROMPTS = ([5, 9, 5, 9, 5], [12, 30, 7, 12, 30], [40, 41, 42, 40, 41])


@pytest.fixture(scope="module")
def two_drafter_stack(tiny_models, tmp_path_factory):
    from conftest import local_stack

    drafters = ["pld=prompt_lookup:1-3:fixed", "sfx=suffix:24:off"]
    with local_stack(
        tmp_path_factory, "counterfactual-stack", tiny_models.target, drafters, ["--policy", "ucbspec-cf"]
    ) as stack:
        yield stack


def test_draft_service_returns_alternatives_of_model_free_drafters(two_drafter_stack):
    import grpc

    from banditspec.v1 import draft_pb2, draft_pb2_grpc

    with grpc.insecure_channel(two_drafter_stack.address("draft")) as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        response = stub.Propose(
            draft_pb2.ProposeRequest(
                session_id="alt",
                drafter="pld",
                num_tokens=2,
                context_length=0,
                new_context_ids=[1, 2, 3, 1, 2],
                score_drafters=["sfx", "pld", "gone"],
                score_num_tokens=4,
            ),
            timeout=30,
        )
    assert list(response.draft_ids) == [3, 1]
    # the pulled drafter and unknown names are skipped; sfx continues "1 2" as "3 1 2" up to 4 tokens
    assert [a.drafter for a in response.alternatives] == ["sfx"]
    assert list(response.alternatives[0].draft_ids)[:3] == [3, 1, 2]


def test_counterfactual_ucb_is_lossless_and_scores_unpulled_drafters(two_drafter_stack, target_model):
    import grpc
    from conftest import reference_greedy

    from banditspec.v1 import generation_pb2, generation_pb2_grpc

    observed: dict[str, int] = {}
    with grpc.insecure_channel(two_drafter_stack.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for prompt in PROMPTS:
            request = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW)
            request.token_ids.ids.extend(prompt)
            response = stub.Generate(request, timeout=120)
            assert list(response.token_ids) == reference_greedy(target_model, list(prompt), MAX_NEW)
            assert response.stats.policy == "ucbspec-cf"
            for arm in response.stats.arms:
                observed[arm.arm] = observed.get(arm.arm, 0) + arm.counterfactual_observations
    assert observed["target-only"] > 0 and observed["local/sfx/6"] > 0 and observed["local/pld/6"] > 0
