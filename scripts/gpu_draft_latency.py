"""Why a model drafter's round is slow inside the draft service on a GPU: the same proposals timed
in-process (main thread, a worker thread) and through a real draft service, at Python's default GIL
switch interval and at 0.5 ms. Prints one line per setting.

Seen on the lent H200 (2026-11-27, pydocs draft-m, bfloat16): 65-89 ms per 4-token proposal in every
setting, in-process included, and the same with one host sync per proposal instead of one per token;
so neither the service, the GIL nor per-token syncs explain it. Unexplained; the target's rounds on the
same machine took ~8 ms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch

from banditspec.model_paths import resolve_model_path
from banditspec.sampling import SamplingParams
from banditspec.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from services.draft.drafters.base import DraftSession
from services.draft.drafters.model_drafter import ModelDrafter

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"
DTYPE = "bfloat16" if DEVICE == "cuda" else "float32"
ROUNDS = 30
PATH = str(resolve_model_path("pydocs:draft-m"))


def in_process(label: str, run) -> None:
    drafter = ModelDrafter.load("dm", PATH, device=DEVICE, dtype=DTYPE)
    session = DraftSession(list(range(5, 205)), SamplingParams(), 0)
    run(lambda: drafter.propose(session, 4))  # warm-up
    start = time.perf_counter()
    for _ in range(ROUNDS):
        proposal = run(lambda: drafter.propose(session, 4))
        session.context.extend(proposal.token_ids[:2] or [7])
    print(f"{label:40s} {1e3 * (time.perf_counter() - start) / ROUNDS:7.2f} ms per 4-token proposal", flush=True)


def through_service(label: str, switch_interval: float | None) -> None:
    ready = Path(tempfile.mkdtemp()) / "ready"
    code = "import sys\n"
    if switch_interval:
        code += f"sys.setswitchinterval({switch_interval})\n"
    code += "from banditspec.cli import main\nmain()\n"
    args = [
        "serve-draft",
        "--drafter",
        f"dm=model:{PATH}",
        "--device",
        DEVICE,
        "--dtype",
        DTYPE,
        "--port",
        "0",
        "--ready-file",
        str(ready),
    ]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if ready.exists() and ready.read_text().strip():
                break
            time.sleep(0.1)
        with grpc.insecure_channel(json.loads(ready.read_text())["address"]) as channel:
            stub = draft_pb2_grpc.DraftServiceStub(channel)
            context = list(range(5, 205))
            held = 0
            walls, computes = [], []
            for i in range(ROUNDS + 1):
                request = draft_pb2.ProposeRequest(
                    session_id="s",
                    drafter="dm",
                    num_tokens=4,
                    context_length=held,
                    new_context_ids=context[held:],
                    sampling=common_pb2.SamplingParams(),
                    seed=0,
                )
                start = time.perf_counter()
                response = stub.Propose(request, timeout=60)
                if i:
                    walls.append(time.perf_counter() - start)
                    computes.append(response.compute_seconds)
                held = len(context)
                context.extend(list(response.draft_ids[:2]) or [7])
        print(
            f"{label:40s} {1e3 * sum(walls) / ROUNDS:7.2f} ms wall, {1e3 * sum(computes) / ROUNDS:7.2f} ms compute",
            flush=True,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(
        f"device {DEVICE} ({torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}), switch interval {sys.getswitchinterval()}"
    )
    in_process("in-process, main thread", lambda fn: fn())
    pool = ThreadPoolExecutor(max_workers=1)
    in_process("in-process, worker thread", lambda fn: pool.submit(fn).result())
    through_service("draft service, default switch interval", None)
    through_service("draft service, 0.5 ms switch interval", 0.0005)
