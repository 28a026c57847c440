"""Build the pydocs family: corpus → tokenizer → target (from scratch) → drafts (distilled from it).

    python -m banditspec.training.pydocs.build prepare --data-dir DIR      # fetch, split, train the tokenizer, tokenize
    python -m banditspec.training.pydocs.build train --data-dir DIR --out models/pydocs [--device cuda]

`banditspec pydocs build` runs both. Every model directory is an ordinary Hugging Face causal-LM
directory (bfloat16 safetensors + the tokenizer), and MANIFEST.json records the recipe, the data, the
held-out metrics and each file's SHA-256.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from banditspec.training.pydocs import corpus
from banditspec.training.pydocs.tokenizer import train_tokenizer
from banditspec.training.pydocs.train import TrainConfig, held_out_windows, train

SEED = 20250701
# Sizes chosen so the three bfloat16 checkpoints stay under 40 MB together.
ARCHITECTURES = {
    "target": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6),
    "draft-m": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4),
    "draft-s": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=1, num_attention_heads=3),
}
SEQ_LEN = 512


def prepare(data_dir: Path, cache_dir: Path) -> dict:
    documents = corpus.read_documents(corpus.fetch_deb(cache_dir))
    train_docs = [d for d in documents if not d.held_out]
    held_docs = [d for d in documents if d.held_out]
    tokenizer = train_tokenizer(d.text for d in train_docs)
    tokenizer.save_pretrained(data_dir / "tokenizer")
    eos = tokenizer.eos_token_id

    def join(docs: list[corpus.Document]) -> np.ndarray:
        ids = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
        return np.concatenate([np.array([*doc, eos], dtype=np.uint16) for doc in ids])

    train_tokens, held_tokens = join(train_docs), join(held_docs)
    np.save(data_dir / "train.npy", train_tokens)
    np.save(data_dir / "held_out.npy", held_tokens)
    description = {
        "source": corpus.SOURCE,
        "source_sha256": corpus.DEB_SHA256,
        "files": "usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
        "split": f"held out: files whose sha256(path) % {corpus.HELD_OUT_EVERY} == 0",
        "train_files": len(train_docs),
        "held_out_files": [d.path for d in held_docs],
        "train_tokens": len(train_tokens),
        "held_out_tokens": len(held_tokens),
        "tokenizer": f"byte-level BPE, {len(tokenizer)} tokens, trained on the training files",
    }
    (data_dir / "data.json").write_text(json.dumps(description, indent=2))
    return description


def model_config(name: str, vocab_size: int, eos: int) -> LlamaConfig:
    arch = ARCHITECTURES[name]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_hidden_layers"],
        num_attention_heads=arch["num_attention_heads"],
        num_key_value_heads=arch["num_attention_heads"],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def train_family(
    data_dir: Path, out_dir: Path, device: torch.device, target_steps: int, draft_steps: int, max_minutes: float
) -> dict:
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    train_tokens = np.load(data_dir / "train.npy")
    held = held_out_windows(np.load(data_dir / "held_out.npy"), SEQ_LEN, 128)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    budget = max_minutes * 60
    reports = {}

    torch.manual_seed(SEED)
    target = LlamaForCausalLM(model_config("target", vocab, eos))
    print(f"target: {_params(target) / 1e6:.1f}M parameters", flush=True)
    reports["target"] = train(
        target, train_tokens, held, TrainConfig(target_steps, seed=SEED, max_seconds=budget * 0.6), device
    ).as_dict()
    _save(target, tokenizer, out_dir / "target")
    # Distil from the weights that ship: bfloat16-rounded, computed in float32.
    # transformers wraps PreTrainedModel.to in functools.wraps(Module.to), which mypy cannot bind as a method.
    target.to(torch.bfloat16).float().requires_grad_(False)  # type: ignore[arg-type]

    for index, name in enumerate(("draft-m", "draft-s")):
        torch.manual_seed(SEED + 1 + index)
        draft = LlamaForCausalLM(model_config(name, vocab, eos))
        print(f"{name}: {_params(draft) / 1e6:.2f}M parameters", flush=True)
        remaining = budget - (time.perf_counter() - started)
        config = TrainConfig(
            draft_steps, learning_rate=2e-3, seed=SEED + 1 + index, max_seconds=remaining / (2 - index)
        )
        reports[name] = train(draft, train_tokens, held, config, device, teacher=target).as_dict()
        _save(draft, tokenizer, out_dir / name)
    return reports


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _save(model: LlamaForCausalLM, tokenizer, directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    # transformers wraps PreTrainedModel.to in functools.wraps(Module.to), which mypy cannot bind as a method.
    copy.deepcopy(model).to("cpu", torch.bfloat16).save_pretrained(directory, safe_serialization=True)  # type: ignore[arg-type]
    tokenizer.save_pretrained(directory)


def write_manifest(out_dir: Path, data: dict, reports: dict, recipe: dict) -> dict:
    files = {
        str(path.relative_to(out_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out_dir.rglob("*"))
        if path.is_file() and path.name != "MANIFEST.json"
    }
    manifest = {
        "family": "pydocs",
        "models": {
            name: {"architecture": ARCHITECTURES[name], "training": reports.get(name)} for name in ARCHITECTURES
        },
        "data": data,
        "recipe": recipe,
        "sha256": files,
    }
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_corpus_datastore(tokenizer_path: str, out: Path, cache_dir: Path) -> str:
    """A retrieval datastore over the training split of the corpus, in a target's tokenizer."""
    from banditspec.model_paths import resolve_model_path
    from banditspec.models import load_tokenizer, vocab_fingerprint
    from banditspec.training.datastore_build import build_datastore

    tokenizer = load_tokenizer(resolve_model_path(tokenizer_path))
    documents = [d for d in corpus.read_documents(corpus.fetch_deb(cache_dir)) if not d.held_out]
    ids = tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]
    datastore = build_datastore(ids, vocab_fingerprint(tokenizer), f"pydocs training split ({len(documents)} files)")
    datastore.save(out)
    return f"{datastore.num_tokens} tokens, {datastore.num_documents} documents -> {out}"


def verify(out_dir: Path) -> list[str]:
    """Problems with the artifacts in out_dir against their MANIFEST.json; empty when all match."""
    manifest_path = out_dir / "MANIFEST.json"
    if not manifest_path.exists():
        return [f"{manifest_path} is missing"]
    problems = []
    for name, digest in json.loads(manifest_path.read_text())["sha256"].items():
        path = out_dir / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{name} does not match its SHA-256")
    return problems


def main(argv: list[str] | None = None, prog: str = "python -m banditspec.training.pydocs.build") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["prepare", "train", "all"])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache/banditspec/pydocs-data")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/banditspec/downloads")
    parser.add_argument("--out", type=Path, default=Path("models/pydocs"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--target-steps", type=int, default=3000)
    parser.add_argument("--draft-steps", type=int, default=2000)
    parser.add_argument("--max-minutes", type=float, default=math.inf, help="wall-clock cap over all training")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.phase in ("prepare", "all"):
        print(json.dumps({k: v for k, v in prepare(args.data_dir, args.cache_dir).items() if k != "held_out_files"}))
    if args.phase in ("train", "all"):
        started = time.perf_counter()
        device = torch.device(args.device)
        reports = train_family(args.data_dir, args.out, device, args.target_steps, args.draft_steps, args.max_minutes)
        recipe = {
            "command": "python -m banditspec.training.pydocs.build " + " ".join(sys.argv[1:] if argv is None else argv),
            "seed": SEED,
            "seq_len": SEQ_LEN,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - started, 1),
        }
        data = json.loads((args.data_dir / "data.json").read_text())
        manifest = write_manifest(args.out, data, reports, recipe)
        print(json.dumps(manifest["models"], indent=1))


if __name__ == "__main__":
    main()
