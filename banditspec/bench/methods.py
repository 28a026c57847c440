"""The methods measured: in-process `transformers` baselines and calls to the stack through gRPC."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from banditspec.policy_names import POLICY_WIRE_VALUES
from banditspec.v1 import generation_pb2

PLAIN, PLD, ASSISTED, ORACLE = "hf-plain", "hf-pld", "hf-assisted", "oracle"
# Every policy that chooses among arms; `fixed` is measured per arm instead.
ADAPTIVE = {name: value for name, value in POLICY_WIRE_VALUES.items() if name != "fixed"}
FIXED_PREFIX = "fixed:"
PLD_NUM_TOKENS = 5


def is_fixed(method: str) -> bool:
    return method.startswith(FIXED_PREFIX)


def is_stack(method: str) -> bool:
    return method in ADAPTIVE or is_fixed(method)


@dataclass
class Call:
    """One client call: generated ids and wall time; for the stack, the rounds and the final stats."""

    tokens: list[int]
    seconds: float
    arms: list[str] = field(default_factory=list)  # per round: the arm ...
    round_tokens: list[int] = field(default_factory=list)  # ... the tokens it added ...
    round_seconds: list[float] = field(default_factory=list)  # ... its wall time
    overheads: list[float] = field(default_factory=list)  # per round: wall - service seconds
    stats: dict | None = None
    problems: list[str] = field(default_factory=list)
    steal: float | None = None  # share of CPU time the hypervisor took during the call (Linux VMs)


@dataclass
class Method:
    name: str
    call: Callable[[list[int], int], Call]  # (prompt ids, request seed)
    stack: bool


# --- in-process transformers baselines --------------------------------------------------------------------


def load_model(path: Path, dtype: str, device: str) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    # transformers wraps PreTrainedModel.to in functools.wraps(Module.to), which mypy cannot bind as a method.
    model.to(device)  # type: ignore[arg-type]
    return model.eval()


def hf_call(model, prompt_ids: list[int], max_new_tokens: int, **generate_kwargs) -> Call:
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            **generate_kwargs,
        )
    tokens = out[0, ids.shape[1] :].tolist()  # .tolist() synchronises a GPU too
    return Call(tokens, time.perf_counter() - start)


def hf_methods(model, max_new_tokens: int, assistant=None) -> list[Method]:
    pad = {"pad_token_id": model.generation_config.pad_token_id or model.generation_config.eos_token_id}

    def method(name: str, **kwargs) -> Method:
        return Method(name, lambda ids, seed: hf_call(model, ids, max_new_tokens, **kwargs, **pad), stack=False)

    methods = [method(PLAIN), method(PLD, prompt_lookup_num_tokens=PLD_NUM_TOKENS)]
    if assistant is not None:
        methods.append(method(ASSISTED, assistant_model=assistant))
    return methods


# --- the stack through gRPC -------------------------------------------------------------------------------


def list_arms(stub, timeout: float) -> list[str]:
    return [arm.name for arm in stub.ListArms(generation_pb2.ListArmsRequest(), timeout=timeout).arms]


def stack_request(
    prompt_ids: list[int], max_new_tokens: int, policy: int, arms: list[str], seed: int
) -> generation_pb2.GenerateRequest:
    # protoc's stubs type an enum field as its enum class; a policy's wire value is that enum's int.
    request = generation_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        policy=cast(generation_pb2.Policy, policy),
        allowed_arms=arms,
        seed=seed,
    )
    request.token_ids.ids.extend(prompt_ids)
    return request


def response_stats(final: generation_pb2.GenerateResponse) -> dict:
    s = final.stats
    return {
        "rounds": s.rounds,
        "generated_tokens": s.generated_tokens,
        "server_wall_seconds": s.wall_seconds,
        "prefill_seconds": s.prefill_seconds,
        "controller_overhead_median_seconds": s.controller_overhead_median_seconds,
        "controller_overhead_seconds": s.controller_overhead_seconds,
        "policy": s.policy,
        "finish_reason": generation_pb2.FinishReason.Name(final.finish_reason).removeprefix("FINISH_REASON_").lower(),
        "arms": {a.arm: {"pulls": a.pulls, "drafted": a.drafted_tokens, "accepted": a.accepted_tokens} for a in s.arms},
    }


def stack_call(stub, request, timeout: float) -> Call:
    """GenerateStream, timed on the client; the rounds from the round updates."""
    call = Call([], 0.0)
    streamed: list[int] = []
    final = None
    start = time.perf_counter()
    for message in stub.GenerateStream(request, timeout=timeout):
        if message.HasField("final"):
            final = message.final
            continue
        update = message.round
        streamed.extend(update.token_ids)
        if update.arm:  # the last update may only flush held-back text: no round
            call.arms.append(update.arm)
            call.round_tokens.append(len(update.token_ids))
            call.round_seconds.append(update.wall_seconds)
            call.overheads.append(max(0.0, update.wall_seconds - update.service_seconds))
    call.seconds = time.perf_counter() - start
    if final is None:
        raise RuntimeError("GenerateStream ended without a final response")
    call.tokens, call.stats = list(final.token_ids), response_stats(final)
    call.problems = stream_problems(streamed, final, len(call.arms))
    return call


def stream_problems(streamed: list[int], final, rounds: int) -> list[str]:
    """Consistency of the stream with the final response (each one a product bug)."""
    problems = []
    if streamed != list(final.token_ids):
        problems.append(f"streamed ids ({len(streamed)}) differ from final token_ids ({len(final.token_ids)})")
    if final.stats.generated_tokens != len(final.token_ids):
        problems.append(f"stats.generated_tokens {final.stats.generated_tokens} != {len(final.token_ids)} token_ids")
    if final.stats.rounds != rounds:
        problems.append(f"stats.rounds {final.stats.rounds} != {rounds} round updates")
    return problems


def stack_methods(
    stub, arms: list[str], max_new_tokens: int, timeout: float, policies: list[str] | None = None
) -> list[Method]:
    def method(name: str, policy: int, allowed: list[str]) -> Method:
        return Method(
            name,
            lambda ids, seed: stack_call(stub, stack_request(ids, max_new_tokens, policy, allowed, seed), timeout),
            stack=True,
        )

    methods = [method(name, policy, []) for name, policy in ADAPTIVE.items() if policies is None or name in policies]
    methods += [method(FIXED_PREFIX + arm, generation_pb2.POLICY_FIXED, [arm]) for arm in arms]
    return methods
