"""Does a forward slow down on a second thread of the process? The lean decoder of the default model
(calibrated and prefilled with 250 tokens on the main thread) times forwards of 1-3 tokens on the main
thread, then on a new thread, twice.

    PYTHONPATH=. python benchmarks/omp_threads.py [--threads 2]

Then times forwards on the main thread while another thread that ran one parallel region waits, and after
it exits. Prints ms per forward (the median of 8). GNU OpenMP gives each thread that runs a parallel region
its own team; once the teams outnumber the cores it stops spinning between regions (RESULTS 37, 38), which
is why the target and the draft service run all their forwards on one thread.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
from transformers import AutoModelForCausalLM

from banditspec.default_model import ensure_default_model
from banditspec.lean_llama import Feed, LeanLlama


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(ensure_default_model()), dtype=torch.float32).eval()
    lean = LeanLlama(model, 2048, pooled=True)
    lean.calibrate_narrow()
    cache = lean.new_cache()
    lean.forward_batch([Feed(cache, list(range(100, 350)), "none")])

    def forward_ms(tokens: int) -> float:
        times = []
        for _ in range(8):
            start = time.perf_counter()
            lean.forward_batch([Feed(cache, [7] * tokens, "all")])
            times.append(time.perf_counter() - start)
            cache.crop(-tokens)
        return 1e3 * statistics.median(times)

    def on_new_thread(tokens: int) -> float:
        result: list[float] = []
        thread = threading.Thread(target=lambda: result.append(forward_ms(tokens)))
        thread.start()
        thread.join()
        return result[0]

    print("tokens | main thread ms | new thread ms")
    for _ in range(2):
        for tokens in (1, 2, 3):
            print(f"{tokens} | {forward_ms(tokens):.1f} | {on_new_thread(tokens):.1f}")

    # A thread that ran one parallel region and now waits keeps its team (a draft service's loader did).
    print("\nanother thread, idle | its torch threads | main thread ms (2 tokens)")
    print(f"none | | {forward_ms(2):.1f}")
    for others in (args.threads, 1, args.threads):
        done = threading.Event()

        def hold(count: int, done: threading.Event) -> None:
            torch.set_num_threads(count)  # per thread
            torch.randn(1000, 1000) @ torch.randn(1000, 1000)
            done.wait()

        holder = threading.Thread(target=hold, args=(others, done))
        holder.start()
        time.sleep(1.0)
        print(f"alive | {others} | {forward_ms(2):.1f}")
        done.set()
        holder.join()
        print(f"exited | {others} | {forward_ms(2):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
