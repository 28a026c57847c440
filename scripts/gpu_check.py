"""One short check of the CUDA path, for a lent GPU machine (no internet, no model files).

Builds a model with SmolLM2-135M-Instruct's config and random weights (plus the real tokenizer, from
--tokenizer-dir), then through the real gRPC stack on CUDA:
  1. float32: greedy output token-identical to transformers generate() on the same GPU;
  2. a sampled request (temperature 0.8) through a model drafter that ships q, and the seed reproducing;
  3. bfloat16: tokens/s of plain generate() vs the stack's target-only arm and UCBSpec, and the
     controller's overhead per round (round wall time minus the compute the services report).
Writes a JSON summary to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from banditspec.cli.launcher import LocalStack
from banditspec.v1 import generation_pb2 as gen
from banditspec.v1 import generation_pb2_grpc as gen_grpc

PROMPTS = [
    "Rewrite with type hints:\ndef add(a, b):\n    return a + b\n\ndef scale(values, k):\n    return [v * k for v in values]\n",
    "Summarise: The quick brown fox jumps over the lazy dog. The dog sleeps. The fox runs away into the forest.",
]


def build_model(tokenizer_dir: Path, out: Path, layers: int | None = None) -> Path:
    config = LlamaConfig.from_pretrained(tokenizer_dir)
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def greedy(model, ids: list[int], device: str, max_new_tokens: int):
    """transformers' own greedy generate(): the reference the stack's output must match."""
    return model.generate(torch.tensor([ids], device=device), max_new_tokens=max_new_tokens, do_sample=False)


def stream(stub, request):
    rounds, final = [], None
    for message in stub.GenerateStream(request, timeout=300):
        if message.HasField("round") and message.round.arm:
            rounds.append(message.round)
        elif message.HasField("final"):
            final = message.final
    return rounds, final


def request(ids, max_new, **kw) -> gen.GenerateRequest:
    return gen.GenerateRequest(token_ids=gen.TokenIds(ids=ids), max_new_tokens=max_new, **kw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--device", default="cuda", help="cpu: a local smoke run of this script")
    parser.add_argument("--layers", type=int, default=None, help="fewer target layers (smoke runs)")
    args = parser.parse_args()
    device = args.device
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    work = Path(tempfile.mkdtemp())
    target_dir = build_model(args.tokenizer_dir, work / "target", layers=args.layers)
    draft_dir = build_model(args.tokenizer_dir, work / "draft", layers=2)
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    prompts = [tokenizer.encode(p) for p in PROMPTS]

    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=getattr(torch, dtype)).to(device).eval()
        with LocalStack(
            model=str(target_dir),
            drafters=["pld=prompt_lookup", f"small=model:{draft_dir}@{dtype}"],
            controller_port=0,
            extra_target_args=["--dtype", dtype, "--device", device],
            extra_draft_args=["--device", device],
            startup_timeout=300,
        ) as stack:
            stub = gen_grpc.GenerationServiceStub(grpc.insecure_channel(stack.address("controller")))
            arms = [a.name for a in stub.ListArms(gen.ListArmsRequest(), timeout=10).arms]
            section: dict = {"arms": arms, "prompts": []}
            for ids in prompts:
                row: dict = {}
                greedy(model, ids, device, args.max_new_tokens)  # warm-up
                sync(device)
                start = time.perf_counter()
                expected = greedy(model, ids, device, args.max_new_tokens)[0, len(ids) :].tolist()
                sync(device)
                row["generate_tok_s"] = len(expected) / (time.perf_counter() - start)
                for label, kw in (
                    [("target-only", dict(policy=gen.POLICY_FIXED, allowed_arms=["target-only"]))]
                    + [(arm, dict(policy=gen.POLICY_FIXED, allowed_arms=[arm])) for arm in arms if arm != "target-only"]
                    + [("ucbspec", dict(policy=gen.POLICY_UCBSPEC))]
                ):
                    stream(stub, request(ids, 8, **kw))  # warm-up
                    rounds, final = stream(stub, request(ids, args.max_new_tokens, **kw))
                    overheads = [r.wall_seconds - r.service_seconds for r in rounds]
                    row[label] = {
                        "tok_s": final.stats.tokens_per_second,
                        "identical": list(final.token_ids) == expected,
                        "rounds": final.stats.rounds,
                        "overhead_median_ms": 1e3 * statistics.median(overheads),
                    }
                section["prompts"].append(row)
            sampled = dict(
                temperature=0.8, top_p=0.95, seed=1234, policy=gen.POLICY_FIXED, allowed_arms=["local/small/4"]
            )
            first = stub.Generate(request(prompts[0], 48, **sampled), timeout=120)
            second = stub.Generate(request(prompts[0], 48, **sampled), timeout=120)
            section["sampled_reproducible"] = list(first.token_ids) == list(second.token_ids)
            section["sampled_accepted"] = [a.accepted_tokens for a in first.stats.arms]
            report[dtype] = section
        del model
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
