"""CPU priority, for services that share cores with a CPU target.

A CPU target runs each forward as an OpenMP team spanning every core, and each of the forward's parallel
regions ends when its slowest thread does: a thread of another process that preempts one of the team's
stalls the whole forward. Measured on the 2-core AMD EPYC, 8 rows of one token after ~60-token prompts: 67 ms
a forward alone, 112 ms beside a process busy 2 ms in every 10 at the same priority, 85 ms beside it at
nice 19 (RESULTS 38). So the services that work beside a forward (controller, draft service, a load
generator's clients) run at a lower priority than the target, and get the cores between its forwards.
"""

from __future__ import annotations

import os
import sys
import threading

MAX_NICE = 19


def lower_process_priority(by: int) -> None:
    """Lower this process's CPU priority by `by` (0: leave it). Call it before the process starts threads:
    on Linux the priority is per thread and a new thread takes its creator's."""
    if by < 0 or by > MAX_NICE:
        raise ValueError(f"a priority decrease must be in [0, {MAX_NICE}], got {by}")
    if by:
        os.nice(by)


def lower_thread_priority(by: int) -> bool:
    """Lower the calling thread's CPU priority by `by`, up to nice 19 (Linux, where priorities are per
    thread; elsewhere it would lower the whole process, so nothing changes). Returns whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICE, current + by))
    except OSError:
        return False
    return True
