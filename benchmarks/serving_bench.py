"""Serving benchmark: banditspec's gRPC stack against in-process `transformers` generation.

What it measures, per dtype (float32 and bfloat16 by default; the target and the baselines always share it):

  hf-plain         `model.generate(do_sample=False)` in this process (the reference output too)
  hf-pld           `model.generate(do_sample=False, prompt_lookup_num_tokens=5)` in this process
  ucbspec          the local stack (target + draft service + controller) through gRPC, policy UCBSpec
  exp3spec         the same, policy EXP3Spec
  fixed:ARM        the same, policy FIXED with allowed_arms=[ARM], for every arm ListArms returns

on a mixed workload of chat prompts (benchmarks/prompts.json: creative writing, explanation, code editing,
summarisation), greedy, --max-new-tokens new tokens (default 128), with the default model
SmolLM2-135M-Instruct.

tokens/s = generated tokens / wall seconds of one client call (generate(), or the whole GenerateStream call);
both include prefill. Each method gets one untimed warm-up request first. Methods are interleaved per prompt
(for each prompt, for each repeat: every method in turn), so that slow drift of a shared machine hits all
methods alike, and the in-process baselines run while the stack's processes sit idle between requests.
With --repeats N the median wall time is used.

Aggregates: tokens/s per method = total tokens / total seconds over the workload, also per prompt kind; the
ratios ucbspec / hf-pld, ucbspec / hf-plain (aggregate) and ucbspec / max(hf-plain, hf-pld) per kind (the same for
exp3spec); the median controller overhead per round (round wall - compute the services report, from the
GenerateStream round updates).

Correctness: every stack response (and hf-pld) must equal hf-plain token for token (prompt excluded; an eos token
that ends generation is included on both sides). Mismatches are reported per dtype/prompt/method. In bfloat16 they
can have numerical causes and are only reported; a float32 mismatch of the stack is a bug: exit status 1.

Run (from the repository root):

    .venv/bin/python benchmarks/serving_bench.py --json results/bench.json
    .venv/bin/python benchmarks/serving_bench.py --quick          # smoke run: 1 prompt per kind, 32 tokens, float32

Flags: --dtypes float32,bfloat16  --max-new-tokens 128  --repeats 1  --kinds code_edit,summarisation
--limit N (prompts per kind)  --json PATH  --quick  --device auto|cpu|cuda  --log-dir DIR (service logs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import grpc  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from banditspec.default_model import resolve_model_path  # noqa: E402
from banditspec.launcher import LocalStack  # noqa: E402
from banditspec.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402

PROMPTS_FILE = Path(__file__).with_name("prompts.json")
PLAIN, PLD, ASSISTED = "hf-plain", "hf-pld", "hf-assisted"
BANDITS = {"ucbspec": generation_pb2.POLICY_UCBSPEC, "exp3spec": generation_pb2.POLICY_EXP3SPEC}
PLD_NUM_TOKENS = 5
QUICK = {"limit": 1, "max_new_tokens": 32, "dtypes": ["float32"]}


# --- data -------------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    id: str
    kind: str
    messages: list[dict] | None  # a chat, rendered with the chat template ...
    text: str | None = None  # ... or raw text (passage openings for a base model)
    ids: list[int] = field(default_factory=list)


@dataclass
class Call:
    """One client call: the generated ids, its wall time, and (stack only) rounds and the final stats."""

    tokens: list[int]
    seconds: float
    overheads: list[float] = field(default_factory=list)  # per round: wall - service seconds
    stats: dict | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Method:
    name: str
    call: Callable[[list[int]], Call]
    stack: bool


@dataclass
class Measurement:
    """One (dtype, prompt, method): median over repeats."""

    dtype: str
    prompt: str
    kind: str
    method: str
    tokens: int
    seconds: float
    tokens_per_second: float
    seconds_per_repeat: list[float]
    matches_reference: bool | None
    stats: dict | None = None


# --- workload ---------------------------------------------------------------------------------------------


def load_prompts(path: Path, kinds: list[str] | None, limit: int | None) -> list[Prompt]:
    prompts = [Prompt(p["id"], p["kind"], p.get("messages"), p.get("text")) for p in json.loads(path.read_text())["prompts"]]
    known = sorted({p.kind for p in prompts})
    unknown = [k for k in kinds or [] if k not in known]
    if unknown:
        sys.exit(f"unknown kind(s) {', '.join(unknown)}; the prompts file has {', '.join(known)}")
    if kinds:
        prompts = [p for p in prompts if p.kind in kinds]
    if limit:
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for p in prompts:
            if taken[p.kind] < limit:
                taken[p.kind] += 1
                kept.append(p)
        prompts = kept
    return prompts


def render_prompts(prompts: list[Prompt], tokenizer) -> None:
    """The chat template with the generation prompt; the stack gets the same ids (token_ids prompt)."""
    for p in prompts:
        if p.text is not None:
            p.ids = tokenizer.encode(p.text, add_special_tokens=False)
            continue
        encoded = tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True)
        p.ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


# --- in-process transformers baselines --------------------------------------------------------------------


def load_model(path: Path, dtype: str, device: str):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    return model.to(device).eval()


def hf_call(model, prompt_ids: list[int], max_new_tokens: int, **generate_kwargs) -> Call:
    device = model.device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
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
    assisted = [] if assistant is None else [
        Method(ASSISTED, lambda ids: hf_call(model, ids, max_new_tokens, assistant_model=assistant, **pad), stack=False)
    ]
    return assisted + [
        Method(PLAIN, lambda ids: hf_call(model, ids, max_new_tokens, **pad), stack=False),
        Method(
            PLD,
            lambda ids: hf_call(model, ids, max_new_tokens, prompt_lookup_num_tokens=PLD_NUM_TOKENS, **pad),
            stack=False,
        ),
    ]


# --- the stack through gRPC -------------------------------------------------------------------------------


def list_arms(stub, timeout: float) -> list[str]:
    return [arm.name for arm in stub.ListArms(generation_pb2.ListArmsRequest(), timeout=timeout).arms]


def stack_request(prompt_ids: list[int], max_new_tokens: int, policy: int, arms: list[str], seed: int):
    request = generation_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens, temperature=0.0, policy=policy, allowed_arms=arms, seed=seed
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
        "arms": {
            a.arm: {"pulls": a.pulls, "drafted": a.drafted_tokens, "accepted": a.accepted_tokens} for a in s.arms
        },
    }


def stack_call(stub, request, timeout: float) -> Call:
    """GenerateStream, timed on the client; per-round overheads from the round updates."""
    streamed: list[int] = []
    overheads: list[float] = []
    final = None
    start = time.perf_counter()
    for message in stub.GenerateStream(request, timeout=timeout):
        if message.HasField("final"):
            final = message.final
            continue
        update = message.round
        streamed.extend(update.token_ids)
        if update.arm:  # the last update may only flush held-back text: no round
            overheads.append(max(0.0, update.wall_seconds - update.service_seconds))
    seconds = time.perf_counter() - start
    if final is None:
        raise RuntimeError("GenerateStream ended without a final response")
    call = Call(list(final.token_ids), seconds, overheads, response_stats(final))
    call.problems = stream_problems(streamed, final, overheads)
    return call


def stream_problems(streamed: list[int], final, overheads: list[float]) -> list[str]:
    """Consistency of the stream with the final response (each one a product bug)."""
    problems = []
    if streamed != list(final.token_ids):
        problems.append(f"streamed ids ({len(streamed)}) differ from final token_ids ({len(final.token_ids)})")
    if final.stats.generated_tokens != len(final.token_ids):
        problems.append(f"stats.generated_tokens {final.stats.generated_tokens} != {len(final.token_ids)} token_ids")
    if final.stats.rounds != len(overheads):
        problems.append(f"stats.rounds {final.stats.rounds} != {len(overheads)} round updates")
    return problems


def stack_methods(stub, arms: list[str], max_new_tokens: int, timeout: float, seed: int) -> list[Method]:
    def method(name: str, policy: int, allowed: list[str]) -> Method:
        return Method(
            name,
            lambda ids: stack_call(stub, stack_request(ids, max_new_tokens, policy, allowed, seed), timeout),
            stack=True,
        )

    methods = [method(name, policy, []) for name, policy in BANDITS.items()]
    methods += [method(f"fixed:{arm}", generation_pb2.POLICY_FIXED, [arm]) for arm in arms]
    return methods


# --- measuring --------------------------------------------------------------------------------------------


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(methods: list[Method], prompts: list[Prompt], repeats: int, dtype: str, log) -> dict:
    """Warm up every method, then for each prompt and repeat run every method in turn."""
    for method in methods:
        log(f"  warm-up {method.name}")
        method.call(prompts[0].ids)
    measurements, mismatches, problems = [], [], []
    overheads: dict[str, list[float]] = defaultdict(list)
    for prompt in prompts:
        calls: dict[str, list[Call]] = defaultdict(list)
        for _ in range(repeats):
            for method in methods:
                calls[method.name].append(method.call(prompt.ids))
        reference = calls[PLAIN][0].tokens
        for method in methods:
            runs = calls[method.name]
            for run in runs:
                overheads[method.name].extend(run.overheads)
                problems += [{"dtype": dtype, "prompt": prompt.id, "method": method.name, "problem": p} for p in run.problems]
            bad = mismatch(runs, reference, dtype, prompt, method)
            mismatches += bad
            measurements.append(summarise(runs, dtype, prompt, method, matches=None if method.name == PLAIN else not bad))
            log(f"  {prompt.id:<24}{method.name:<24}{measurements[-1].tokens_per_second:8.1f} tok/s"
                + ("  MISMATCH" if bad else ""))
    return {"measurements": measurements, "mismatches": mismatches, "problems": problems, "overheads": overheads}


def mismatch(runs: list[Call], reference: list[int], dtype: str, prompt: Prompt, method: Method) -> list[dict]:
    out = []
    for repeat, run in enumerate(runs):
        if run.tokens != reference:
            out.append(
                {
                    "dtype": dtype,
                    "prompt": prompt.id,
                    "method": method.name,
                    "repeat": repeat,
                    "first_difference": first_difference(run.tokens, reference),
                    "tokens": len(run.tokens),
                    "reference_tokens": len(reference),
                    "stack": method.stack,
                }
            )
    return out


def summarise(runs: list[Call], dtype: str, prompt: Prompt, method: Method, matches: bool | None) -> Measurement:
    seconds = [run.seconds for run in runs]
    median_run = sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2]
    median_seconds = statistics.median(seconds)
    tokens = len(median_run.tokens)
    return Measurement(
        dtype=dtype,
        prompt=prompt.id,
        kind=prompt.kind,
        method=method.name,
        tokens=tokens,
        seconds=median_seconds,
        tokens_per_second=tokens / median_seconds if median_seconds else 0.0,
        seconds_per_repeat=seconds,
        matches_reference=matches,
        stats=median_run.stats,
    )


# --- aggregates -------------------------------------------------------------------------------------------


def throughput(measurements: list[Measurement]) -> dict:
    tokens = sum(m.tokens for m in measurements)
    seconds = sum(m.seconds for m in measurements)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds if seconds else 0.0}


def group(measurements: list[Measurement], *keys: str) -> dict:
    groups: dict = defaultdict(list)
    for m in measurements:
        groups[tuple(getattr(m, k) for k in keys)].append(m)
    return groups


def aggregates(measurements: list[Measurement]) -> tuple[dict, dict]:
    per_method = {method: throughput(ms) for (method,), ms in group(measurements, "method").items()}
    per_kind: dict = defaultdict(dict)
    for (kind, method), ms in group(measurements, "kind", "method").items():
        per_kind[kind][method] = throughput(ms)
    return per_method, dict(per_kind)


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def ratios(per_method: dict, per_kind: dict) -> dict:
    tps = {method: v["tokens_per_second"] for method, v in per_method.items()}
    out = {}
    for policy in BANDITS:
        if policy not in tps:
            continue
        out[f"{policy}/{PLD}"] = ratio(tps[policy], tps[PLD])
        out[f"{policy}/{PLAIN}"] = ratio(tps[policy], tps[PLAIN])
        if ASSISTED in tps:
            out[f"{policy}/{ASSISTED}"] = ratio(tps[policy], tps[ASSISTED])
        out[f"{policy}/max({PLAIN},{PLD})_per_kind"] = {
            kind: ratio(v[policy]["tokens_per_second"], max(v[PLAIN]["tokens_per_second"], v[PLD]["tokens_per_second"]))
            for kind, v in per_kind.items()
        }
    return out


def versus_fixed_arms(measurements: list[Measurement], per_method: dict) -> dict:
    """Each bandit against the best single fixed arm (aggregate) and the per-prompt oracle (best fixed arm per prompt)."""
    fixed = [m for m in per_method if m.startswith("fixed:")]
    if not fixed:
        return {}
    best = max(fixed, key=lambda m: per_method[m]["tokens_per_second"])
    oracle_tokens = oracle_seconds = 0.0
    for _, ms in group(measurements, "prompt").items():
        arms = [m for m in ms if m.method in fixed]
        pick = max(arms, key=lambda m: m.tokens_per_second)
        oracle_tokens, oracle_seconds = oracle_tokens + pick.tokens, oracle_seconds + pick.seconds
    oracle = oracle_tokens / oracle_seconds if oracle_seconds else 0.0
    out = {"best_fixed_arm": best, "best_fixed_tokens_per_second": per_method[best]["tokens_per_second"], "oracle_tokens_per_second": oracle}
    for policy in BANDITS:
        if policy in per_method:
            tps = per_method[policy]["tokens_per_second"]
            out[f"{policy}/best_fixed"] = ratio(tps, per_method[best]["tokens_per_second"])
            out[f"{policy}/oracle"] = ratio(tps, oracle)
    return out


def acceptance(measurements: list[Measurement]) -> dict:
    """Per kind and stack method: accepted / drafted tokens, and generated tokens per round."""
    out: dict = defaultdict(dict)
    for (kind, method), ms in group(measurements, "kind", "method").items():
        stats = [m.stats for m in ms if m.stats]
        if not stats:
            continue
        drafted = sum(a["drafted"] for s in stats for a in s["arms"].values())
        accepted = sum(a["accepted"] for s in stats for a in s["arms"].values())
        rounds = sum(s["rounds"] for s in stats)
        out[kind][method] = {
            "acceptance": accepted / drafted if drafted else None,
            "tokens_per_round": sum(s["generated_tokens"] for s in stats) / rounds if rounds else None,
        }
    return dict(out)


def overhead_summary(overheads: dict[str, list[float]]) -> dict:
    every = [x for values in overheads.values() for x in values]
    summary = {name: {"rounds": len(v), "median_ms": statistics.median(v) * 1e3} for name, v in overheads.items() if v}
    summary["all_stack_rounds"] = {"rounds": len(every), "median_ms": statistics.median(every) * 1e3 if every else None}
    return summary


def arm_usage(measurements: list[Measurement]) -> dict:
    """Per stack method: pulls, drafted and accepted tokens per arm summed over the workload (median runs)."""
    usage: dict = defaultdict(lambda: defaultdict(lambda: {"pulls": 0, "drafted": 0, "accepted": 0}))
    for m in measurements:
        for arm, counts in ((m.stats or {}).get("arms") or {}).items():
            for key, value in counts.items():
                usage[m.method][arm][key] += value
    return {method: {arm: dict(c) for arm, c in arms.items()} for method, arms in usage.items()}


# --- printing ---------------------------------------------------------------------------------------------


def print_prompt_table(dtype: str, measurements: list[Measurement], methods: list[str]) -> None:
    width = max(9, *(len(m) for m in methods)) + 1
    print(f"\n== {dtype}: tokens/s per prompt ('!' = output differs from {PLAIN}) ==")
    print(f"{'prompt':<24}{'kind':<15}{'tokens':>7}" + "".join(f"{m:>{width}}" for m in methods))
    for (prompt, kind), ms in group(measurements, "prompt", "kind").items():
        by_method = {m.method: m for m in ms}
        cells = "".join(
            f"{by_method[m].tokens_per_second:>{width - 1}.1f}{'!' if by_method[m].matches_reference is False else ' '}"
            for m in methods
        )
        print(f"{prompt:<24}{kind:<15}{by_method[PLAIN].tokens:>7}{cells}")


def print_aggregates(result: dict, methods: list[str]) -> None:
    width = max(9, *(len(m) for m in methods)) + 1
    print(f"{'aggregate tok/s':<46}" + "".join(f"{m:>{width}}" for m in methods))
    print(f"{'all prompts':<46}" + "".join(f"{result['per_method'][m]['tokens_per_second']:>{width}.1f}" for m in methods))
    for kind, values in result["per_kind"].items():
        print(f"{'  ' + kind:<46}" + "".join(f"{values[m]['tokens_per_second']:>{width}.1f}" for m in methods))
    print("ratios:")
    for name, value in result["ratios"].items():
        if isinstance(value, dict):
            print(f"  {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()))
        else:
            print(f"  {name}: {_fmt(value)}")


def print_acceptance(result: dict, methods: list[str]) -> None:
    stack = [m for m in methods if any(m in v for v in result["acceptance"].values())]
    if not stack:
        return
    width = max(9, *(len(m) for m in stack)) + 1
    print("per-token acceptance (accepted/drafted) | tokens per round")
    print(f"{'kind':<16}" + "".join(f"{m:>{width}}" for m in stack))
    for kind, values in result["acceptance"].items():
        cells = []
        for m in stack:
            v = values.get(m, {})
            rate = "-" if v.get("acceptance") is None else f"{v['acceptance']:.2f}"
            cells.append(f"{rate + '|' + format(v.get('tokens_per_round') or 0, '.2f'):>{width}}")
        print(f"{kind:<16}" + "".join(cells))
    versus = result["versus_fixed_arms"]
    if versus:
        print(f"best fixed arm {versus['best_fixed_arm']} {versus['best_fixed_tokens_per_second']:.1f} tok/s, "
              f"per-prompt oracle {versus['oracle_tokens_per_second']:.1f} tok/s; "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in versus.items() if "/" in k))


def print_overheads(result: dict) -> None:
    overall = result["controller_overhead"]["all_stack_rounds"]
    if overall["median_ms"] is not None:
        print(f"controller overhead per round: median {overall['median_ms']:.2f} ms over {overall['rounds']} rounds")
    for name, v in result["controller_overhead"].items():
        if name != "all_stack_rounds":
            print(f"  {name:<28}{v['median_ms']:7.2f} ms  ({v['rounds']} rounds)")
    for method, arms in result["arm_usage"].items():
        if method in BANDITS:
            print(f"  {method} arm pulls (accepted/drafted): "
                  + ", ".join(f"{arm} {c['pulls']} ({c['accepted']}/{c['drafted']})" for arm, c in arms.items()))


def print_mismatches(mismatches: list[dict], problems: list[dict]) -> None:
    for m in mismatches:
        where = "stack" if m["stack"] else "transformers"
        print(f"MISMATCH [{m['dtype']}] {m['prompt']} {m['method']} (repeat {m['repeat']}, {where}): first difference at "
              f"token {m['first_difference']}, {m['tokens']} tokens vs {m['reference_tokens']} from {PLAIN}")
    for p in problems:
        print(f"PROBLEM [{p['dtype']}] {p['prompt']} {p['method']}: {p['problem']}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


# --- machine and run --------------------------------------------------------------------------------------


def machine(device: str) -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "grpc": grpc.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_dtype(dtype: str, model_path: Path, prompts: list[Prompt], args: argparse.Namespace, log) -> dict:
    """Load the in-process model and start the stack in `dtype`; measure every method; stop the stack."""
    log(f"[{dtype}] loading the in-process model and starting the stack...")
    model = load_model(model_path, dtype, args.device)
    assistant = load_model(resolve_model_path(args.assistant), dtype, args.device) if args.assistant else None
    stack = LocalStack(
        model=str(model_path),
        drafters=args.drafter or ["pld=prompt_lookup"],
        controller_port=0,
        extra_target_args=["--dtype", dtype, "--device", args.device],
        extra_draft_args=["--dtype", dtype, "--device", args.device],
        log_dir=Path(args.log_dir) / dtype,
    )
    with stack, grpc.insecure_channel(stack.address("controller")) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        arms = list_arms(stub, timeout=30)
        log(f"[{dtype}] arms: {', '.join(arms)}")
        methods = hf_methods(model, args.max_new_tokens, assistant) + stack_methods(
            stub, arms, args.max_new_tokens, args.timeout, args.seed
        )
        raw = measure(methods, prompts, args.repeats, dtype, log)
    del model, assistant
    return build_result(dtype, arms, [m.name for m in methods], raw)


def build_result(dtype: str, arms: list[str], methods: list[str], raw: dict) -> dict:
    per_method, per_kind = aggregates(raw["measurements"])
    return {
        "dtype": dtype,
        "arms": arms,
        "methods": methods,
        "per_prompt": [asdict(m) for m in raw["measurements"]],
        "per_method": per_method,
        "per_kind": per_kind,
        "ratios": ratios(per_method, per_kind),
        "versus_fixed_arms": versus_fixed_arms(raw["measurements"], per_method),
        "acceptance": acceptance(raw["measurements"]),
        "controller_overhead": overhead_summary(raw["overheads"]),
        "arm_usage": arm_usage(raw["measurements"]),
        "mismatches": raw["mismatches"],
        "problems": raw["problems"],
        "_measurements": raw["measurements"],
    }


def report(result: dict) -> None:
    print_prompt_table(result["dtype"], result["_measurements"], result["methods"])
    print()
    print_aggregates(result, result["methods"])
    print_acceptance(result, result["methods"])
    print_overheads(result)
    print_mismatches(result["mismatches"], result["problems"])


def failures(results: list[dict]) -> list[dict]:
    """float32 stack mismatches and stream inconsistencies fail the run; bf16 mismatches are only reported."""
    bad = [m for r in results for m in r["mismatches"] if m["stack"] and m["dtype"] == "float32"]
    return bad + [p for r in results for p in r["problems"]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32,bfloat16,float16")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per prompt and method; the median counts")
    parser.add_argument("--kinds", help="comma-separated subset of prompt kinds")
    parser.add_argument("--limit", type=int, help="prompts per kind")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 prompt per kind, 32 tokens, float32 only")
    parser.add_argument("--prompts", default=str(PROMPTS_FILE))
    parser.add_argument("--model", default="default", help="HF model directory, 'default' (SmolLM2-135M-Instruct) or pydocs")
    parser.add_argument("--assistant", help="draft model for the assisted generate() baseline (e.g. pydocs:draft-m)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (the baselines and the target)")
    parser.add_argument("--drafter", action="append", help="draft service drafter spec (default pld=prompt_lookup)")
    parser.add_argument("--seed", type=int, default=0, help="request seed (bandit tie-breaking / EXP3 draws)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per Generate RPC")
    parser.add_argument("--log-dir", help="write the services' logs under DIR/DTYPE/ (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.max_new_tokens, args.dtypes = QUICK["limit"], QUICK["max_new_tokens"], ",".join(QUICK["dtypes"])
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.log_dir:
        args.log_dir = tempfile.mkdtemp(prefix="banditspec-bench-logs-")
    if args.repeats < 1 or args.max_new_tokens < 1:
        parser.error("--repeats and --max-new-tokens must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model_path = resolve_model_path(args.model)
    prompts = load_prompts(Path(args.prompts), args.kinds, args.limit)
    render_prompts(prompts, AutoTokenizer.from_pretrained(str(model_path)))
    log(f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, dtypes {', '.join(args.dtypes)}, "
        f"{args.repeats} repeat(s), device {args.device}; service logs in {args.log_dir}")
    results = [run_dtype(dtype, model_path, prompts, args, log) for dtype in args.dtypes]
    for result in results:
        report(result)
    bad = failures(results)
    if args.json:
        write_json(Path(args.json), args, prompts, results, bad)
    if bad:
        print(f"\nFAILED: {len(bad)} float32 stack mismatch(es) or stream inconsistencies", file=sys.stderr)
        return 1
    return 0


def write_json(path: Path, args: argparse.Namespace, prompts: list[Prompt], results: list[dict], bad: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine(args.device),
        "config": {
            "model": args.model,
            "dtypes": args.dtypes,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "kinds": args.kinds,
            "limit": args.limit,
            "quick": args.quick,
            "seed": args.seed,
            "pld_num_tokens": PLD_NUM_TOKENS,
            "assistant": args.assistant,
            "drafters": args.drafter,
            "prompts": [{"id": p.id, "kind": p.kind, "prompt_tokens": len(p.ids)} for p in prompts],
        },
        "results": {r["dtype"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in results},
        "failed": bool(bad),
    }
    path.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
