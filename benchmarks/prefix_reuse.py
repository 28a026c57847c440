"""What a conversation's next turn costs the target to open, with and without prompt prefix reuse.

    PYTHONPATH=. python benchmarks/prefix_reuse.py [--turns 3] [--answer-tokens 64] [--repeats 3] [--threads 2]

SmolLM2-135M-Instruct in float32 on the target engine (no gRPC). A chat of several turns (the first two
chats of the benchmark workload, then follow-up questions), each answered greedily by the engine; each
turn's request sends the whole conversation again, as an OpenAI-style client does, and the previous turn's
session is released first. Two engines on the same model run every turn alternately: one reusing prefixes
(the released turn's cache is taken over), one prefilling every prompt whole. Prints, per turn, the prompt
length, the tokens reused and the median milliseconds to open the session (the prompt's prefill), and
checks that both engines answer token for token alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from banditspec.default_model import ensure_default_model
from banditspec.models import load_causal_lm
from banditspec.sampling import SamplingParams
from services.target.engine import TargetEngine

FOLLOW_UPS = ["Can you say that again more briefly?", "Give one concrete example.", "Summarise it in a sentence."]
GREEDY = SamplingParams()


def answer(engine: TargetEngine, session_id: str, prompt: list[int], count: int) -> tuple[list[int], float]:
    """Open the session (timed) and decode `count` tokens greedily; returns the tokens and the open's ms."""
    start = time.perf_counter()
    engine.open(session_id, prompt, GREEDY, seed=0)
    opened = 1e3 * (time.perf_counter() - start)
    tokens: list[int] = []
    while len(tokens) < count:
        tokens += engine.verify(session_id, len(prompt) + len(tokens), [], None).verdict.tokens
    return tokens[:count], opened


def reused_so_far(engine: TargetEngine) -> int:
    return engine.prefixes.stats.reused_tokens if engine.prefixes is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = ensure_default_model()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    loaded = load_causal_lm(path, device="cpu", dtype="float32")
    engines = {"reuse": TargetEngine(loaded), "whole": TargetEngine(loaded, prefix_reuse=False)}
    for engine in engines.values():
        engine.warm_up()
    stored = json.loads((Path(__file__).parent / "prompts.json").read_text())["prompts"]
    openers = [p["messages"][-1]["content"] for p in stored[:2]]
    times: dict[tuple[int, int, str], list[float]] = {}
    shapes: dict[tuple[int, int], tuple[int, int]] = {}
    for repeat in range(args.repeats):
        for chat, opener in enumerate(openers):
            for engine in engines.values():
                if engine.prefixes is not None:
                    engine.prefixes.clear()  # a new conversation: nothing of an earlier one is held
            histories = {name: [{"role": "user", "content": opener}] for name in engines}
            order = list(engines) if repeat % 2 == 0 else list(reversed(engines))
            for turn in range(args.turns):
                answers = {}
                for name in order:
                    engine = engines[name]
                    encoded = tokenizer.apply_chat_template(histories[name], add_generation_prompt=True, tokenize=True)
                    prompt = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
                    reused_before = reused_so_far(engine)
                    session = f"{repeat}-{chat}-{turn}"
                    tokens, opened = answer(engine, session, prompt, args.answer_tokens)
                    engine.release(session)
                    reused = reused_so_far(engine) - reused_before
                    times.setdefault((chat, turn, name), []).append(opened)
                    if name == "reuse":
                        shapes[chat, turn] = (len(prompt), reused)
                    answers[name] = tokens
                    histories[name] += [
                        {"role": "assistant", "content": tokenizer.decode(tokens, skip_special_tokens=True)},
                        {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]},
                    ]
                if answers["reuse"] != answers["whole"]:
                    raise SystemExit(f"chat {chat}, turn {turn}: the answers differ")
    print(f"float32, {args.threads} threads, {args.repeats} repeats; ms to open each turn's session (median)\n")
    print("| chat | turn | prompt tokens | reused | whole prefill ms | with reuse ms | reuse ÷ whole |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for (chat, turn), (length, reused) in sorted(shapes.items()):
        whole = statistics.median(times[chat, turn, "whole"])
        reuse = statistics.median(times[chat, turn, "reuse"])
        print(f"| {chat} | {turn + 1} | {length} | {reused} | {whole:.1f} | {reuse:.1f} | {reuse / whole:.2f} |")
    print("\nEvery answer was token-identical between the two engines.")


if __name__ == "__main__":
    main()
