"""`banditspec bench`: the reduced run on the shipped pydocs family writes a complete, finite report; the
oracle, regret and arm-share arithmetic on hand-made measurements."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from banditspec.bench.cli import main
from banditspec.bench.methods import ADAPTIVE, ASSISTED, ORACLE, PLAIN, PLD

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    status = main(["--family", "pydocs", "--reduced", "--out", str(out)])
    return status, out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_reduced_run_passes_and_reports_every_method(reduced_run):
    status, out = reduced_run
    assert status == 0  # 1 would mean a float32 stack output differs from hf-plain
    document = json.loads((out / "results.json").read_text())
    assert {"machine", "config", "prompts", "results", "plots"} <= set(document)
    assert document["config"]["reduced"] and not document["failed"]
    result = document["results"]["float32"]
    assert result["mismatches"] == [] and result["problems"] == []
    fixed = [f"fixed:{arm}" for arm in result["arms"]]
    assert len(fixed) >= 2
    expected = {PLAIN, PLD, ASSISTED, ORACLE, *ADAPTIVE, *fixed}
    assert set(result["methods"]) == expected
    for scope in [result["per_method"], *result["per_kind"].values()]:
        assert set(scope) == expected
        for summary in scope.values():
            assert _finite(summary["tokens_per_second"]) and summary["tokens_per_second"] > 0
    for method in [ORACLE, *ADAPTIVE, *fixed]:
        summary = result["per_method"][method]
        assert summary["rounds"] > 0
        assert _finite(summary["rounds_regret"]) and _finite(summary["time_regret_seconds"])
    assert result["per_method"][ORACLE]["rounds_regret"] == 0
    assert set(result["oracle_arms"].values()) <= set(fixed)


def test_ratios_regret_curves_and_shares_are_finite(reduced_run):
    _, out = reduced_run
    result = json.loads((out / "results.json").read_text())["results"]["float32"]
    assert set(result["ratios"]) == set(ADAPTIVE)
    for bases in result["ratios"].values():
        assert set(bases) == {"best_fixed", ORACLE, PLAIN, PLD, ASSISTED}
        for by_scope in bases.values():
            assert set(by_scope) == {"all", *result["kinds"]}
            assert all(_finite(v) and v > 0 for v in by_scope.values())
    for policy in ADAPTIVE:
        curves = result["regret_curves"][policy]
        assert curves["all"] and all(_finite(v) for v in curves["all"])
        assert all(_finite(v) for curve in curves["per_kind"].values() for v in curve)
        shares = result["arm_shares"][policy]["shares"]
        columns = list(zip(*shares.values(), strict=True))
        assert columns and all(math.isclose(sum(c), 1.0) for c in columns)
        assert set(result["paired_ratios"][policy]) == {"best_fixed", ORACLE, PLAIN, PLD, ASSISTED}
        assert all(_finite(v) and v > 0 for v in result["paired_ratios"][policy].values())
    steals = [row["steal"] for row in result["per_prompt"]]
    assert all(s is None or 0 <= s <= 1 for s in steals)
    if Path("/proc/stat").exists():  # Linux: every call's steal is measured
        assert all(s is not None for s in steals) and result["steal"]["mean"] is not None


def test_markdown_tables_and_png_plots(reduced_run):
    _, out = reduced_run
    markdown = (out / "results.md").read_text()
    for heading in ("### Tokens/s", "### Ratios", "### Rounds, acceptance and regret", "### Acceptance per kind",
                    "### Arm pulls of the adaptive policies"):  # fmt: skip
        assert heading in markdown
    assert "| method | all |" in markdown
    for policy in ADAPTIVE:
        assert f"| {policy} ÷ best fixed arm |" in markdown
        assert f"| {policy} ÷ per-prompt oracle |" in markdown
    assert "| ratio | all | median per prompt |" in markdown
    for name in ("throughput-float32.png", "regret-float32.png", "arm-shares-float32.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in markdown
