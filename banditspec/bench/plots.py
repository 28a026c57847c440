"""PNG plots of one dtype's results: throughput per method and kind, cumulative regret, arm-pull shares."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from banditspec.bench.methods import ADAPTIVE, ASSISTED, ORACLE, PLAIN, PLD

COLOURS = {
    PLAIN: "#1f4e79",
    PLD: "#2e86c1",
    ASSISTED: "#85c1e9",
    ORACLE: "black",
    "ucbspec": "tab:red",
    "ucbspec-cf": "tab:green",
    "exp3spec": "tab:orange",
    "uniform": "tab:purple",
}


def write_plots(result: dict, out: Path) -> dict[str, Path]:
    """The three plots of `result` (one dtype) under `out`; returns their paths by name."""
    dtype = result["dtype"]
    paths = {
        "throughput": out / f"throughput-{dtype}.png",
        "regret": out / f"regret-{dtype}.png",
        "arm_shares": out / f"arm-shares-{dtype}.png",
    }
    plot_throughput(result, paths["throughput"])
    plot_regret(result, paths["regret"])
    plot_arm_shares(result, paths["arm_shares"])
    return paths


def plot_throughput(result: dict, path: Path) -> None:
    """Grouped bars: tokens/s of every method over the workload and per kind."""
    methods, scopes = result["methods"], ["all", *result["kinds"]]
    values = {"all": result["per_method"]} | result["per_kind"]
    fixed_colours = plt.get_cmap("Greens")
    fixed = [m for m in methods if m not in COLOURS]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(scopes) + 0.25 * len(methods)), 5))
    for i, method in enumerate(methods):
        colour = COLOURS.get(method) or fixed_colours(0.25 + 0.6 * fixed.index(method) / max(1, len(fixed) - 1))
        heights = [values[s].get(method, {}).get("tokens_per_second", 0.0) for s in scopes]
        ax.bar(
            [j + (i - (len(methods) - 1) / 2) * width for j in range(len(scopes))],
            heights,
            width,
            label=method,
            color=colour,
            edgecolor="white",
            linewidth=0.3,
        )
    ax.set_xticks(range(len(scopes)), scopes)
    ax.set_ylabel("tokens/s (total tokens / total seconds)")
    ax.set_title(f"Throughput per method and prompt kind ({result['dtype']})")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, path)


def plot_regret(result: dict, path: Path) -> None:
    """One line per adaptive policy: mean cumulative time regret against the oracle arm after each round."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for policy, curves in result["regret_curves"].items():
        ax.plot(range(1, len(curves["all"]) + 1), curves["all"], label=policy, color=COLOURS.get(policy))
    ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative regret (seconds), mean over prompts")
    ax.set_title(f"Time regret against the per-prompt oracle arm ({result['dtype']})")
    ax.legend()
    _save(fig, path)


def plot_arm_shares(result: dict, path: Path) -> None:
    """Stacked areas, one panel per adaptive policy: share of pulls per arm in buckets of rounds."""
    policies = [p for p in ADAPTIVE if p in result["arm_shares"]]
    arms = list(dict.fromkeys(a for p in policies for a in result["arm_shares"][p]["shares"]))
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(
        1,
        max(1, len(policies)),
        figsize=(5 * max(1, len(policies)) + 2, 4.5),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, policy in zip(axes[0], policies, strict=False):
        data = result["arm_shares"][policy]
        # step="post" draws each bucket as a flat band: add the end of the last bucket.
        starts = data["bucket_starts"]
        xs = [*starts, starts[-1] + data["bucket_size"]]
        ys = [[*s, s[-1]] for s in (data["shares"].get(a, [0.0] * len(starts)) for a in arms)]
        ax.stackplot(xs, ys, labels=arms, colors=[colours(i % 20) for i in range(len(arms))], step="post")
        ax.set_title(f"{policy} ({data['bucket_size']} round(s) per bucket)")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of pulls, mean over prompts")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right center")
    fig.suptitle(f"Arm-pull shares over rounds ({result['dtype']})")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
