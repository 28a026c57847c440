"""Run a blocking call on a thread of its own that exits after it.

Model loads and start-up measurements run OpenMP regions, and GNU OpenMP keeps a team of threads for each
thread that ran one: a team left behind by a pool thread slowed the serving thread's forwards 2.0-2.2x
(benchmarks/omp_threads.py, RESULTS 38). So a load gets a new thread, gone once it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


async def on_own_thread(fn: Callable[..., T], *args: Any, name: str = "loader") -> T:
    """`fn(*args)` on a new thread; when this returns the thread has exited. A cancelled caller leaves the
    call to finish on its thread, which exits then."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        result = await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    executor.shutdown(wait=True)  # its call has returned: the thread exits at once
    return result
