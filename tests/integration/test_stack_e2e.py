"""The whole stack as real processes on tiny random models: greedy output through the controller
is token-identical to transformers generate() on the target alone, whatever the policy or arm."""

from __future__ import annotations

import os
import sys

import grpc
import pytest
from conftest import RPC_TIMEOUT, list_arm_names, reference_greedy, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from banditspec.v1 import draft_pb2, generation_pb2, target_pb2

PROMPTS = [
    [3, 4, 5, 6, 3, 4, 5],  # repeats: prompt lookup has something to propose
    [10, 11, 12, 13, 14],
    [20],
    [7, 8, 9, 7, 8, 9, 7, 8, 30, 31, 32, 7, 8],
]
MAX_NEW = 24

STATIC_ARMS = {
    "target-only",
    "local/pld/3",
    "local/pld/6",
    "local/same/2",
    "local/same/4",
    "local/near/2",
    "local/near/4",
    "local/other/2",
    "local/other/4",
}


def request(prompt, max_new_tokens=MAX_NEW, policy=generation_pb2.POLICY_UNSPECIFIED, arms=(), **fields):
    req = generation_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens, policy=policy, allowed_arms=list(arms), **fields
    )
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.ids.extend(prompt)
    return req


@pytest.fixture(scope="module")
def references(target_model):
    return {tuple(p): reference_greedy(target_model, p, MAX_NEW) for p in PROMPTS}


def expected_finish(tokens: list[int], eos: int) -> int:
    return generation_pb2.FINISH_REASON_EOS if tokens and tokens[-1] == eos else generation_pb2.FINISH_REASON_LENGTH


def check_stats(response, prompt, arms_allowed: set[str]):
    stats = response.stats
    assert stats.generated_tokens == len(response.token_ids)
    assert stats.prompt_tokens == len(prompt)
    assert stats.rounds >= 1
    assert sum(a.pulls for a in stats.arms) == stats.rounds
    assert {a.arm for a in stats.arms} <= arms_allowed
    for arm in stats.arms:
        assert 0 <= arm.accepted_tokens <= arm.drafted_tokens
        if arm.arm == "target-only":
            assert arm.drafted_tokens == 0
        if arm.pulls == 0:
            assert arm.drafted_tokens == 0 and arm.mean_reward == 0.0
    # Each round verifies the accepted drafts + one target token (possibly cut at EOS).
    accepted = sum(a.accepted_tokens for a in stats.arms)
    assert stats.generated_tokens <= accepted + stats.rounds
    assert stats.wall_seconds > 0 and stats.tokens_per_second > 0


@pytest.mark.parametrize(
    ("policy", "arms"),
    [
        (generation_pb2.POLICY_UCBSPEC, []),
        (generation_pb2.POLICY_EXP3SPEC, []),
        (generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL, []),
        (generation_pb2.POLICY_UNIFORM, []),
        (generation_pb2.POLICY_UNSPECIFIED, []),
        *[(generation_pb2.POLICY_FIXED, [arm]) for arm in sorted(STATIC_ARMS)],
    ],
    ids=lambda value: generation_pb2.Policy.Name(value) if isinstance(value, int) else "+".join(value) or "all",
)
def test_greedy_output_equals_target_alone(generation_stub, references, tiny_tokenizer, policy, arms):
    eos = tiny_tokenizer.eos_token_id
    for index, prompt in enumerate(PROMPTS):
        response = generation_stub.Generate(request(prompt, policy=policy, arms=arms, seed=index), timeout=RPC_TIMEOUT)
        expected = references[tuple(prompt)]
        assert list(response.token_ids) == expected, f"prompt {prompt}"
        assert response.finish_reason == expected_finish(expected, eos)
        assert response.text == tiny_tokenizer.decode(expected, skip_special_tokens=True)
        check_stats(response, prompt, set(arms) or STATIC_ARMS)
        assert response.stats.seed == index
        if policy == generation_pb2.POLICY_FIXED:
            assert response.stats.policy == "fixed"
            assert [a.arm for a in response.stats.arms] == arms
            assert response.stats.arms[0].pulls == response.stats.rounds
        else:
            # UNSPECIFIED means the controller's default, started with --policy ucbspec.
            name = {
                generation_pb2.POLICY_EXP3SPEC: "exp3spec",
                generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL: "ucbspec-cf",
                generation_pb2.POLICY_UNIFORM: "uniform",
            }.get(policy, "ucbspec")
            assert response.stats.policy == name
        observed = sum(a.counterfactual_observations for a in response.stats.arms)
        if policy == generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL:
            # target-only is scored every drafted round; pld/3 whenever pld/6 is pulled
            assert observed > 0
        else:
            assert observed == 0


def lookahead_hits(draft_stub, name: str) -> int:
    drafters = draft_stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters
    return next(d.lookahead_hits for d in drafters if d.name == name)


def test_copy_of_target_drafter_is_always_accepted(generation_stub, draft_stub, references):
    hits_before = lookahead_hits(draft_stub, "same")
    for prompt in PROMPTS:
        response = generation_stub.Generate(
            request(prompt, policy=generation_pb2.POLICY_FIXED, arms=["local/same/4"]), timeout=RPC_TIMEOUT
        )
        assert list(response.token_ids) == references[tuple(prompt)]
        arm = response.stats.arms[0]
        assert arm.drafted_tokens > 0
        assert arm.accepted_tokens == arm.drafted_tokens
    # Every round is accepted whole and the bonus is the copy's own next token: the drafter's lookahead
    # guesses each next round while the target verifies (unless a proposal preempts it first).
    assert lookahead_hits(draft_stub, "same") > hits_before


def test_ucb_warm_up_tries_every_allowed_arm_in_order(generation_stub):
    arms = ["local/other/2", "target-only", "local/pld/3", "local/near/2", "local/same/2"]
    prompt = PROMPTS[0]
    stream = generation_stub.GenerateStream(
        request(prompt, max_new_tokens=40, policy=generation_pb2.POLICY_UCBSPEC, arms=arms), timeout=RPC_TIMEOUT
    )
    rounds = [m.round.arm for m in stream if m.HasField("round") and m.round.arm]
    assert rounds[: len(arms)] == arms


def test_generate_stream_rounds_concatenate_to_the_result(generation_stub, references, tiny_tokenizer):
    for prompt in PROMPTS:
        messages = list(
            generation_stub.GenerateStream(request(prompt, policy=generation_pb2.POLICY_UCBSPEC), timeout=RPC_TIMEOUT)
        )
        assert messages[-1].HasField("final")
        assert all(m.HasField("round") for m in messages[:-1])
        final = messages[-1].final
        rounds = [m.round for m in messages[:-1]]
        drafting_rounds = [r for r in rounds if r.arm]
        assert len(drafting_rounds) == final.stats.rounds
        assert [r.round for r in drafting_rounds] == list(range(1, final.stats.rounds + 1))
        ids = [t for r in rounds for t in r.token_ids]
        assert ids == list(final.token_ids) == references[tuple(prompt)]
        assert "".join(r.text for r in rounds) == final.text
        for r in drafting_rounds:
            assert r.arm in STATIC_ARMS
            assert 0 <= r.accepted <= r.drafted
            assert 1 <= len(r.token_ids) <= r.accepted + 1
        check_stats(final, prompt, STATIC_ARMS)


def test_text_prompt_and_stop_string(generation_stub, target_model, tiny_tokenizer):
    text = "the cat sat on a mat"
    prompt = tiny_tokenizer.encode(text, add_special_tokens=False)
    reference = reference_greedy(target_model, prompt, MAX_NEW)
    response = generation_stub.Generate(request(text), timeout=RPC_TIMEOUT)
    assert response.stats.prompt_tokens == len(prompt)
    assert list(response.token_ids) == reference

    # Stop at the text of a word the model produces a few tokens in.
    words = [t for t in reference if t not in tiny_tokenizer.all_special_ids]
    assert len(words) >= 4, "the reference continuation is too short for this test"
    stop = tiny_tokenizer.decode([words[3]])
    cut = next(
        n
        for n in range(1, len(reference) + 1)
        if stop in tiny_tokenizer.decode(reference[:n], skip_special_tokens=True)
    )
    full = tiny_tokenizer.decode(reference[:cut], skip_special_tokens=True)
    response = generation_stub.Generate(request(text, stop=[stop]), timeout=RPC_TIMEOUT)
    assert response.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert list(response.token_ids) == reference[:cut]
    assert response.text == full[: full.find(stop)]

    # Streamed, the rounds' text never includes the stop string and adds up to the final text.
    messages = list(generation_stub.GenerateStream(request(text, stop=[stop]), timeout=RPC_TIMEOUT))
    final = messages[-1].final
    assert final.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert list(final.token_ids) == reference[:cut]
    streamed = "".join(m.round.text for m in messages[:-1])
    assert streamed == final.text == response.text
    assert [t for m in messages[:-1] for t in m.round.token_ids] == reference[:cut]


def test_finish_reason_length_and_request_id(generation_stub, references):
    prompt = PROMPTS[1]
    response = generation_stub.Generate(request(prompt, max_new_tokens=3, request_id="req-123"), timeout=RPC_TIMEOUT)
    expected = references[tuple(prompt)][:3]
    assert list(response.token_ids) == expected
    assert response.request_id == "req-123"
    if 0 not in expected:
        assert response.finish_reason == generation_pb2.FINISH_REASON_LENGTH


def test_list_arms(generation_stub):
    arms = generation_stub.ListArms(generation_pb2.ListArmsRequest(), timeout=RPC_TIMEOUT).arms
    by_name = {a.name: a for a in arms}
    assert set(by_name) >= STATIC_ARMS
    assert not any("alien" in name for name in by_name)
    assert by_name["target-only"].num_tokens == 0 and by_name["target-only"].drafter == ""
    assert by_name["local/pld/6"].draft_service == "local"
    assert by_name["local/pld/6"].drafter == "pld"
    assert by_name["local/pld/6"].num_tokens == 6
    assert by_name["local/other/4"].num_tokens == 4


@pytest.mark.parametrize("service", ["controller", "target", "draft"])
def test_health_and_reflection(stack, service):
    expected = {
        "controller": "banditspec.v1.GenerationService",
        "target": "banditspec.v1.TargetService",
        "draft": "banditspec.v1.DraftService",
    }[service]
    with grpc.insecure_channel(stack.address(service)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", expected):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=RPC_TIMEOUT).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=RPC_TIMEOUT
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert expected in names
        assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("service", ["target", "draft"])
def test_the_controller_dials_the_local_services_over_unix_sockets(stack, service):
    """The launcher has the target and the draft service listen on a Unix socket too, and hands the
    controller those addresses: every generation test here goes over them."""
    process = next(s for s in stack.services if s.name == service)
    assert process.unix_address is not None and process.unix_address.startswith("unix:/")
    controller_args = next(s for s in stack.services if s.name == "controller").process.args
    assert process.unix_address in controller_args or f"local={process.unix_address}" in controller_args
    with grpc.insecure_channel(process.unix_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
        assert status.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_services_beside_the_target_run_at_a_lower_cpu_priority(stack):
    """On shared cores the controller's and the draft service's threads must not preempt a CPU forward's
    OpenMP team (banditspec.priority): every thread of theirs runs 10 below the target's."""

    def nice_of_threads(name: str) -> set[int]:
        pid = next(s for s in stack.services if s.name == name).process.pid
        return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}

    (target,) = nice_of_threads("target")
    assert nice_of_threads("controller") == nice_of_threads("draft") == {min(19, target + 10)}


def test_reflection_serves_the_file_descriptor(stack):
    with grpc.insecure_channel(stack.address("controller")) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(
            reflection.ServerReflectionInfo(
                iter(
                    [reflection_pb2.ServerReflectionRequest(file_containing_symbol="banditspec.v1.GenerationService")]
                ),
                timeout=RPC_TIMEOUT,
            )
        )
        assert responses[0].file_descriptor_response.file_descriptor_proto


def test_runtime_load_and_unload_drafter(generation_stub, draft_stub, tiny_models, references):
    load = draft_stub.LoadDrafter(
        draft_pb2.LoadDrafterRequest(
            name="late", model=draft_pb2.ModelDrafterOptions(model_path=str(tiny_models.other))
        ),
        timeout=RPC_TIMEOUT,
    )
    try:
        assert load.drafter.name == "late"
        assert load.drafter.kind == draft_pb2.DRAFTER_KIND_MODEL
        listed = draft_stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters
        assert "late" in {d.name for d in listed}

        # The controller re-lists drafters every ~2 s.
        wait_for(lambda: {"local/late/2", "local/late/4"} <= set(list_arm_names(generation_stub)), timeout=20)
        prompt = PROMPTS[3]
        response = generation_stub.Generate(
            request(prompt, policy=generation_pb2.POLICY_FIXED, arms=["local/late/2"]), timeout=RPC_TIMEOUT
        )
        assert list(response.token_ids) == references[tuple(prompt)]
        assert response.stats.arms[0].arm == "local/late/2"
        assert response.stats.arms[0].drafted_tokens > 0

        # A second load under the same name needs replace.
        with pytest.raises(grpc.RpcError) as error:
            draft_stub.LoadDrafter(
                draft_pb2.LoadDrafterRequest(name="late", prompt_lookup=draft_pb2.PromptLookupOptions()),
                timeout=RPC_TIMEOUT,
            )
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
        replaced = draft_stub.LoadDrafter(
            draft_pb2.LoadDrafterRequest(
                name="late", prompt_lookup=draft_pb2.PromptLookupOptions(min_ngram=1, max_ngram=2), replace=True
            ),
            timeout=RPC_TIMEOUT,
        )
        assert replaced.drafter.kind == draft_pb2.DRAFTER_KIND_PROMPT_LOOKUP
        # As a prompt-lookup drafter it gets the prompt-lookup γ values.
        wait_for(lambda: {"local/late/3", "local/late/6"} <= set(list_arm_names(generation_stub)), timeout=20)
        assert "local/late/2" not in list_arm_names(generation_stub)
    finally:
        unload = draft_stub.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="late"), timeout=RPC_TIMEOUT)
    assert unload.unloaded
    wait_for(lambda: not any("/late/" in name for name in list_arm_names(generation_stub)), timeout=20)
    with pytest.raises(grpc.RpcError) as error:
        generation_stub.Generate(
            request(PROMPTS[0], policy=generation_pb2.POLICY_FIXED, arms=["local/late/3"]), timeout=RPC_TIMEOUT
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The remaining arms still work.
    response = generation_stub.Generate(request(PROMPTS[0]), timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == references[tuple(PROMPTS[0])]


def test_drafter_with_another_vocabulary_is_refused(generation_stub, draft_stub, target_stub):
    target_fingerprint = target_stub.Info(target_pb2.TargetInfoRequest(), timeout=RPC_TIMEOUT).vocab_fingerprint
    drafters = {
        d.name: d for d in draft_stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters
    }
    alien = drafters["alien"].vocab_fingerprint
    assert alien and alien != target_fingerprint
    assert drafters["same"].vocab_fingerprint == target_fingerprint
    assert drafters["other"].vocab_fingerprint == target_fingerprint
    assert drafters["near"].vocab_fingerprint == target_fingerprint
    assert drafters["pld"].vocab_fingerprint == ""

    names = list_arm_names(generation_stub)
    assert not any(name.startswith("local/alien/") for name in names)
    with pytest.raises(grpc.RpcError) as error:
        generation_stub.Generate(
            request(PROMPTS[0], policy=generation_pb2.POLICY_FIXED, arms=["local/alien/2"]), timeout=RPC_TIMEOUT
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert alien in error.value.details()
    assert target_fingerprint in error.value.details()


def test_target_info(target_stub, tiny_models, tiny_tokenizer):
    info = target_stub.Info(target_pb2.TargetInfoRequest(), timeout=RPC_TIMEOUT)
    assert info.vocab_size == tiny_models.vocab_size
    assert info.max_context == 256
    assert list(info.eos_token_ids) == [tiny_tokenizer.eos_token_id]
    assert info.device == "cpu" and info.dtype == "float32"
    # Batched forwards measured at start-up, each with its rows: the controller's model of a shared forward.
    shapes = list(zip(info.batch_forward_rows, info.batch_forward_tokens, strict=True))
    assert (8, 8) in shapes and (16, 128) in shapes and len(shapes) == len(info.batch_forward_seconds)
