"""Aggregates over the measurements: throughput, acceptance, the per-prompt oracle, regret, ratios, curves."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, replace

import numpy as np

from banditspec.bench.methods import ADAPTIVE, ASSISTED, ORACLE, PLAIN, PLD, is_fixed, is_stack
from banditspec.bench.run import Measurement

SHARE_BUCKETS = 20  # round buckets of the arm-share curves
DISTURBED_STEAL = 0.05  # a call that lost more of its CPU time than this to the hypervisor measured neighbours too


def analyse(raw: dict) -> dict:
    """Everything reported for one dtype, from run_dtype's output."""
    measured: list[Measurement] = raw["measurements"]
    oracle_rows = oracle(measured)
    rows = measured + oracle_rows
    by_prompt = {m.prompt: m for m in oracle_rows}
    kinds = list(dict.fromkeys(m.kind for m in measured))
    hf = [m for m in raw["methods"] if not is_stack(m)]
    methods = hf + ([ORACLE] if oracle_rows else []) + [m for m in raw["methods"] if is_stack(m)]
    per_method = {name: summary(ms, by_prompt) for (name,), ms in group(rows, "method").items()}
    per_kind: dict[str, dict[str, dict]] = {kind: {} for kind in kinds}
    for (kind, name), ms in group(rows, "kind", "method").items():
        per_kind[kind][name] = summary(ms, by_prompt)
    best = best_fixed(per_method, per_kind)
    steal = steal_summary(measured)
    return {
        "dtype": raw["dtype"],
        "arms": raw["arms"],
        "methods": [m for m in methods if m in per_method],
        "kinds": kinds,
        "per_prompt": [asdict(m) | prompt_regret(m, by_prompt.get(m.prompt)) for m in rows],
        "per_method": per_method,
        "per_kind": per_kind,
        "best_fixed": best,
        "oracle_arms": {m.prompt: m.stats["arm"] for m in oracle_rows if m.stats is not None},  # oracle() sets stats
        "ratios": ratios(per_method, per_kind, best),
        "paired_ratios": paired_ratios(rows, best["all"]),
        "steal": steal,
        "undisturbed": undisturbed_ratios(rows, by_prompt, set(steal["disturbed_prompts"])),
        "regret_curves": regret_curves(measured, by_prompt, kinds),
        "arm_shares": arm_shares(measured, raw["arms"]),
        "controller_overhead": overhead_summary(raw["overheads"]),
        "arm_usage": arm_usage(measured),
        "mismatches": raw["mismatches"],
        "problems": raw["problems"],
    }


def group(measurements: list[Measurement], *keys: str) -> dict:
    groups: dict = defaultdict(list)
    for m in measurements:
        groups[tuple(getattr(m, k) for k in keys)].append(m)
    return groups


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --- the oracle and regret --------------------------------------------------------------------------------


def oracle(measurements: list[Measurement]) -> list[Measurement]:
    """Per prompt, the fixed arm with the highest tokens/s, as a method of its own (stats name the arm)."""
    rows = []
    for _, ms in group(measurements, "prompt").items():
        fixed = [m for m in ms if is_fixed(m.method)]
        if fixed:
            pick = max(fixed, key=lambda m: m.tokens_per_second)
            rows.append(replace(pick, method=ORACLE, trace=None, stats=(pick.stats or {}) | {"arm": pick.method}))
    return rows


def prompt_regret(m: Measurement, best: Measurement | None) -> dict:
    """Rounds regret (REFERENCE.md §1) and time regret against the prompt's oracle arm."""
    if best is None or not best.tokens_per_second:
        return {"rounds_regret": None, "time_regret_seconds": None}
    rounds = m.rounds - best.rounds if m.rounds is not None and best.rounds is not None else None
    return {"rounds_regret": rounds, "time_regret_seconds": m.seconds - m.tokens / best.tokens_per_second}


def summary(ms: list[Measurement], oracle_by_prompt: dict[str, Measurement]) -> dict:
    """Throughput (total tokens / total seconds), rounds, acceptance and regret of one method over `ms`."""
    tokens, seconds = sum(m.tokens for m in ms), sum(m.seconds for m in ms)
    out: dict[str, float | None] = {
        "prompts": len(ms),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": ratio(tokens, seconds) or 0.0,
    }
    round_counts = [m.rounds for m in ms if m.rounds is not None]
    stacked = len(round_counts) == len(ms)  # every call went through the stack, which counts rounds
    rounds = sum(round_counts) if stacked else None
    arms = [a for m in ms for a in ((m.stats or {}).get("arms") or {}).values()]
    accepted, drafted = sum(a["accepted"] for a in arms), sum(a["drafted"] for a in arms)
    out |= {
        "rounds": rounds,
        "tokens_per_round": ratio(tokens, rounds),
        "accepted_per_round": ratio(accepted, rounds) if stacked else None,
        "acceptance": ratio(accepted, drafted) if stacked else None,
    }
    regrets = [prompt_regret(m, oracle_by_prompt.get(m.prompt)) for m in ms]
    time_regret = [r["time_regret_seconds"] for r in regrets if r["time_regret_seconds"] is not None]
    round_regret = [r["rounds_regret"] for r in regrets if r["rounds_regret"] is not None]
    out |= {
        "rounds_regret": sum(round_regret) if round_regret else None,
        "rounds_regret_mean": statistics.fmean(round_regret) if round_regret else None,
        "time_regret_seconds": sum(time_regret) if time_regret else None,
        "time_regret_mean_seconds": statistics.fmean(time_regret) if time_regret else None,
    }
    return out


# --- ratios -----------------------------------------------------------------------------------------------


def best_fixed(per_method: dict, per_kind: dict) -> dict:
    """The fixed arm with the highest aggregate tokens/s: over the workload ("all") and within each kind."""

    def best(scope: dict) -> str | None:
        fixed = [m for m in scope if is_fixed(m)]
        return max(fixed, key=lambda m: scope[m]["tokens_per_second"]) if fixed else None

    return {"all": best(per_method)} | {kind: best(scope) for kind, scope in per_kind.items()}


def ratios(per_method: dict, per_kind: dict, best: dict) -> dict:
    """Each adaptive policy's tokens/s ÷ each baseline's, over the workload ("all") and per kind."""
    scopes = {"all": per_method} | per_kind

    def tps(scope: str, method: str | None) -> float | None:
        return scopes[scope][method]["tokens_per_second"] if method in scopes[scope] else None

    out: dict = {}
    for policy in ADAPTIVE:
        if policy not in per_method:
            continue
        out[policy] = {}
        for baseline in ("best_fixed", ORACLE, PLAIN, PLD, ASSISTED):
            if baseline != "best_fixed" and baseline not in per_method:
                continue
            out[policy][baseline] = {
                scope: ratio(tps(scope, policy), tps(scope, best[scope] if baseline == "best_fixed" else baseline))
                for scope in scopes
            }
    return out


def paired_ratios(rows: list[Measurement], best_arm: str | None) -> dict:
    """Each adaptive policy's median over prompts of (its tokens/s ÷ a baseline's on the same prompt).

    A prompt's methods run back to back, so a per-prompt ratio cancels the machine's drift between prompts,
    which moves the aggregate ratios when a noisy neighbour comes and goes during an hour-long run."""
    by_prompt: dict[str, dict[str, float]] = defaultdict(dict)
    for m in rows:
        by_prompt[m.prompt][m.method] = m.tokens_per_second
    out: dict = {}
    for policy in ADAPTIVE:
        for baseline in ("best_fixed", ORACLE, PLAIN, PLD, ASSISTED):
            other = best_arm if baseline == "best_fixed" else baseline
            if other is None:
                continue
            pairs = [t[policy] / t[other] for t in by_prompt.values() if policy in t and t.get(other)]
            if pairs:
                out.setdefault(policy, {})[baseline] = statistics.median(pairs)
    return out


def steal_summary(measured: list[Measurement]) -> dict:
    """How much CPU the hypervisor took during the run, and which prompts it disturbed."""
    seen = [(m, m.steal) for m in measured if m.steal is not None]
    disturbed = sorted({m.prompt for m, steal in seen if steal > DISTURBED_STEAL})
    seconds = sum(m.seconds for m, _ in seen)
    weighted = sum(steal * m.seconds for m, steal in seen) / seconds if seconds else None
    return {
        "mean": weighted,
        "threshold": DISTURBED_STEAL,
        "disturbed_prompts": disturbed,
        "prompts": len({m.prompt for m in measured}),
    }


def undisturbed_ratios(rows: list[Measurement], oracle_by_prompt: dict, disturbed: set[str]) -> dict:
    """The workload ratios again over the prompts no call of which the hypervisor disturbed (empty when
    none or all were). Those prompts are not a random sample of the workload: they are the ones measured
    while the neighbours were quiet."""
    quiet = [m for m in rows if m.prompt not in disturbed]
    if not disturbed or not quiet:
        return {}
    per_method = {name: summary(ms, oracle_by_prompt) for (name,), ms in group(quiet, "method").items()}
    best = best_fixed(per_method, {})
    return {
        "prompts": len({m.prompt for m in quiet}),
        "best_fixed": best["all"],
        "ratios": {
            policy: {base: v["all"] for base, v in bases.items()}
            for policy, bases in ratios(per_method, {}, best).items()
        },
    }


# --- curves over rounds -----------------------------------------------------------------------------------


def regret_curves(measurements: list[Measurement], oracle_by_prompt: dict, kinds: list[str]) -> dict:
    """Per policy, the mean over prompts of the cumulative time regret after each round (also per kind).

    At round t: round seconds so far − tokens so far / the oracle arm's decode rate (its tokens over its summed
    round seconds). A prompt that has finished keeps its final value."""
    out = {}
    for policy in ADAPTIVE:
        curves: dict[str, list[np.ndarray]] = defaultdict(list)
        for m in measurements:
            best = oracle_by_prompt.get(m.prompt)
            if m.method != policy or not m.trace or not m.trace["seconds"] or best is None or not best.round_seconds:
                continue
            rate = best.tokens / best.round_seconds
            curve = np.cumsum(m.trace["seconds"]) - np.cumsum(m.trace["tokens"]) / rate
            curves["all"].append(curve)
            curves[m.kind].append(curve)
        if curves:
            out[policy] = {"all": mean_padded(curves["all"])} | {
                "per_kind": {kind: mean_padded(curves[kind]) for kind in kinds if curves[kind]}
            }
    return out


def mean_padded(curves: list[np.ndarray]) -> list[float]:
    """Mean of curves of different lengths, each extended with its last value."""
    length = max(len(c) for c in curves)
    padded = [np.concatenate([c, np.full(length - len(c), c[-1])]) for c in curves]
    return np.mean(padded, axis=0).tolist()


def arm_shares(measurements: list[Measurement], arms: list[str]) -> dict:
    """Per policy: the share of pulls of each arm in buckets of rounds, averaged over the prompts that reach the
    bucket."""
    out = {}
    for policy in ADAPTIVE:
        traces = [m.trace["arms"] for m in measurements if m.method == policy and m.trace and m.trace["arms"]]
        if not traces:
            continue
        names = arms + sorted({a for t in traces for a in t} - set(arms))
        longest = max(len(t) for t in traces)
        size = max(1, math.ceil(longest / SHARE_BUCKETS))
        buckets = math.ceil(longest / size)
        shares = np.full((len(traces), buckets, len(names)), np.nan)
        for i, trace in enumerate(traces):
            counts = np.zeros((buckets, len(names)))
            for r, arm in enumerate(trace):
                counts[r // size, names.index(arm)] += 1
            reached = counts.sum(axis=1) > 0
            shares[i, reached] = counts[reached] / counts[reached].sum(axis=1, keepdims=True)
        mean = np.nanmean(shares, axis=0)  # every bucket is reached by the longest trace
        out[policy] = {
            "bucket_size": size,
            "bucket_starts": [1 + b * size for b in range(buckets)],
            "shares": {name: mean[:, j].tolist() for j, name in enumerate(names)},
        }
    return out


# --- the stack's own numbers ------------------------------------------------------------------------------


def overhead_summary(overheads: dict[str, list[float]]) -> dict:
    """Controller overhead per round (round wall − compute the services report): median per method and overall."""
    every = [x for values in overheads.values() for x in values]
    summary: dict[str, dict[str, float | None]] = {
        name: {"rounds": len(v), "median_ms": statistics.median(v) * 1e3} for name, v in overheads.items() if v
    }
    summary["all_stack_rounds"] = {"rounds": len(every), "median_ms": statistics.median(every) * 1e3 if every else None}
    return summary


def arm_usage(measurements: list[Measurement]) -> dict:
    """Per stack method: pulls, drafted and accepted tokens per arm, summed over the workload (median runs)."""
    usage: dict = defaultdict(lambda: defaultdict(lambda: {"pulls": 0, "drafted": 0, "accepted": 0}))
    for m in measurements:
        for arm, counts in ((m.stats or {}).get("arms") or {}).items():
            for key, value in counts.items():
                usage[m.method][arm][key] += value
    return {method: {arm: dict(c) for arm, c in arms.items()} for method, arms in usage.items()}


def failures(results: list[dict]) -> list[dict]:
    """float32 stack mismatches and stream inconsistencies fail the run; other mismatches are only reported."""
    bad = [m for r in results for m in r["mismatches"] if m["stack"] and m["dtype"] == "float32"]
    return bad + [p for r in results for p in r["problems"]]
