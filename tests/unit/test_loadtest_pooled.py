"""The load test's pooled table: each method's sittings pooled as all tokens over all seconds, the policy
against padded generate(), the best fixed arm, and the fixed arms mixed in its own pull shares."""

from __future__ import annotations

from banditspec.bench.loadtest import Phase, Request, _fixed_rewards, all_busy, sittings_table


def phase(method: str, tokens: int, seconds: float, sitting: int, shares: dict[str, float] | None = None) -> Phase:
    return Phase(method, 8, 16, tokens, seconds, tokens / seconds, arm_shares=shares or {}, sitting=sitting)


def row(lines: list[str], method: str) -> list[str]:
    (found,) = [line for line in lines if line.startswith(f"| 8 | {method} |")]
    return [cell.strip() for cell in found.strip("|").split("|")]


def test_the_policy_is_compared_with_the_best_fixed_arm_and_with_its_own_mix():
    shares = {"target-only": 0.25, "inproc/pld/6": 0.75}
    phases = [
        phase("ucbspec-cf", 900, 10.0, 0, shares),
        phase("ucbspec-cf", 1100, 10.0, 1, {"target-only": 0.25, "inproc/pld/6": 0.75, "inproc/sfx/2": 0.0}),
        phase("fixed:target-only", 1200, 10.0, 0),
        phase("fixed:target-only", 1200, 10.0, 1),
        phase("fixed:inproc/pld/6", 800, 10.0, 0),
        phase("fixed:inproc/pld/6", 1000, 10.0, 1),
        phase("generate-padded", 500, 10.0, 0),
        phase("generate-padded", 500, 10.0, 1),
    ]
    lines = sittings_table(phases, "ucbspec-cf")
    policy = row(lines, "ucbspec-cf")
    # best out of sample: target-only (chosen on either sitting), 120; mix: 0.25 * 120 + 0.75 * 90 = 97.5
    assert policy[2:] == ["90.0, 110.0", "100.0", "2.00", "0.83", "0.83", "1.03", "", ""]  # no all-busy times
    assert row(lines, "fixed:target-only")[5:] == ["1.00", "", "", "", ""]
    assert row(lines, "fixed:inproc/pld/6")[5] == "0.75"


def test_no_mix_when_the_policy_pulled_an_arm_that_never_ran_fixed():
    phases = [
        phase("ucbspec-cf", 1000, 10.0, 0, {"target-only": 0.5, "inproc/sfx/2": 0.5}),
        phase("fixed:target-only", 1200, 10.0, 0),
    ]
    assert row(sittings_table(phases, "ucbspec-cf"), "ucbspec-cf")[6] == ""


def test_the_best_fixed_arm_out_of_sample_is_not_the_luckiest_arm():
    """Two tied arms, each lucky in one sitting: the best pooled rate is the luckier one's, while the arm
    chosen on the other sitting is measured where it drew no luck."""
    phases = [
        phase("ucbspec-cf", 1000, 10.0, 0, {"a": 1.0}),
        phase("ucbspec-cf", 1000, 10.0, 1, {"a": 1.0}),
        phase("fixed:a", 1200, 10.0, 0),
        phase("fixed:a", 1000, 10.0, 1),
        phase("fixed:b", 1000, 10.0, 0),
        phase("fixed:b", 1150, 10.0, 1),
    ]
    policy = row(sittings_table(phases, "ucbspec-cf"), "ucbspec-cf")
    assert policy[5:7] == ["0.91", "1.00"]  # 100 / 110 (a, pooled); a chosen on sitting 0 measured 100 in 1


def test_all_busy_ends_when_the_first_client_runs_out_of_requests():
    """Client 0's last request ends at 5 s, client 1's at 7 s: the window is 5 s, and a round streamed after
    it (client 1's at 6 s) is the drain's."""
    requests = [
        Request("a", [1] * 4, 2.0, 0.5, started=0.0, rounds=[(1.0, 2), (2.0, 2)], client=0),
        Request("b", [1] * 3, 3.0, 0.5, started=2.0, rounds=[(4.0, 1), (5.0, 2)], client=0),
        Request("c", [1] * 6, 7.0, 0.5, started=0.0, rounds=[(3.0, 3), (6.0, 3)], client=1),
    ]
    assert all_busy(requests) == (5.0, 2 + 2 + 1 + 2 + 3)
    assert all_busy([]) == (0.0, 0)


def test_the_policy_is_also_compared_while_every_client_was_busy():
    """The drain can rank the arms differently: target-only loses to pld/6 over whole phases here, and beats
    it until the first client ran out."""
    phases = [
        phase("ucbspec-cf", 1000, 10.0, 0, {"target-only": 1.0}),
        phase("fixed:target-only", 1000, 10.0, 0),
        phase("fixed:inproc/pld/6", 1100, 10.0, 0),
        phase("generate-padded", 500, 10.0, 0),
    ]
    for p, busy_tokens in zip(phases, (900, 960, 800, 0), strict=True):
        p.all_busy_seconds, p.all_busy_tokens = (8.0, busy_tokens) if busy_tokens else (0.0, 0)
    lines = sittings_table(phases, "ucbspec-cf")
    assert row(lines, "ucbspec-cf")[5] == "0.91"  # 100 ÷ 110, whole phases
    assert row(lines, "ucbspec-cf")[8:] == ["112.5", "0.94"]  # 900 ÷ 8 s, ÷ target-only's 120
    assert row(lines, "fixed:inproc/pld/6")[8:] == ["100.0", "0.83"]
    assert row(lines, "generate-padded")[8:] == ["", ""]


def test_each_fixed_arms_reward_is_listed_per_sitting():
    phases = [
        phase("fixed:target-only", 1000, 10.0, 1),
        phase("fixed:target-only", 1000, 10.0, 0),
        phase("fixed:inproc/sfx/6", 900, 10.0, 0),
        phase("ucbspec-cf", 1000, 10.0, 0),
    ]
    for p, reward in zip(phases, (20.7, 21.3, 19.8, 22.0), strict=True):
        p.arm_rewards = {p.method.removeprefix("fixed:"): reward}
    assert _fixed_rewards(phases) == ["| 8 | inproc/sfx/6 | 19.8 |", "| 8 | target-only | 21.3, 20.7 |"]
