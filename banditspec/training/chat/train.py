"""Distil a draft of some of the target's layers on the target's own answers, over a vocabulary subset.

The draft's output layer is the target's embedding restricted to the `vocabulary_size` tokens most frequent
in the answers (FR-Spec): for SmolLM2 the full 49,152-row layer costs more per draft token than three
transformer layers. A draft that can only propose those tokens loses nothing: the target verifies every
token, and a token outside the subset is rejected and replaced by the target's own. The loss is the
cross-entropy to the target's top-k next-token distribution at each answer position, renormalised over
the subset; positions whose answer token is outside the subset teach nothing and are skipped.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from banditspec.training.chat.answers import Answered


@dataclass
class Example:
    ids: torch.Tensor  # prompt (its last tokens) + answer
    first_answer: int  # index in ids of the first answer token
    label: torch.Tensor  # [answer, subset]: the target's next-token probabilities, over the subset


@dataclass
class ChatTrainConfig:
    steps: int
    batch_size: int = 8
    learning_rate: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    eval_every: int = 100
    max_prompt_tokens: int = 256
    max_seconds: float = math.inf
    seed: int = 0


def frequent_vocabulary(answered: list[Answered], size: int, always: list[int], vocab_size: int) -> list[int]:
    """`always` (end-of-text), then the tokens most frequent in the answers (ties by id), then the lowest
    ids not yet chosen, up to `size`: a byte-level BPE numbers its tokens in merge order, so low ids stand in
    for frequent text the answers happen not to contain."""
    counts = Counter(token for item in answered for token in item.answer_ids)
    ranked = [token for token, _ in sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))]
    chosen = list(dict.fromkeys([*always, *ranked, *range(min(vocab_size, size + len(always) + len(ranked)))]))
    return sorted(chosen[:size])


def coverage(answered: list[Answered], vocabulary: list[int]) -> float:
    """The share of answer tokens inside `vocabulary`."""
    inside = set(vocabulary)
    tokens = [token for item in answered for token in item.answer_ids]
    return sum(token in inside for token in tokens) / max(1, len(tokens))


def held_out(item: Answered, every: int = 20) -> bool:
    """A stable split by topic (by prompt for answers without one): about one topic in `every` is held out,
    with every prompt on it. Answers to other prompts on a trained topic would overstate what the draft
    learned (RESULTS 20: 0.51 agreement on such answers, 0.21 on the benchmark's)."""
    key = item.topic.encode() if item.topic else np.asarray(item.prompt_ids, dtype=np.int32).tobytes()
    return zlib.crc32(key) % every == 0


def examples(answered: list[Answered], vocabulary: list[int], max_prompt_tokens: int) -> list[Example]:
    index = torch.full((max(vocabulary) + 1,), -1, dtype=torch.long)
    index[torch.tensor(vocabulary)] = torch.arange(len(vocabulary))
    out = []
    for item in answered:
        prompt = item.prompt_ids[-max_prompt_tokens:]
        topk_ids = torch.from_numpy(item.topk_ids.astype(np.int64))
        probs = torch.from_numpy(item.topk_logp.astype(np.float32)).exp()
        slots = torch.where(topk_ids <= index.numel() - 1, index[topk_ids.clamp(max=index.numel() - 1)], -1)
        label = torch.zeros(len(item.answer_ids), len(vocabulary))
        inside = slots >= 0
        rows = torch.arange(len(item.answer_ids))[:, None].expand_as(slots)
        label[rows[inside], slots[inside]] = probs[inside]
        answer = torch.tensor(item.answer_ids)
        known = index[answer.clamp(max=index.numel() - 1)] >= 0
        known &= answer < index.numel()
        label[~known] = 0.0  # the answer token is outside the subset: nothing to learn at this position
        label = label / label.sum(-1, keepdim=True).clamp(min=1e-9)
        out.append(Example(torch.tensor(prompt + item.answer_ids), len(prompt), label))
    return out


def head_logits(draft: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    hidden = draft.model(input_ids=ids, attention_mask=attention).last_hidden_state  # type: ignore[operator]
    return hidden @ head.T


def _batch(items: list[Example]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    width = max(len(e.ids) for e in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    attention = torch.zeros(len(items), width, dtype=torch.long)
    for row, example in enumerate(items):
        ids[row, : len(example.ids)] = example.ids
        attention[row, : len(example.ids)] = 1
    # The logits at position first_answer - 1 + j predict answer token j.
    spans = [(e.first_answer - 1, len(e.ids) - 1) for e in items]
    return ids, attention, spans


def _loss(draft: torch.nn.Module, items: list[Example], head: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy to the labels over positions with a label; agreeing argmaxes; all answer positions
    (one whose token is outside the subset counts as a disagreement)."""
    ids, attention, spans = _batch(items)
    logits = head_logits(draft, ids, attention, head).float()
    picked = torch.cat([logits[row, start:end] for row, (start, end) in enumerate(spans)])
    labels = torch.cat([e.label[: end - start] for e, (start, end) in zip(items, spans, strict=True)])
    used = labels.sum(-1) > 0
    logp = F.log_softmax(picked[used], -1)
    loss = -(labels[used] * logp).sum(-1).mean()
    agree = int((picked[used].argmax(-1) == labels[used].argmax(-1)).sum())
    return loss, agree, len(labels)


def train_draft(
    draft: torch.nn.Module,
    head: torch.Tensor,
    train_set: list[Example],
    held: list[Example],
    config: ChatTrainConfig,
    log: Callable[[str], None] = print,
) -> dict:
    """Train in place (bfloat16 autocast); the draft ends with the weights of its best held-out agreement."""
    generator = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    trainable = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    history: list[dict] = []
    best = {"step": 0, "agreement": evaluate(draft, head, held)}
    log(f"step 0 held-out agreement {best['agreement']:.3f}")
    best_state = {k: v.detach().clone() for k, v in draft.state_dict().items()}
    start = time.perf_counter()
    step = 0
    for step in range(1, config.steps + 1):
        draft.train()
        items = [train_set[i] for i in generator.integers(0, len(train_set), size=config.batch_size)]
        with autocast:
            loss, _, _ = _loss(draft, items, head)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        last = step == config.steps or time.perf_counter() - start > config.max_seconds
        if step % config.eval_every == 0 or last:
            agreement = evaluate(draft, head, held)
            seconds = time.perf_counter() - start
            history.append(
                {
                    "step": step,
                    "seconds": round(seconds),
                    "train_loss": round(loss.item(), 4),
                    "held_out_agreement": round(agreement, 4),
                }
            )
            log(f"step {step}/{config.steps} train {loss.item():.3f} held-out agreement {agreement:.3f} {seconds:.0f}s")
            if agreement > best["agreement"]:
                best = {"step": step, "agreement": agreement}
                best_state = {k: v.detach().clone() for k, v in draft.state_dict().items()}
        if last:
            break
    draft.load_state_dict(best_state)
    draft.eval()
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - start),
        "best_step": best["step"],
        "held_out_agreement": round(best["agreement"], 4),
        "cut_by_time": step < config.steps,
        "history": history,
    }


@torch.no_grad()
def evaluate(draft: torch.nn.Module, head: torch.Tensor, held: list[Example]) -> float:
    """Greedy agreement with the target on held-out answers: the share of answer positions where the draft's
    argmax over the subset is the target's."""
    draft.eval()
    agree = total = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for first in range(0, len(held), 8):
            _, hits, count = _loss(draft, held[first : first + 8], head)
            agree, total = agree + hits, total + count
    return agree / max(1, total)
