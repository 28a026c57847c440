"""Where the controller's time per round goes: a local stack, greedy requests on one drafted arm, py-spy
sampling the controller process; prints the controller's overhead per request and its hottest frames.

    PYTHONPATH=. python benchmarks/profile_controller.py [--requests 8] [--seconds 40] [--in-process]

`--in-process` also runs prompt lookup inside the controller (`--local-drafter`) and plays each prompt on
both arms in turn, the draft service's `local/pld/γ` and the controller's own `inproc/pld/γ`, same
drafter, same outputs: the overhead of a round with two exchanges against one with one.

Needs py-spy (pip install py-spy) and the default model. `--seconds 0` only measures (no profiler). Only
public names of the package are used, so it runs against an older checkout too (PYTHONPATH=that checkout).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import grpc
from transformers import AutoTokenizer

from banditspec.bench.config import FAMILIES
from banditspec.bench.workload import load_prompts, render_prompts
from banditspec.cli.launcher import LocalStack
from banditspec.model_paths import resolve_model_path
from banditspec.v1 import generation_pb2, generation_pb2_grpc


def hottest(raw: Path, top: int) -> tuple[int, Counter, Counter]:
    """py-spy's raw (collapsed) stacks → total samples, samples per leaf frame, per frame anywhere."""
    leaf: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        total += int(count)
        leaf[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return total, leaf, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--tcp", action="store_true", help="the controller dials its services over TCP loopback")
    parser.add_argument("--in-process", action="store_true", help="compare with prompt lookup in the controller")
    args = parser.parse_args()
    model = str(resolve_model_path("default"))
    prompts = load_prompts(FAMILIES["default"].prompts)
    render_prompts(prompts, AutoTokenizer.from_pretrained(model))
    py_spy = Path(sys.executable).parent / "py-spy"
    with tempfile.TemporaryDirectory(prefix="banditspec-profile-") as workdir:
        stack = LocalStack(
            model=model, drafters=["pld=prompt_lookup"], controller_port=0, model_free_in_controller=False,
            extra_target_args=["--dtype", "float32", "--device", "cpu"], extra_draft_args=["--device", "cpu"],
            log_dir=Path(workdir), **({"unix_sockets": False} if args.tcp else {}),
            extra_controller_args=["--local-drafter", "pld=prompt_lookup"] if args.in_process else [],
        )  # fmt: skip
        with stack, grpc.insecure_channel(stack.address("controller")) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            arms = [a.name for a in stub.ListArms(generation_pb2.ListArmsRequest(), timeout=30).arms]
            played = [a for a in arms if a.startswith(("local/pld/", "inproc/pld/"))]
            if not args.in_process:
                played = played[:1]
            controller = next(s.process.pid for s in stack.services if s.name == "controller")

            def run(count: int) -> dict[str, list[generation_pb2.GenerateResponse]]:
                out: dict[str, list[generation_pb2.GenerateResponse]] = {arm: [] for arm in played}
                for index, prompt in enumerate(prompts[:count]):
                    for arm in played if index % 2 == 0 else played[::-1]:  # each arm first in turn
                        request = generation_pb2.GenerateRequest(
                            max_new_tokens=64, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm]
                        )
                        request.token_ids.ids.extend(prompt.ids)
                        out[arm].append(stub.Generate(request, timeout=300))
                return out

            run(2)  # warm
            raw = Path(workdir) / "controller.raw"
            spy = None
            if args.seconds > 0:
                spy = subprocess.Popen(
                    [str(py_spy), "record", "-p", str(controller), "-r", "500", "-f", "raw", "-o", str(raw),
                     "-d", str(args.seconds), "--nonblocking"],
                )  # fmt: skip
            responses = run(args.requests)
            if spy is not None:
                spy.wait()
        overall = {}
        for arm, answers in responses.items():
            rounds = sum(r.stats.rounds for r in answers)
            medians = [round(1e3 * r.stats.controller_overhead_median_seconds, 2) for r in answers]
            overall[arm] = statistics.median(medians)
            print(f"arm {arm}: {rounds} rounds; controller overhead median per request (ms): {medians}")
            print(f"  median of the requests' medians: {overall[arm]:.2f} ms")
        if len(responses) == 2:
            (first, a), (second, b) = responses.items()
            same = all(list(x.token_ids) == list(y.token_ids) for x, y in zip(a, b, strict=True))
            print(f"{second} ÷ {first}: {overall[second] / overall[first]:.2f}; outputs identical: {same}")
        if spy is None:
            return 0
        total, leaf, inclusive = hottest(raw, args.top)
        print(f"{total} samples at 500 Hz (the controller's busy time)")
        print("leaf frames:")
        for frame, count in leaf.most_common(args.top):
            print(f"  {count:5d}  {frame}")
        print("frames anywhere in the stack:")
        for frame, count in inclusive.most_common(args.top * 3):
            print(f"  {count:5d}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
