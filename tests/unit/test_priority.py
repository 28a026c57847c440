"""Lowering CPU priorities (banditspec.priority), on real threads."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from banditspec.priority import MAX_NICE, lower_process_priority, lower_thread_priority

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")


def _nice(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


@pytest.mark.parametrize("by", [-1, MAX_NICE + 1])
def test_a_process_priority_outside_nices_range_is_refused(by):
    with pytest.raises(ValueError, match=r"\[0, 19\]"):
        lower_process_priority(by)


@linux_only
def test_a_thread_lowers_its_own_priority_and_no_other_threads():
    main_before = _nice(threading.get_native_id())
    seen: dict[str, int] = {}

    def lowered(by: int, key: str) -> None:
        before = _nice(threading.get_native_id())
        assert lower_thread_priority(by)
        seen[key] = _nice(threading.get_native_id()) - before
        seen[key + " absolute"] = _nice(threading.get_native_id())

    for by, key in ((3, "by 3"), (40, "capped")):
        thread = threading.Thread(target=lowered, args=(by, key))
        thread.start()
        thread.join()
    assert seen["by 3"] == min(3, MAX_NICE - main_before)
    assert seen["capped absolute"] == MAX_NICE
    assert _nice(threading.get_native_id()) == main_before


@linux_only
def test_threads_started_after_a_priority_is_lowered_inherit_it():
    """`lower_process_priority` at a process's start lowers every thread it starts later; here a thread
    stands in for the process's main thread (on Linux os.nice changes the calling thread only)."""
    seen: dict[str, int] = {}

    def starter() -> None:
        seen["before"] = _nice(threading.get_native_id())
        lower_process_priority(5)
        seen["starter"] = _nice(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.setdefault("child", _nice(threading.get_native_id())))
        child.start()
        child.join()

    main_before = _nice(threading.get_native_id())
    thread = threading.Thread(target=starter)
    thread.start()
    thread.join()
    assert seen["starter"] == seen["child"] == min(MAX_NICE, seen["before"] + 5)
    assert _nice(threading.get_native_id()) == main_before
