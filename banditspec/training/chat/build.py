"""`banditspec chat-draft`: self-distil a chat draft for SmolLM2, in two stages.

`answers` asks the target its own greedy answers (first-turn prompts, then second-turn prompts built on
those answers); `train` distils a draft of a few of the target's layers on them, with a frequency-ranked
subset of the vocabulary as its output layer, and writes an overlay. Each stage can be rerun: `answers`
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

BENCHMARK_PROMPTS = Path(__file__).resolve().parents[3] / "benchmarks" / "prompts.json"


def cmd_answers(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from banditspec.model_paths import resolve_model_path
    from banditspec.training.chat import answers, prompts

    torch.set_num_threads(args.threads)
    target_dir = Path(resolve_model_path(args.target))
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    rng = random.Random(args.seed)
    first = prompts.first_turn_prompts(rng, args.creative, args.explanation, args.code)
    held_out = [p["messages"] for p in json.loads(BENCHMARK_PROMPTS.read_text())["prompts"]]
    _refuse_overlap(prompts.overlapping(first, held_out))
    print(f"{len(first)} first-turn prompts", flush=True)
    answers.answer_all(
        model, tokenizer, first, args.out / "first", args.max_new_tokens, args.batch_size, args.max_minutes * 60, _log
    )
    by_id = {p.id: p for p in first}
    answered = [(by_id[r["id"]], r["answer"]) for r in answers.read_records(args.out / "first") if r["id"] in by_id]
    second = prompts.second_turn_prompts(random.Random(args.seed + 1), answered)
    _refuse_overlap(prompts.overlapping(second, held_out))
    print(f"{len(second)} second-turn prompts", flush=True)
    answers.answer_all(
        model, tokenizer, second, args.out / "second", args.max_new_tokens, args.batch_size, args.max_minutes * 60, _log
    )


def cmd_train(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from banditspec.model_paths import resolve_model_path
    from banditspec.models import vocab_fingerprint
    from banditspec.overlays import VOCABULARY_JSON, draft_from_target_layers
    from banditspec.training.chat import answers
    from banditspec.training.chat import train as chat_train
    from banditspec.training.overlay_build import save_overlay

    torch.set_num_threads(args.threads)
    target_dir = Path(resolve_model_path(args.target))
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    answered = answers.load_shards([args.answers / "first", args.answers / "second"])
    held = [item for item in answered if chat_train.held_out(item, args.held_out_every)]
    trained_on = [item for item in answered if not chat_train.held_out(item, args.held_out_every)]
    vocabulary = chat_train.frequent_vocabulary(
        trained_on, args.vocabulary, [tokenizer.eos_token_id], int(target.config.vocab_size)
    )
    print(
        f"{len(trained_on)} answers ({sum(len(a.answer_ids) for a in trained_on)} tokens) to train on, "
        f"{len(held)} held out; the {len(vocabulary)}-token vocabulary covers "
        f"{chat_train.coverage(trained_on, vocabulary):.4f} of trained and {chat_train.coverage(held, vocabulary):.4f} "
        "of held-out answer tokens",
        flush=True,
    )
    layers = [int(index) for index in args.layers.split(",")]
    draft = draft_from_target_layers(target, layers).float()
    head = draft.get_output_embeddings().weight.detach()[torch.tensor(vocabulary)].clone()
    config = chat_train.ChatTrainConfig(
        args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        eval_every=args.eval_every,
        max_seconds=args.max_minutes * 60,
        seed=args.seed,
    )
    make = chat_train.examples
    result = chat_train.train_draft(
        draft,
        head,
        make(trained_on, vocabulary, config.max_prompt_tokens),
        make(held, vocabulary, config.max_prompt_tokens),
        config,
        log=_log,
    )
    records = answers.read_records(args.answers / "first") + answers.read_records(args.answers / "second")
    record = {
        "target": args.target if args.target == "default" else str(target_dir),
        "layers": layers,
        "vocab_fingerprint": vocab_fingerprint(tokenizer),
        "vocabulary": {"file": VOCABULARY_JSON, "size": len(vocabulary)},
        "data": {
            "what": "the target's greedy float32 answers to generated chat prompts (banditspec.training.chat)",
            "answers": len(answered),
            "answer_tokens": sum(len(a.answer_ids) for a in answered),
            "held_out_answers": len(held),
            "kinds": dict(sorted(Counter(r["kind"] for r in records).items())),
            "vocabulary_coverage_held_out": round(chat_train.coverage(held, vocabulary), 4),
        },
        "recipe": {k: str(v) for k, v in vars(args).items() if k != "run"},
        "result": result,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / VOCABULARY_JSON).write_text(json.dumps(vocabulary) + "\n")
    save_overlay(draft, args.out, record)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


def _log(line: str) -> None:
    print(line, flush=True)


def _refuse_overlap(ids: list[str]) -> None:
    if ids:
        sys.exit(f"error: prompts {', '.join(ids[:5])} share text with the benchmark's prompts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="banditspec chat-draft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    answer = sub.add_parser("answers", help="the target's greedy answers to generated chat prompts")
    answer.add_argument("--target", default="default")
    answer.add_argument("--out", type=Path, required=True)
    answer.add_argument("--creative", type=int, default=160)
    answer.add_argument("--explanation", type=int, default=160)
    answer.add_argument("--code", type=int, default=120)
    answer.add_argument("--max-new-tokens", type=int, default=160)
    answer.add_argument("--batch-size", type=int, default=16)
    answer.add_argument("--max-minutes", type=float, default=float("inf"), help="per stage")
    answer.add_argument("--threads", type=int, default=torch.get_num_threads())
    answer.add_argument("--seed", type=int, default=20261202)
    answer.set_defaults(run=cmd_answers)
    fit = sub.add_parser("train", help="distil a draft overlay on the answers")
    fit.add_argument("--target", default="default")
    fit.add_argument("--answers", type=Path, required=True, help="the --out of `answers`")
    fit.add_argument("--out", type=Path, required=True, help="the overlay directory to write")
    fit.add_argument("--layers", default="0,1,2", help="the target's layers the draft starts from")
    fit.add_argument("--vocabulary", type=int, default=8192, help="output-layer tokens (most frequent first)")
    fit.add_argument("--held-out-every", type=int, default=20, help="hold out one answer in this many")
    fit.add_argument("--steps", type=int, default=1500)
    fit.add_argument("--batch-size", type=int, default=8)
    fit.add_argument("--learning-rate", type=float, default=5e-4)
    fit.add_argument("--eval-every", type=int, default=100)
    fit.add_argument("--max-minutes", type=float, default=float("inf"))
    fit.add_argument("--threads", type=int, default=torch.get_num_threads())
    fit.add_argument("--seed", type=int, default=20261202)
    fit.set_defaults(run=cmd_train)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
