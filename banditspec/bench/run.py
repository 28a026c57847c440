"""The measuring loop: start the stack in one dtype, warm every method up, run them interleaved per prompt."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

import grpc
from tqdm import tqdm

from banditspec.bench.config import TARGET_ARGS, BenchConfig
from banditspec.bench.machine import StealMeter
from banditspec.bench.methods import (
    ADAPTIVE,
    PLAIN,
    Call,
    Method,
    hf_methods,
    list_arms,
    load_model,
    stack_methods,
)
from banditspec.bench.workload import Prompt
from banditspec.channels import open_channel
from banditspec.cli.launcher import LocalStack
from banditspec.model_paths import resolve_model_path
from banditspec.tokens import common_prefix_length
from banditspec.v1 import generation_pb2_grpc


@dataclass
class Measurement:
    """One (dtype, prompt, method): the median call over repeats."""

    dtype: str
    prompt: str
    kind: str
    method: str
    tokens: int
    seconds: float
    tokens_per_second: float
    seconds_per_repeat: list[float]
    matches_reference: bool | None
    rounds: int | None = None  # stack methods (and the oracle)
    round_seconds: float | None = None  # summed round wall times: decoding without prefill
    trace: dict | None = None  # adaptive policies: per round "arms", "tokens", "seconds"
    stats: dict | None = None
    token_ids: list[int] | None = None  # the median call's output, to compare runs token by token
    steal: float | None = None  # the most CPU steal any repeat saw (see machine.cpu_ticks)


def run_dtype(config: BenchConfig, dtype: str, prompts: list[Prompt], log) -> dict:
    """Load the in-process models and start the stack in `dtype`; measure every method; stop the stack."""
    log(f"[{dtype}] loading the in-process model and starting the stack...")
    model_path = resolve_model_path(config.model)
    model = load_model(model_path, dtype, config.device)
    assistant = load_model(resolve_model_path(config.assistant), dtype, config.device) if config.assistant else None
    device_args = ["--dtype", dtype, "--device", config.device]
    stack = LocalStack(
        model=str(model_path),
        drafters=config.drafters,
        controller_port=0,
        extra_target_args=[*TARGET_ARGS, *device_args, *config.target_args],
        extra_draft_args=device_args,
        extra_controller_args=config.controller_args,
        log_dir=config.log_dir / dtype,
    )
    with stack, open_channel(stack.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        arms = list_arms(stub, timeout=30)
        log(f"[{dtype}] arms: {', '.join(arms)}")
        methods = hf_methods(model, config.max_new_tokens, assistant) + stack_methods(
            stub, arms, config.max_new_tokens, config.timeout, config.policies
        )
        raw = measure(methods, prompts, config.repeats, dtype, config.seed)
    return {"dtype": dtype, "arms": arms, "methods": [m.name for m in methods], **raw}


def measure(methods: list[Method], prompts: list[Prompt], repeats: int, dtype: str, seed: int) -> dict:
    """Warm up every method, then for each prompt and repeat run every method in turn.

    Prompt i's requests get seed + i: with one seed for all, EXP3 and uniform would draw the same arms on
    every prompt, and averages over prompts would not average over their randomness."""
    out: dict = {"measurements": [], "mismatches": [], "problems": [], "overheads": defaultdict(list)}
    with tqdm(total=len(methods) * (1 + len(prompts) * repeats), desc=f"bench {dtype}", unit="call") as bar:

        def call(method: Method, prompt: Prompt, seed: int, label: str) -> Call:
            bar.set_postfix_str(label)
            with StealMeter() as steal:
                try:
                    result = method.call(prompt.ids, seed)
                except grpc.RpcError as error:  # one transient failure must not cost an hour-long run
                    bar.write(f"[{dtype}] {label}: {error.code().name} {error.details()}; retrying once")
                    result = method.call(prompt.ids, seed)
                    result.problems.append(f"first call failed: {error.code().name} {error.details()}")
            result.steal = steal.fraction
            bar.update()
            return result

        for method in methods:
            call(method, prompts[0], seed, f"warm-up {method.name}")
        for index, prompt in enumerate(prompts):
            calls: dict[str, list[Call]] = defaultdict(list)
            for _ in range(repeats):
                for method in methods:
                    calls[method.name].append(call(method, prompt, seed + index, f"{prompt.id} {method.name}"))
            record(out, calls, methods, prompt, dtype, bar.write)
    out["overheads"] = dict(out["overheads"])
    return out


def record(out: dict, calls: dict[str, list[Call]], methods: list[Method], prompt: Prompt, dtype: str, warn) -> None:
    """Summarise one prompt's calls into `out`, each output checked against hf-plain's."""
    reference = calls[PLAIN][0].tokens
    for method in methods:
        runs = calls[method.name]
        for run in runs:
            out["overheads"][method.name].extend(run.overheads)
            out["problems"] += [
                {"dtype": dtype, "prompt": prompt.id, "method": method.name, "problem": p} for p in run.problems
            ]
        bad = mismatch(runs, reference, dtype, prompt, method)
        for m in bad:
            warn(f"MISMATCH [{dtype}] {prompt.id} {method.name}: first difference at token {m['first_difference']}")
        out["mismatches"] += bad
        matches = None if method.name == PLAIN else not bad
        out["measurements"].append(summarise(runs, dtype, prompt, method, matches))


def mismatch(runs: list[Call], reference: list[int], dtype: str, prompt: Prompt, method: Method) -> list[dict]:
    return [
        {
            "dtype": dtype,
            "prompt": prompt.id,
            "method": method.name,
            "repeat": repeat,
            "first_difference": common_prefix_length(run.tokens, reference),
            "tokens": len(run.tokens),
            "reference_tokens": len(reference),
            "stack": method.stack,
        }
        for repeat, run in enumerate(runs)
        if run.tokens != reference
    ]


def summarise(runs: list[Call], dtype: str, prompt: Prompt, method: Method, matches: bool | None) -> Measurement:
    seconds = [run.seconds for run in runs]
    run = sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]
    median_seconds = statistics.median(seconds)
    trace = None
    if method.name in ADAPTIVE:
        trace = {"arms": run.arms, "tokens": run.round_tokens, "seconds": run.round_seconds}
    return Measurement(
        dtype=dtype,
        prompt=prompt.id,
        kind=prompt.kind,
        method=method.name,
        tokens=len(run.tokens),
        seconds=median_seconds,
        tokens_per_second=len(run.tokens) / median_seconds if median_seconds else 0.0,
        seconds_per_repeat=seconds,
        matches_reference=matches,
        rounds=len(run.arms) if method.stack else None,
        round_seconds=sum(run.round_seconds) if method.stack else None,
        trace=trace,
        stats=run.stats,
        token_ids=list(run.tokens),
        steal=max((r.steal for r in runs if r.steal is not None), default=None),
    )
