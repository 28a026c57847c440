"""The results of a run: one JSON document with everything, and a Markdown summary of it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from banditspec.bench.methods import ADAPTIVE, ORACLE, PLAIN, PLD_NUM_TOKENS

BASELINE_NAMES = {"best_fixed": "best fixed arm", ORACLE: "per-prompt oracle"}


def build_document(config, machine: dict, prompts, results: list[dict], failed: bool, plots: dict) -> dict:
    return {
        "machine": machine,
        "config": config.to_json() | {"pld_num_tokens": PLD_NUM_TOKENS},
        "prompts": [{"id": p.id, "kind": p.kind, "prompt_tokens": len(p.ids)} for p in prompts],
        "results": {r["dtype"]: r for r in results},
        "plots": {dtype: {name: path.name for name, path in paths.items()} for dtype, paths in plots.items()},
        "failed": failed,
    }


def write_reports(document: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(document, indent=1))
    md_path.write_text(markdown(document))
    return json_path, md_path


def markdown(document: dict) -> str:
    config, machine = document["config"], document["machine"]
    kinds = Counter(p["kind"] for p in document["prompts"])
    commit = (machine["git_commit"] or "unknown")[:7] + (" (uncommitted changes)" if machine["git_dirty"] else "")
    lines = [
        f"# banditspec bench: {config['family']} family" + (" (reduced)" if config["reduced"] else ""),
        "",
        f"Model `{config['model']}`, workload `{Path(config['prompts']).name}`: {len(document['prompts'])} prompts "
        f"({', '.join(f'{k} {n}' for k, n in kinds.items())}), {config['max_new_tokens']} new tokens, greedy, "
        f"{config['repeats']} repeat(s) (median), device {config['device']}, "
        f"{config['threads'] or 'default'} torch thread(s) per process. "
        f"Drafters: {', '.join(f'`{d}`' for d in config['drafters'])}; assisted baseline: "
        + (f"`{config['assistant']}`." if config["assistant"] else "none."),
        f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable CPUs"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
        + f"; torch {machine['torch']}, transformers {machine['transformers']}; commit {commit}"
        + (f"; the run took {document['elapsed_seconds']:.0f} s." if "elapsed_seconds" in document else "."),
        "",
        "tokens/s = generated tokens / wall seconds of one client call, prefill included; aggregates are total "
        "tokens / total seconds. oracle = per prompt, the fixed arm with the highest tokens/s in hindsight. "
        "Regret is against that arm: rounds − its rounds (stopping-time regret), and seconds − tokens ÷ its "
        "tokens/s (time regret).",
    ]
    for result in document["results"].values():
        lines += dtype_section(result, document["plots"].get(result["dtype"], {}))
    return "\n".join(lines) + "\n"


def dtype_section(r: dict, plots: dict) -> list[str]:
    methods, kinds = r["methods"], r["kinds"]
    stack = [m for m in methods if r["per_method"][m]["rounds"] is not None]
    lines = ["", f"## {r['dtype']}", "", "### Tokens/s", ""]
    lines += table(
        ["method", "all", *kinds],
        [
            [
                f"`{m}`",
                _num(r["per_method"][m]["tokens_per_second"]),
                *(_num(r["per_kind"][k].get(m, {}).get("tokens_per_second")) for k in kinds),
            ]
            for m in methods
        ],
    )
    best = r["best_fixed"]
    picks = Counter(r["oracle_arms"].values())
    lines += [
        "",
        f"Best fixed arm over the workload: `{best['all']}`; per kind: "
        + ", ".join(f"{k} `{best[k]}`" for k in kinds)
        + ".",
        "Oracle picks: " + ", ".join(f"`{arm}` ×{n}" for arm, n in picks.most_common()) + ".",
        "",
        "### Ratios (tokens/s ÷ tokens/s)",
        "",
        "Per kind, the best fixed arm is the best one for that kind.",
        "",
    ]
    paired = r.get("paired_ratios", {})
    undisturbed = r.get("undisturbed") or {}
    quiet = undisturbed.get("ratios", {})
    quiet_header = [f"{undisturbed['prompts']} undisturbed prompts"] if undisturbed else []
    lines += table(
        ["ratio", "all", "median per prompt", *quiet_header, *kinds],
        [
            [
                f"{policy} ÷ {BASELINE_NAMES.get(base, base)}",
                _ratio(v.get("all")),
                _ratio(paired.get(policy, {}).get(base)),
                *([_ratio(quiet.get(policy, {}).get(base))] if undisturbed else []),
                *(_ratio(v.get(scope)) for scope in kinds),
            ]
            for policy, bases in r["ratios"].items()
            for base, v in bases.items()
        ],
    )
    lines += [
        "",
        "median per prompt: the median over prompts of the two methods' ratio on that prompt (they run "
        "back to back, so it holds when the machine's speed drifts during the run).",
        *steal_note(r),
    ]
    lines += ["", "### Rounds, acceptance and regret", ""]
    lines += table(
        [
            "method",
            "rounds",
            "tokens/round",
            "accepted/round",
            "acceptance",
            "rounds regret (sum, mean)",
            "time regret s (sum, mean)",
        ],
        [regret_row(m, r["per_method"][m]) for m in methods],
    )
    lines += ["", "### Acceptance per kind (accepted ÷ drafted tokens, accepted tokens per round)", ""]
    lines += table(
        ["method", *kinds], [[f"`{m}`", *(_acceptance(r["per_kind"][k].get(m)) for k in kinds)] for m in stack]
    )
    lines += arm_pulls(r)
    lines += ["", "### Correctness and overhead", "", *correctness(r)]
    if plots:
        lines += ["", "### Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()]
    return lines


def regret_row(method: str, s: dict) -> list[str]:
    rounds = "–" if s["rounds"] is None else str(s["rounds"])
    rounds_regret = "–" if s["rounds_regret"] is None else f"{s['rounds_regret']} ({s['rounds_regret_mean']:+.1f})"
    time_regret = "–"
    if s["time_regret_seconds"] is not None:
        time_regret = f"{s['time_regret_seconds']:+.2f} ({s['time_regret_mean_seconds']:+.3f})"
    return [
        f"`{method}`",
        rounds,
        _num(s["tokens_per_round"], 2),
        _num(s["accepted_per_round"], 2),
        _num(s["acceptance"], 2),
        rounds_regret,
        time_regret,
    ]


def arm_pulls(r: dict) -> list[str]:
    policies = [p for p in ADAPTIVE if p in r["arm_usage"]]
    if not policies:
        return []
    arms = list(dict.fromkeys([*r["arms"], *(a for p in policies for a in r["arm_usage"][p])]))

    def cell(policy: str, arm: str) -> str:
        c = r["arm_usage"][policy].get(arm)
        return "0" if c is None else f"{c['pulls']} ({c['accepted']}/{c['drafted']})"

    lines = ["", "### Arm pulls of the adaptive policies (pulls, accepted/drafted tokens)", ""]
    return lines + table(["arm", *policies], [[f"`{a}`", *(cell(p, a) for p in policies)] for a in arms])


def steal_note(r: dict) -> list[str]:
    steal = r.get("steal") or {}
    if steal.get("mean") is None:
        return []
    disturbed = steal["disturbed_prompts"]
    note = (
        f"CPU steal (time the hypervisor gave these CPUs to other guests): {100 * steal['mean']:.1f}% of the "
        f"measured calls' time; {len(disturbed)} of {steal['prompts']} prompts had a call above "
        f"{100 * steal['threshold']:.0f}%"
    )
    lines = ["", note + (f" ({', '.join(f'`{p}`' for p in disturbed)})." if disturbed else ".")]
    if r.get("undisturbed"):
        lines.append(
            "The undisturbed-prompts column repeats the workload ratios over the other prompts (best fixed arm "
            f"there: `{r['undisturbed']['best_fixed']}`); they were measured while the neighbours were quiet, "
            "so they are not a random sample of the workload."
        )
    return lines


def correctness(r: dict) -> list[str]:
    lines = []
    stack_bad = [m for m in r["mismatches"] if m["stack"]]
    if not r["mismatches"]:
        lines.append(f"- every output equals `{PLAIN}`'s token for token.")
    for m in r["mismatches"]:
        lines.append(
            f"- MISMATCH `{m['prompt']}` `{m['method']}` (repeat {m['repeat']}): first difference at token "
            f"{m['first_difference']}, {m['tokens']} tokens vs {m['reference_tokens']}"
        )
    if stack_bad and r["dtype"] != "float32":
        lines.append(
            f"- {len(stack_bad)} stack mismatch(es) in {r['dtype']}: reported only (rounding differs by batch shape)."
        )
    lines += [f"- PROBLEM `{p['prompt']}` `{p['method']}`: {p['problem']}" for p in r["problems"]]
    overall = r["controller_overhead"]["all_stack_rounds"]
    if overall["median_ms"] is not None:
        lines.append(
            f"- controller overhead per round (round wall − service compute): "
            f"median {overall['median_ms']:.2f} ms over {overall['rounds']} rounds."
        )
    return lines


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _acceptance(s: dict | None) -> str:
    if not s or s["acceptance"] is None:
        return "–"
    return f"{s['acceptance']:.2f}, {s['accepted_per_round']:.2f}"
