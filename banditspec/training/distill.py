"""Distil a small draft model from any Hugging Face causal-LM target (`banditspec distill`).

The draft shares the target's tokenizer, so it loads as a model drafter for that target. Two shapes:

- a narrow model of its own (`--hidden/--layers/...`): its (tied) embedding starts as the target's
  projected onto its top singular directions, so the output layer begins close to the target's;
- `--init-layers 0,1,29`: the target's architecture keeping those layers, started from them, with the
  target's embedding and output layer frozen. `--out` then receives an overlay (the trained tensors
  only, `banditspec.overlays`), which is what makes a SmolLM2 draft small enough to ship.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
)

from banditspec.models import vocab_fingerprint
from banditspec.overlays import OVERLAY_JSON, draft_from_target_layers
from banditspec.training.overlay_build import save_overlay
from banditspec.training.pydocs import corpus
from banditspec.training.pydocs.train import TrainConfig, held_out_windows, train


def rope_theta(config: PreTrainedConfig) -> float:
    """The target's RoPE base: transformers 5 keeps it in `rope_parameters`, earlier versions as `rope_theta`."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def draft_config(
    target_config: PreTrainedConfig, hidden: int, layers: int, heads: int, intermediate: int
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=target_config.vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=target_config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta(target_config)},
        tie_word_embeddings=True,
        bos_token_id=target_config.bos_token_id,
        eos_token_id=target_config.eos_token_id,
        pad_token_id=getattr(target_config, "pad_token_id", None),
    )


def _embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    # get_input_embeddings() is typed as a plain Module, whose attributes type as `Tensor | Module`.
    return cast(torch.Tensor, model.get_input_embeddings().weight)


def project_embedding(target: PreTrainedModel, draft: LlamaForCausalLM) -> None:
    """Start the draft's embedding as the target's, projected onto its top `hidden` right singular vectors."""
    source = _embedding_weight(target).detach().float()
    hidden = draft.config.hidden_size
    if hidden >= source.shape[1]:
        return
    _, _, vh = torch.linalg.svd(source, full_matrices=False)
    _embedding_weight(draft).data.copy_(source @ vh[:hidden].T)


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.int32
    return np.concatenate([np.array([*doc, eos], dtype=dtype) for doc in ids])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="banditspec distill", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default="default", help="target model directory, or 'default' (SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text", nargs="*", default=[], help="training text files (default: the pydocs corpus)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/banditspec/downloads")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument(
        "--init-layers",
        default="",
        help="comma-separated target layer indices: a draft of the "
        "target's own layers, frozen embedding, saved as an overlay (ignores --hidden/--layers/...)",
    )
    parser.add_argument(
        "--cpu-bf16", action="store_true", help="bfloat16 autocast on CPU as well (CUDA always uses it)"
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--held-out-windows", type=int, default=16)
    parser.add_argument("--max-minutes", type=float, default=math.inf)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=20250702)
    args = parser.parse_args(argv)
    if (
        args.out.exists()
        and any(args.out.iterdir())
        and not any((args.out / f).exists() for f in ("config.json", OVERLAY_JSON))
    ):
        parser.error(f"{args.out} exists and is not a model directory; not overwriting it")

    from banditspec.model_paths import resolve_model_path

    target_dir = Path(resolve_model_path(args.target))
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    dtype = torch.bfloat16 if device.type == "cuda" or args.cpu_bf16 else torch.float32
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=dtype)
    # transformers wraps PreTrainedModel.to in functools.wraps(Module.to), which mypy cannot bind as a method.
    target.to(device)  # type: ignore[arg-type]
    target.eval().requires_grad_(False)
    if len(args.text) == 1:  # one file: its last tenth is held out, never trained on
        tokens = token_stream(tokenizer, [Path(args.text[0]).read_text(encoding="utf-8")])
        split = len(tokens) * 9 // 10
        train_tokens, held_tokens = tokens[:split], tokens[split:]
        data = "1 text file, its last tenth of tokens held out"
    else:
        if args.text:
            texts = [Path(p).read_text(encoding="utf-8") for p in args.text]
            train_texts, held_texts = texts[:-1], texts[-1:]
            data = f"{len(args.text)} text files, the last held out"
        else:
            documents = corpus.read_documents(corpus.fetch_deb(args.cache_dir))
            train_texts = [d.text for d in documents if not d.held_out]
            held_texts = [d.text for d in documents if d.held_out]
            data = f"pydocs corpus ({corpus.SOURCE}), held-out split as in banditspec.training.pydocs.corpus"
        train_tokens, held_tokens = token_stream(tokenizer, train_texts), token_stream(tokenizer, held_texts)
    held = held_out_windows(held_tokens, args.seq_len, args.held_out_windows)

    torch.manual_seed(args.seed)
    layers = [int(index) for index in args.init_layers.split(",") if index.strip()]
    if layers:
        draft = draft_from_target_layers(target, layers).float()
        architecture = {"target_layers": layers}
    else:
        draft = LlamaForCausalLM(draft_config(target.config, args.hidden, args.layers, args.heads, args.intermediate))
        project_embedding(target, draft)
        architecture = {
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "intermediate": args.intermediate,
        }
    print(
        f"target {target_dir.name}: {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M; "
        f"draft {sum(p.numel() for p in draft.parameters()) / 1e6:.2f}M parameters; "
        f"{len(train_tokens)} training tokens",
        flush=True,
    )
    config = TrainConfig(
        args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        learning_rate=args.learning_rate,
        warmup_steps=min(100, args.steps // 10),
        eval_every=args.eval_every,
        max_seconds=args.max_minutes * 60,
        seed=args.seed,
    )
    report = train(
        draft,
        train_tokens,
        held,
        config,
        device,
        teacher=target,
        log=lambda line: print(line, flush=True),
        autocast_cpu=args.cpu_bf16,
    )
    shutil.rmtree(args.out, ignore_errors=True)
    record = {
        "target": args.target if args.target == "default" else str(target_dir),
        "data": data,
        "training_tokens": len(train_tokens),
        "architecture": architecture,
        "recipe": {k: str(v) for k, v in vars(args).items()},
        "device": str(device),
        "result": report.as_dict(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if layers:
        save_overlay(draft, args.out, dict(record, layers=layers, vocab_fingerprint=vocab_fingerprint(tokenizer)))
    else:
        draft.to("cpu", torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
        tokenizer.save_pretrained(args.out)
        (args.out / "distill.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["result"]))


if __name__ == "__main__":
    main()
