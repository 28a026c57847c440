"""A draft model's greedy agreement with the target on the benchmark's recorded answers, teacher-forced:
the share of answer positions where the draft's argmax (over its vocabulary subset, if it has one) is the
target's token. Reads the answers `replay_drafters.py` recorded.

    .venv/bin/python benchmarks/draft_agreement.py --draft results/drafts/chat-l3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from banditspec.bench.config import BENCHMARKS_DIR
from banditspec.bench.workload import load_prompts, render_prompts
from banditspec.model_paths import resolve_model_path
from banditspec.models import load_causal_lm
from banditspec.overlays import read_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", required=True, help="a draft model path or name (overlays too)")
    parser.add_argument("--refs", type=Path, default=Path("results/replay/answers.json"))
    parser.add_argument("--key", default="default/float32/128", help="the recorded answers' model/dtype/length")
    args = parser.parse_args()
    path = resolve_model_path(args.draft)
    draft = load_causal_lm(path, device="cpu", dtype="float32")
    subset = read_vocabulary(Path(path))
    head = torch.tensor(subset) if subset is not None else torch.arange(draft.vocab_size)
    recorded = json.loads(args.refs.read_text())
    prompts = load_prompts(BENCHMARKS_DIR / "prompts.json")
    render_prompts(prompts, draft.tokenizer)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for prompt in prompts:
        answer = recorded[f"{args.key}/{prompt.id}"]
        with torch.inference_mode():
            logits = draft.model(torch.tensor([prompt.ids + answer])).logits[0, len(prompt.ids) - 1 : -1]
        agree = int((head[logits[:, head].argmax(-1)] == torch.tensor(answer)).sum())
        for key in ("all", prompt.kind):
            counts[key][0] += agree
            counts[key][1] += len(answer)
    print(" ".join(f"{kind} {hits / total:.3f}" for kind, (hits, total) in counts.items()))


if __name__ == "__main__":
    main()
