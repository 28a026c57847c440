"""Propose latency of the pydocs drafts with and without lookahead, through a real draft service.

Rounds are replayed from the pydocs target's greedy output on held-out passages: each round proposes γ
tokens, then the client busy-waits `--verify-ms` (the target's verification, which takes a core), then
sends the accepted prefix plus the target's token. Both variants of a draft run in the same service and
the same process run, alternating per passage. Prints mean round-trip and compute time per proposal,
lookahead hits, and the ratio of each variant's latency to its baseline's.

    .venv/bin/python benchmarks/lookahead_latency.py --verify-ms 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc
import torch

from banditspec.model_paths import resolve_model_path
from banditspec.models import load_causal_lm
from banditspec.v1 import draft_pb2, draft_pb2_grpc

ROOT = Path(__file__).resolve().parent
VARIANTS = {  # name: (spec, baseline name)
    "ds": ("model:pydocs:draft-s", None),
    "ds^8": ("model:pydocs:draft-s^8", "ds"),
    "dm": ("model:pydocs:draft-m", None),
    "dm^8": ("model:pydocs:draft-m^8", "dm"),
}


def greedy_references(count: int, max_new_tokens: int) -> list[tuple[list[int], list[int]]]:
    target = load_causal_lm(resolve_model_path("pydocs:target"), device="cpu", dtype="float32")
    prompts = json.loads((ROOT / "pydocs_passages.json").read_text())["prompts"]
    step = max(1, len(prompts) // count)
    references = []
    for prompt in prompts[::step][:count]:
        ids = target.tokenizer(prompt["text"])["input_ids"]
        with torch.inference_mode():
            out = target.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
        references.append((ids, out[0, len(ids) :].tolist()))
    return references


def start_service() -> tuple[subprocess.Popen, str]:
    ready = Path(tempfile.mkdtemp()) / "ready"
    names = [f"--drafter={name.replace('^', 'a')}={spec}" for name, (spec, _) in VARIANTS.items()]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "banditspec.cli",
            "serve-draft",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            *names,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (ready.exists() and ready.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit("the draft service did not start")
        time.sleep(0.1)
    return process, json.loads(ready.read_text())["address"]


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def replay(
    stub, drafter: str, ids: list[int], out: list[int], gamma: int, verify_seconds: float
) -> list[tuple[float, float]]:
    """(round trip, compute) seconds of each proposal of one passage."""
    session, held, new, position, timings = uuid.uuid4().hex, 0, list(ids), 0, []
    while position < len(out) - 1:
        start = time.perf_counter()
        response = stub.Propose(
            draft_pb2.ProposeRequest(
                session_id=session,
                drafter=drafter,
                num_tokens=gamma,
                context_length=held,
                new_context_ids=new,
            ),
            timeout=30,
        )
        timings.append((time.perf_counter() - start, response.compute_seconds))
        held = response.context_length
        busy_wait(verify_seconds)
        draft, accepted = list(response.draft_ids), 0
        while accepted < len(draft) and position + accepted < len(out) and draft[accepted] == out[position + accepted]:
            accepted += 1
        new = out[position : position + accepted + 1]
        position += accepted + 1
    stub.ReleaseSession(draft_pb2.ReleaseDraftSessionRequest(session_id=session), timeout=30)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-ms", type=float, default=7.0, help="emulated verification per round (default 7)")
    parser.add_argument("--passages", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    references = greedy_references(args.passages, args.max_new_tokens)
    process, address = start_service()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = draft_pb2_grpc.DraftServiceStub(channel)
            ids, out = references[0]
            for name in VARIANTS:  # warm-up
                replay(stub, name.replace("^", "a"), ids, out[:16], args.gamma, args.verify_ms / 1e3)
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
            for ids, out in references:
                for name in VARIANTS:
                    timings[name] += replay(stub, name.replace("^", "a"), ids, out, args.gamma, args.verify_ms / 1e3)
            hits = {
                d.name: d.lookahead_hits
                for d in stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=30).drafters
            }
    finally:
        process.terminate()
        process.wait()
    print(f"{len(references)} passages, γ={args.gamma}, verification emulated as {args.verify_ms} ms of busy CPU")
    print(
        f"{'drafter':8s} {'proposals':>9s} {'round trip ms':>13s} {'compute ms':>10s} {'hits':>6s} {'÷ baseline':>10s}"
    )
    for name, (_, baseline) in VARIANTS.items():
        rows = timings[name]
        trip = sum(t for t, _ in rows) / len(rows)
        compute = sum(c for _, c in rows) / len(rows)
        ratio = ""
        if baseline:
            base = timings[baseline]
            ratio = f"{trip / (sum(t for t, _ in base) / len(base)):.2f}×"
        hit = hits.get(name.replace("^", "a"), 0)
        print(f"{name:8s} {len(rows):9d} {1e3 * trip:13.2f} {1e3 * compute:10.2f} {hit / len(rows):6.0%} {ratio:>10s}")


if __name__ == "__main__":
    main()
