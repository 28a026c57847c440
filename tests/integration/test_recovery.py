"""No lost requests: services killed, restarted on the same port, hung, or answering nonsense, on a stack of
its own. Every request that completes is token-identical to the target alone; one that cannot complete
gets a clear status within its deadline.

The tests run in file order on one stack and leave it as they found it, but the last, which drains
the controller.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import grpc
import pytest
from conftest import (
    CPU_ARGS,
    EOS_ID,
    RPC_TIMEOUT,
    TWO_GAMMAS,
    WORDS,
    build_tokenizer,
    list_arm_names,
    local_stack,
    reference_greedy,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditspec.v1 import draft_pb2, draft_pb2_grpc, generation_pb2, generation_pb2_grpc, target_pb2, target_pb2_grpc

PROMPT = [3, 4, 5, 6, 3, 4, 5]
MAX_NEW = 16
LONG = 200  # a stream long enough to be mid-way when a service is killed
SLOW = ["target-only"]  # one token a round: LONG takes hundreds of rounds


def build_wide_drafter(directory, seed: int = 4):
    """The target's tokenizer (same fingerprint) on a model with 100 output ids, whose argmax is always an
    id the target does not have: every draft it makes is rejected by the target's Verify."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(WORDS)
    real = len(tokenizer.get_vocab())
    config = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[:real] = 0.0
        model.lm_head.weight[real:] *= 50.0
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def recovery_stack(tiny_models, tmp_path_factory):
    wide = build_wide_drafter(tmp_path_factory.mktemp("wide-drafter"))
    drafters = ["pld=prompt_lookup", f"near=model:{tiny_models.near}", f"wide=model:{wide}"]
    controller_args = [*TWO_GAMMAS, "--draft-deadline", "1", "--drain-seconds", "60", "--warm-start", "off"]
    with local_stack(tmp_path_factory, "recovery", tiny_models.target, drafters, controller_args) as stack:
        yield stack


@pytest.fixture(scope="module")
def stub(recovery_stack):
    with grpc.insecure_channel(recovery_stack.address("controller")) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


def service(stack, name: str):
    return next(s for s in stack.services if s.name == name)


def kill(stack, name: str) -> None:
    process = service(stack, name).process
    process.kill()
    process.wait(timeout=30)


def restart(stack, name: str, args: list[str], port: str | None = None):
    """Start `name` again on the same port (or `port`) and Unix socket (the controller dials that one),
    replacing the dead process in the stack."""
    old = service(stack, name)
    port = port or old.address.rsplit(":", 1)[1]
    stack.services.remove(old)
    old.ready_file.unlink(missing_ok=True)
    if old.unix_address is not None:
        args = [*args, "--unix-socket", old.unix_address.removeprefix("unix:")]
    new = stack._spawn(name, [*args, "--port", port])
    stack._wait(new)
    return new


def restart_target(stack):
    args = ["serve-target", "--model", stack.model, "--threads", "1", *CPU_ARGS, "--verify-padding", "off"]
    return restart(stack, "target", args)


def restart_draft(stack):
    return restart(stack, "draft", ["serve-draft", *[f"--drafter={d}" for d in stack.drafters], *CPU_ARGS])


def request(max_new: int = MAX_NEW, **fields) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        token_ids=generation_pb2.TokenIds(ids=PROMPT), max_new_tokens=max_new, **fields
    )


def streamed(stream) -> tuple[list[int], generation_pb2.GenerateResponse]:
    tokens: list[int] = []
    for update in stream:
        if update.HasField("round"):
            tokens.extend(update.round.token_ids)
        else:
            return tokens, update.final
    raise AssertionError("the stream ended without a final message")


def sessions_held(stack) -> tuple[int, int]:
    with grpc.insecure_channel(stack.address("target")) as t, grpc.insecure_channel(stack.address("draft")) as d:
        target = target_pb2_grpc.TargetServiceStub(t).Info(target_pb2.TargetInfoRequest(), timeout=RPC_TIMEOUT)
        draft = draft_pb2_grpc.DraftServiceStub(d).Info(draft_pb2.DraftInfoRequest(), timeout=RPC_TIMEOUT)
    return target.sessions, draft.sessions


def health(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            return None


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_target_killed_mid_stream_and_restarted_on_its_port_completes_token_identical(
    recovery_stack, stub, target_model
):
    expected = reference_greedy(target_model, PROMPT, LONG)
    stream = stub.GenerateStream(request(LONG), timeout=180)
    first = next(stream)
    kill(recovery_stack, "target")
    before = list(first.round.token_ids)
    assert len(before) < len(expected)  # killed mid-request
    restart_target(recovery_stack)
    rest, final = streamed(stream)
    assert before + rest == expected
    assert list(final.token_ids) == expected
    assert list(stub.Generate(request(), timeout=RPC_TIMEOUT).token_ids) == expected[:MAX_NEW]


def test_target_killed_between_rounds_and_restarted_completes_token_identical(recovery_stack, stub, target_model):
    """The verify stream ended while the round waited on its draft (held by SIGSTOP): the next verify
    opens a new stream instead of writing to the dead one, and is retried until the target is back."""
    expected = reference_greedy(target_model, PROMPT, LONG)
    drafting = {"policy": generation_pb2.POLICY_FIXED, "allowed_arms": ["local/pld/3"]}
    stream = stub.GenerateStream(request(LONG, **drafting), timeout=180)
    first = next(stream)
    draft = service(recovery_stack, "draft").process
    os.kill(draft.pid, signal.SIGSTOP)
    try:
        kill(recovery_stack, "target")
    finally:
        os.kill(draft.pid, signal.SIGCONT)
    restart_target(recovery_stack)
    rest, final = streamed(stream)
    assert list(first.round.token_ids) + rest == expected
    assert list(final.token_ids) == expected


def test_sampled_stream_survives_a_target_restart_without_repeating_tokens(recovery_stack, stub):
    """Sampled output cannot be compared token for token; what must hold is that the retried round
    commits once: the streamed tokens are the final answer, of the requested length or ending in EOS."""
    stream = stub.GenerateStream(request(LONG, temperature=0.8, seed=11), timeout=180)
    first = next(stream)
    kill(recovery_stack, "target")
    restart_target(recovery_stack)
    rest, final = streamed(stream)
    tokens = list(first.round.token_ids) + rest
    assert tokens == list(final.token_ids)
    assert final.stats.generated_tokens == len(tokens)
    assert len(tokens) == LONG or tokens[-1] == EOS_ID


def test_target_down_past_the_deadline_is_unavailable_and_a_new_controller_waits_for_it(
    recovery_stack, stub, target_model
):
    kill(recovery_stack, "target")
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        stub.Generate(request(), timeout=8)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert "target service" in error.value.details() and "unavailable for" in error.value.details()
    assert time.monotonic() - start < 8

    # A controller started while the target is down waits NOT_SERVING instead of exiting.
    port = free_port()
    target, draft = service(recovery_stack, "target").address, recovery_stack.address("draft")

    def controller(name: str, port: str):
        args = ["serve-controller", "--target", target, "--draft", f"local={draft}", "--port", port]
        return recovery_stack._spawn(name, args)

    late = controller("late-controller", port)
    address = f"127.0.0.1:{port}"
    wait_for(lambda: health(address) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=60)
    time.sleep(3)
    assert late.process.poll() is None
    assert health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
    # One waiting like this still stops on SIGTERM.
    other_port = free_port()
    waiting = controller("waiting-controller", other_port)
    wait_for(lambda: health(f"127.0.0.1:{other_port}") == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=60)
    waiting.process.send_signal(signal.SIGTERM)
    assert waiting.process.wait(timeout=30) == 0
    recovery_stack.services.remove(waiting)

    restart_target(recovery_stack)
    recovery_stack._wait(late)
    with grpc.insecure_channel(address) as channel:
        late_stub = generation_pb2_grpc.GenerationServiceStub(channel)
        assert list(late_stub.Generate(request(), timeout=RPC_TIMEOUT).token_ids) == reference_greedy(
            target_model, PROMPT, MAX_NEW
        )
    late.process.send_signal(signal.SIGTERM)
    assert late.process.wait(timeout=30) == 0
    recovery_stack.services.remove(late)
    # The stack's own controller reconnects to the restarted target.
    assert list(stub.Generate(request(), timeout=RPC_TIMEOUT).token_ids) == reference_greedy(
        target_model, PROMPT, MAX_NEW
    )


def test_drafts_the_target_rejects_drop_their_arm_and_the_round_is_redone(recovery_stack, stub, target_model):
    expected = reference_greedy(target_model, PROMPT, MAX_NEW)
    assert "local/wide/2" in list_arm_names(stub)
    fixed = stub.Generate(
        request(policy=generation_pb2.POLICY_FIXED, allowed_arms=["local/wide/2"]), timeout=RPC_TIMEOUT
    )
    assert list(fixed.token_ids) == expected
    assert {a.arm: a.pulls for a in fixed.stats.arms}.get("local/wide/2", 0) == 0
    for policy in (generation_pb2.POLICY_UCBSPEC, generation_pb2.POLICY_EXP3SPEC):
        assert list(stub.Generate(request(policy=policy, seed=3), timeout=RPC_TIMEOUT).token_ids) == expected


def test_hung_draft_service_is_cut_off_and_withdrawn(recovery_stack, stub, target_model):
    expected = reference_greedy(target_model, PROMPT, MAX_NEW)
    process = service(recovery_stack, "draft").process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        # --draft-deadline 1: each of its drafters costs the request about a second, then target-only.
        assert list(stub.Generate(request(), timeout=RPC_TIMEOUT).token_ids) == expected
        assert time.monotonic() - start < 30
        wait_for(lambda: list_arm_names(stub) == ["target-only"], timeout=30)
        assert list(stub.Generate(request(), timeout=RPC_TIMEOUT).token_ids) == expected
    finally:
        os.kill(process.pid, signal.SIGCONT)
    # Healthy again: the arms come back once the breaker's cooldown has passed.
    wait_for(lambda: "local/near/2" in list_arm_names(stub), timeout=60)


def test_restarted_draft_service_arms_return_within_seconds(recovery_stack, stub, target_model):
    expected = reference_greedy(target_model, PROMPT, MAX_NEW)
    kill(recovery_stack, "draft")
    wait_for(lambda: list_arm_names(stub) == ["target-only"], timeout=30)
    restart_draft(recovery_stack)
    start = time.monotonic()
    wait_for(lambda: "local/near/2" in list_arm_names(stub), timeout=20)
    assert time.monotonic() - start < 20
    response = stub.Generate(request(policy=generation_pb2.POLICY_UCBSPEC), timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == expected
    assert any(a.arm.startswith("local/") and a.pulls for a in response.stats.arms)  # drafted again


def settled_sessions(stack, quiet: float = 2.0, timeout: float = 30.0) -> tuple[int, int]:
    """The sessions held once the counts have not changed for `quiet` seconds: the controller releases an
    earlier request's sessions in the background, so a count taken right after it may still include them."""
    deadline = time.monotonic() + timeout
    held = sessions_held(stack)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = sessions_held(stack)
        if now == held:
            return held
        held = now
    raise AssertionError(f"the sessions held kept changing for {timeout}s (last {held})")


def test_cancelled_or_expired_request_releases_its_sessions_everywhere(recovery_stack, stub):
    idle = settled_sessions(recovery_stack)  # the test before may still be releasing its request's sessions
    drafting = {"policy": generation_pb2.POLICY_FIXED, "allowed_arms": ["local/pld/3"]}  # both services hold it
    stream = stub.GenerateStream(request(LONG, **drafting), timeout=RPC_TIMEOUT)
    next(stream)
    stream.cancel()
    wait_for(lambda: sessions_held(recovery_stack) == idle, timeout=30)

    # The deadline expires while the target is stalled mid-request: the controller gives up, and the
    # releases it sends are served (queued rounds of the session dropped) once the target runs again.
    target = service(recovery_stack, "target").process
    stream = stub.GenerateStream(request(LONG, **drafting), timeout=3)
    next(stream)
    os.kill(target.pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.RpcError) as error:
            streamed(stream)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        os.kill(target.pid, signal.SIGCONT)
    wait_for(lambda: sessions_held(recovery_stack) == idle, timeout=30)


def test_sigterm_drains_the_controller(recovery_stack, stub, target_model):
    """Last: the controller stops. NOT_SERVING at once; the stream in flight finishes; then it exits."""
    expected = reference_greedy(target_model, PROMPT, LONG)
    stream = stub.GenerateStream(request(LONG, allowed_arms=SLOW), timeout=RPC_TIMEOUT)
    first = next(stream)
    target = service(recovery_stack, "target").process
    os.kill(target.pid, signal.SIGSTOP)  # holds the request in flight across the start of the drain
    controller = service(recovery_stack, "controller")
    address = recovery_stack.address("controller")
    try:
        controller.process.send_signal(signal.SIGTERM)
        wait_for(lambda: health(address) != health_pb2.HealthCheckResponse.SERVING, timeout=30)
        with pytest.raises(grpc.RpcError) as error:
            stub.Generate(request(), timeout=RPC_TIMEOUT)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE  # no new requests while draining
        assert controller.process.poll() is None
    finally:
        os.kill(target.pid, signal.SIGCONT)
    rest, final = streamed(stream)
    assert list(first.round.token_ids) + rest == expected
    assert list(final.token_ids) == expected
    assert controller.process.wait(timeout=60) == 0
