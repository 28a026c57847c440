"""`banditspec loadtest` end to end on the small pydocs family: every phase runs, every output equals the
target's own greedy output, each N is warmed up unmeasured, its methods run in two sittings, and the report, JSON and plot are written."""

from __future__ import annotations

import json
from pathlib import Path

from banditspec.bench.loadtest import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_small_load_test_reports_every_phase(tmp_path):
    out = tmp_path / "loadtest"
    argv = ["--family", "pydocs", "--clients", "1,2", "--requests-per-client", "1", "--max-new-tokens", "8"]
    argv += ["--fixed-at", "2", "--baselines", "padded", "--warm-up-tokens", "4", "--sittings", "2", "--out", str(out)]
    assert main(argv) == 0
    document = json.loads((out / "loadtest.json").read_text())
    phases = document["phases"]
    arms = document["config"]["arms"]
    methods = {(p["method"], p["clients"]) for p in phases}
    # Before each N's phases, one unmeasured request per client.
    assert document["warm_ups"] == {"1": {"requests": 1, "errors": 0}, "2": {"requests": 2, "errors": 0}}
    assert {("ucbspec-cf", 1), ("ucbspec-cf", 2), ("generate-padded", 1), ("generate-padded", 2)} <= methods
    assert {(f"fixed:{arm}", 2) for arm in arms} <= methods
    # Two sittings, the second in reverse order: every method twice per N, pooled in the report.
    at_two = [(p["method"], p["sitting"]) for p in phases if p["clients"] == 2 and p["method"] != "generate-padded"]
    first = [m for m, sitting in at_two if sitting == 0]
    assert first[0] == "ucbspec-cf" and [m for m, sitting in at_two if sitting == 1] == first[::-1]
    assert len(phases) == 2 * len(methods)
    for phase in phases:
        assert phase["errors"] == 0 and phase["mismatches"] == 0, phase
        assert phase["tokens"] > 0 and phase["tokens_per_second"] > 0
        assert phase["requests"] == 2  # the largest N's one request per client, at every N
        assert phase["steal"] is None or 0 <= phase["steal"] <= 1
    if Path("/proc/stat").exists():  # Linux: every phase's CPU steal is measured
        assert all(phase["steal"] is not None for phase in phases)
    stack = [p for p in phases if p["method"] == "ucbspec-cf"]
    assert all(abs(sum(p["arm_shares"].values()) - 1) < 1e-9 for p in stack)
    assert all(set(p["rss_mib"]) == {"target", "draft", "controller"} for p in stack)
    for phase in [p for p in phases if p["method"] == "ucbspec-cf" or p["method"].startswith("fixed:")]:
        used = phase["cpu_seconds"]  # each service's CPU time during the phase: the target forwarded
        assert set(used) == {"target", "draft", "controller"} and used["target"] > 0 and min(used.values()) >= 0
    for phase in [p for p in phases if p["method"] == "ucbspec-cf" or p["method"].startswith("fixed:")]:
        target = phase["target"]  # read from the target's metrics around the phase
        assert target["forwards"] >= 1 and 1 <= target["rows_per_forward"] <= phase["clients"], phase
        assert target["tokens_per_forward"] >= target["rows_per_forward"] and target["ms_per_forward"] > 0
        assert 0 < target["busy"] <= 1
        assert 0.2 <= phase["slowdown"]["fixed"] <= 5 and 0.2 <= phase["slowdown"]["tokens"] <= 5  # the controller's
        # Until the first client ran out of requests: part of the phase, and the tokens streamed in it.
        assert 0 < phase["all_busy_seconds"] <= phase["seconds"] and 0 < phase["all_busy_tokens"] <= phase["tokens"]
    report = (out / "loadtest.md").read_text()
    assert (
        "| 2 | ucbspec-cf #2 |" in report
        and "pooled tok/s" in report
        and "Peak resident memory" in report
        and "CPU steal" in report
    )
    assert "The target's forwards during each stack phase" in report and "CPU seconds each service" in report
    assert "slow-down: fixed / tokens" in report
    assert (out / "loadtest.png").read_bytes().startswith(PNG_MAGIC)
