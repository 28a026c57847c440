"""One client through two local stacks, the target's --solo-threads on and off, interleaved per prompt.

    PYTHONPATH=. python benchmarks/solo_threads.py [--limit 1] [--max-new-tokens 96] [--repeats 2]

Both stacks run at once (default family, float32, model-free drafters in the controller); each prompt goes
to one then the other, the order alternating per repeat, as target-only and as the fixed prompt-lookup arm
(a drafted round: an 8-token verify). Neither arm learns across requests, so repeats see the same work.
The table gives each side's median tokens/s and the median of the paired ratios (on ÷ off), which holds
up when the machine's speed drifts between prompts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from banditspec.bench.config import FAMILIES
from banditspec.bench.workload import load_prompts, render_prompts
from banditspec.cli.launcher import LocalStack
from banditspec.client import Client
from banditspec.model_paths import resolve_model_path


def pick_arms(client: Client) -> dict[str, str]:
    """target-only and the longest in-controller prompt-lookup arm (its γ is filled to the verify padding)."""
    lookups = [arm.name for arm in client.arms() if arm.name.startswith("inproc/pld/")]
    longest = max(lookups, key=lambda name: int(name.rsplit("/", 1)[1]))
    return {"target-only": "target-only", "prompt lookup": longest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=1, help="prompts per kind")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = str(resolve_model_path("default"))
    prompts = load_prompts(FAMILIES["default"].prompts, limit=args.limit)
    render_prompts(prompts, AutoTokenizer.from_pretrained(model))
    # on: the launcher's default for this stack (every core); off: a lone forward on one core fewer
    target_args = {"on": [], "off": [f"--solo-threads={max(1, (os.cpu_count() or 1) - 1)}"]}
    tokens_per_second: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="banditspec-solo-") as workdir:
        stacks = {
            side: LocalStack(
                model=model, controller_port=0, log_dir=Path(workdir) / side,
                extra_target_args=["--dtype", "float32", "--device", "cpu", *extra],
            )
            for side, extra in target_args.items()
        }  # fmt: skip
        try:
            for stack in stacks.values():
                stack.start()
            clients = {side: Client(stack.address("controller"), timeout=600) for side, stack in stacks.items()}
            for client in clients.values():
                client.generate(list(prompts[0].ids), max_new_tokens=8)  # warm-up
            arms = pick_arms(clients["on"])
            for repeat in range(args.repeats):
                order = list(stacks) if repeat % 2 == 0 else list(stacks)[::-1]
                for prompt in prompts:
                    for label, arm in arms.items():
                        for side in order:
                            result = clients[side].generate(
                                list(prompt.ids), max_new_tokens=args.max_new_tokens, allowed_arms=[arm]
                            )
                            rate = result.stats.generated_tokens / result.stats.wall_seconds
                            tokens_per_second.setdefault((side, label), []).append(rate)
                            print(
                                f"repeat {repeat + 1} {prompt.kind} {label} solo {side}: {rate:.2f} tok/s", flush=True
                            )
            for client in clients.values():
                client.close()
        finally:
            for stack in stacks.values():
                stack.stop()
    print("| arm | solo threads on tok/s | off tok/s | on ÷ off (paired median) |")
    print("|---|---:|---:|---:|")
    for label, arm in arms.items():
        on, off = tokens_per_second[("on", label)], tokens_per_second[("off", label)]
        paired = statistics.median(a / b for a, b in zip(on, off, strict=True))
        print(f"| {label} (`{arm}`) | {statistics.median(on):.2f} | {statistics.median(off):.2f} | {paired:.2f} |")


if __name__ == "__main__":
    main()
