"""The bench's analysis arithmetic on hand-made measurements: oracle, regret and arm shares."""

from __future__ import annotations

import math

import numpy as np

from banditspec.bench import analysis
from banditspec.bench.methods import ORACLE
from banditspec.bench.run import Measurement


def _m(prompt: str, method: str, tokens: int, seconds: float, rounds: int | None, trace=None) -> Measurement:
    return Measurement(
        "float32", prompt, "k", method, tokens, seconds, tokens / seconds, [seconds], None,
        rounds=rounds, round_seconds=None if rounds is None else seconds - 0.1, trace=trace,
    )  # fmt: skip


def test_oracle_regret_and_shares_arithmetic():
    trace = {"arms": ["a", "a", "b", "b"], "tokens": [2, 2, 1, 1], "seconds": [0.2, 0.2, 0.2, 0.2]}
    rows = [
        _m("p", "fixed:a", 6, 1.1, 3),  # 6 tok/s: the oracle; decode rate 6 / 1.0
        _m("p", "fixed:b", 6, 2.1, 6),
        _m("p", "ucbspec", 6, 1.5, 4, trace),
    ]
    [best] = analysis.oracle(rows)
    assert best.method == ORACLE and best.stats["arm"] == "fixed:a"
    regret = analysis.prompt_regret(rows[2], best)
    assert regret["rounds_regret"] == 1 and math.isclose(regret["time_regret_seconds"], 1.5 - 1.1)
    curve = analysis.regret_curves(rows, {"p": best}, ["k"])["ucbspec"]["all"]
    assert [round(x, 6) for x in curve] == [round(s - t / 6, 6) for s, t in ((0.2, 2), (0.4, 4), (0.6, 5), (0.8, 6))]
    shares = analysis.arm_shares(rows, ["a", "b"])["ucbspec"]
    assert shares["bucket_size"] == 1 and shares["shares"] == {"a": [1, 1, 0, 0], "b": [0, 0, 1, 1]}
    assert analysis.mean_padded([np.array([1.0, 3.0]), np.array([2.0])]) == [1.5, 2.5]


def test_paired_ratios_cancel_drift_that_moves_the_aggregate():
    # prompt q ran while the machine was 4x slower: every method there took 4x as long
    rows = [
        _m("p", "hf-pld", 100, 10.0, None),
        _m("p", "ucbspec-cf", 100, 8.0, 40),
        _m("q", "hf-pld", 100, 10.0, None),
        _m("q", "ucbspec-cf", 100, 40.0, 40),
        _m("r", "hf-pld", 100, 10.0, None),
        _m("r", "ucbspec-cf", 100, 9.0, 40),
    ]
    paired = analysis.paired_ratios(rows, best_arm=None)["ucbspec-cf"]
    assert math.isclose(paired["hf-pld"], 10.0 / 9.0)  # median of 1.25, 0.25, 1.11; the aggregate is 0.53


def test_steal_summary_names_the_disturbed_prompts():
    rows = [_m("p", "hf-pld", 10, 1.0, None), _m("q", "hf-pld", 10, 3.0, None), _m("q", "fixed:a", 10, 1.0, 2)]
    rows[0].steal, rows[1].steal, rows[2].steal = 0.0, 0.2, 0.01
    summary = analysis.steal_summary(rows)
    assert summary["disturbed_prompts"] == ["q"] and summary["prompts"] == 2
    assert math.isclose(summary["mean"], (0.0 * 1 + 0.2 * 3 + 0.01 * 1) / 5)


def test_undisturbed_ratios_leave_out_the_disturbed_prompts():
    rows = [
        _m("p", "hf-pld", 100, 10.0, None),
        _m("p", "ucbspec-cf", 100, 8.0, 40),
        _m("p", "fixed:a", 100, 9.0, 40),
        _m("q", "hf-pld", 100, 10.0, None),
        _m("q", "ucbspec-cf", 100, 40.0, 40),
        _m("q", "fixed:a", 100, 30.0, 40),
    ]
    rows += analysis.oracle(rows)
    by_prompt = {m.prompt: m for m in rows if m.method == ORACLE}
    quiet = analysis.undisturbed_ratios(rows, by_prompt, {"q"})
    assert quiet["prompts"] == 1 and quiet["best_fixed"] == "fixed:a"
    assert math.isclose(quiet["ratios"]["ucbspec-cf"]["hf-pld"], 10.0 / 8.0)
    assert math.isclose(quiet["ratios"]["ucbspec-cf"][ORACLE], 9.0 / 8.0)
    assert analysis.undisturbed_ratios(rows, by_prompt, set()) == {}
    assert analysis.undisturbed_ratios(rows, by_prompt, {"p", "q"}) == {}
