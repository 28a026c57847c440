"""The target's forwards take every core only while one session is open."""

from __future__ import annotations

import threading

import pytest
import torch

from services.target.threads import ThreadPlan


def on_own_thread(fn):
    """torch's thread count is per thread: run where nothing else in the test process changed it, then put
    back the process-wide count that later threads start from."""
    out = []
    before = torch.get_num_threads()

    def work():
        out.append(fn())
        torch.set_num_threads(before)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return out[0]


def test_a_lone_session_gets_the_solo_threads_and_several_get_the_shared_ones():
    def run():
        plan = ThreadPlan(shared=1, solo=2)
        seen = []
        for open_sessions in (1, 0, 3, 8, 1):
            plan.apply(open_sessions)
            seen.append(torch.get_num_threads())
        return seen

    assert on_own_thread(run) == [2, 2, 1, 1, 2]


def test_a_measurement_runs_on_the_planned_threads_and_restores_the_setting():
    def run():
        torch.set_num_threads(1)
        plan = ThreadPlan(shared=1, solo=2)
        during = plan.measure(1, torch.get_num_threads)
        return during, torch.get_num_threads()

    assert on_own_thread(run) == (2, 1)


def test_solo_zero_means_the_process_setting_and_a_negative_count_is_refused():
    def run():
        torch.set_num_threads(1)
        return ThreadPlan.from_flags(0)

    plan = on_own_thread(run)
    assert (plan.shared, plan.solo, plan.switches) == (1, 1, False)
    with pytest.raises(ValueError, match="solo threads"):
        ThreadPlan.from_flags(-1)
