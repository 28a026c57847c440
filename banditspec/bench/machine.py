"""A description of the machine and software a run measured, for the results file."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import grpc
import torch
import transformers


def machine(device: str) -> dict:
    cpuinfo = _read("/proc/cpuinfo").splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "grpc": grpc.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks since boot from /proc/stat; (0, 0) where there is none.

    Steal is time the hypervisor gave this VM's virtual CPUs to someone else: a call that saw much of it
    measured the neighbours as well as the stack."""
    fields = _read("/proc/stat").split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        return 0, 0
    ticks = [int(v) for v in fields[1:]]
    steal = ticks[7] if len(ticks) > 7 else 0
    return steal, sum(ticks[:8])  # guest times (fields 9-10) are already counted in user and nice


def steal_fraction(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


class StealMeter:
    """`with StealMeter() as meter: ...` then `meter.fraction`: the CPU steal over the block."""

    fraction: float | None = None

    def __enter__(self) -> StealMeter:
        self._before = cpu_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fraction = steal_fraction(self._before, cpu_ticks())


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
