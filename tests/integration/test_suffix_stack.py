"""The suffix drafter through the services: a second request drafts from the first one's answer, whether the
suffix tree runs in the draft service or in the controller (`--local-drafter`)."""

from __future__ import annotations

import itertools

import grpc
import pytest
from conftest import RPC_TIMEOUT, local_stack, reference_greedy, wait_for

from banditspec.v1 import draft_pb2, draft_pb2_grpc, generation_pb2, generation_pb2_grpc

MAX_NEW = 24


@pytest.fixture(scope="module")
def suffix_stack(tiny_models, tmp_path_factory):
    """target + a draft service with only a suffix drafter + controller (the shared stack has none)."""
    with local_stack(tmp_path_factory, "suffix-stack", tiny_models.target, ["sfx=suffix"]) as stack:
        yield stack


@pytest.fixture(scope="module")
def in_process_suffix_stack(tiny_models, tmp_path_factory):
    """The suffix drafter in the controller; the draft service holds only prompt lookup."""
    args = ["--local-drafter", "sfx=suffix"]
    with local_stack(tmp_path_factory, "suffix-inproc", tiny_models.target, ["pld=prompt_lookup"], args) as stack:
        yield stack


def repeats_no_pair(tokens: list[int]) -> bool:
    return len(set(itertools.pairwise(tokens))) == len(tokens) - 1


def unrepeating_answer(target_model) -> tuple[list[int], list[int]]:
    """A prompt whose answer repeats no pair of tokens: its own tree can never propose, so whatever a
    second request accepts was learned from the first one's output."""
    prompts = ([37, 48, 54], [30, 23, 42], [36, 19, 6, 54], [48, 7, 15])  # found by trying: most answers loop
    answers = ((p, reference_greedy(target_model, p, MAX_NEW)) for p in prompts)
    return next((p, answer) for p, answer in answers if repeats_no_pair(p + answer))


def test_second_request_drafts_from_the_first_answer(suffix_stack, target_model):
    prompt, expected = unrepeating_answer(target_model)
    arm = "local/sfx/6"
    req = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm])
    req.token_ids.ids.extend(prompt)
    with (
        grpc.insecure_channel(suffix_stack.address("controller")) as controller,
        grpc.insecure_channel(suffix_stack.address("draft")) as draft,
    ):
        generate = generation_pb2_grpc.GenerationServiceStub(controller).Generate
        draft_info = draft_pb2_grpc.DraftServiceStub(draft).Info

        (info,) = draft_info(draft_pb2.DraftInfoRequest(), timeout=RPC_TIMEOUT).drafters
        assert (info.kind, info.model_free, info.learns_from_outputs) == (draft_pb2.DRAFTER_KIND_SUFFIX, True, True)
        first = generate(req, timeout=RPC_TIMEOUT)
        assert list(first.token_ids) == expected
        assert [a.arm for a in first.stats.arms] == [arm]
        assert first.stats.arms[0].accepted_tokens == 0
        # The controller releases in the background; the draft service learns the answer on release.
        wait_for(lambda: draft_info(draft_pb2.DraftInfoRequest(), timeout=RPC_TIMEOUT).sessions == 0)

        second = generate(req, timeout=RPC_TIMEOUT)
        assert list(second.token_ids) == expected
        stats = second.stats.arms[0]
        assert stats.arm == arm and stats.accepted_tokens > 0
        assert stats.accepted_tokens == stats.drafted_tokens  # the target repeats itself exactly
        assert second.stats.rounds < first.stats.rounds


def test_the_controllers_own_suffix_tree_learns_from_the_first_answer(in_process_suffix_stack, target_model):
    prompt, expected = unrepeating_answer(target_model)
    arm = "inproc/sfx/6"
    req = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm])
    req.token_ids.ids.extend(prompt)
    with grpc.insecure_channel(in_process_suffix_stack.address("controller")) as controller:
        generate = generation_pb2_grpc.GenerationServiceStub(controller).Generate
        first = generate(req, timeout=RPC_TIMEOUT)
        assert list(first.token_ids) == expected
        assert [a.arm for a in first.stats.arms] == [arm] and first.stats.arms[0].accepted_tokens == 0
        # The controller releases (and learns) in the background once it has answered: ask until it has.
        seconds: list[generation_pb2.GenerateResponse] = []

        def learned() -> bool:
            seconds.append(generate(req, timeout=RPC_TIMEOUT))
            return seconds[-1].stats.arms[0].accepted_tokens > 0

        wait_for(learned)
    assert all(list(second.token_ids) == expected for second in seconds)
    stats = seconds[-1].stats.arms[0]
    assert stats.accepted_tokens == stats.drafted_tokens  # the target repeats itself exactly
    assert seconds[-1].stats.rounds < first.stats.rounds
