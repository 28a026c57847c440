"""Training loops: a language model from scratch, and a draft distilled from a target.

Distillation minimises KL(target ‖ draft) on the target's own next-token distributions over the
training text: what speculative decoding rewards is agreement with the target, not with the corpus.
Both loops are step-based with fixed seeds; a wall-clock cap only guards against a slow device and
is reported when it cuts a run short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 32
    seq_len: int = 512
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_every: int = 250
    max_seconds: float = math.inf
    seed: int = 0


@dataclass
class TrainReport:
    steps: int
    seconds: float
    best_step: int
    held_out_loss: float  # cross-entropy on held-out text (from-scratch) or KL to the target (distilled)
    agreement: float | None  # greedy agreement with the target on held-out text (drafts only)
    cut_by_time: bool

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}


def batches(tokens: np.ndarray, config: TrainConfig, generator: np.random.Generator):
    """Random windows of seq_len + 1 tokens; documents are joined with end-of-text tokens."""
    high = len(tokens) - config.seq_len - 1
    while True:
        starts = generator.integers(0, high, size=config.batch_size)
        window = np.stack([tokens[s : s + config.seq_len + 1] for s in starts]).astype(np.int64)
        yield torch.from_numpy(window)


def held_out_windows(tokens: np.ndarray, seq_len: int, count: int) -> torch.Tensor:
    """The first `count` non-overlapping windows: the same every evaluation."""
    count = min(count, len(tokens) // (seq_len + 1))
    return torch.from_numpy(
        np.stack([tokens[i * (seq_len + 1) : (i + 1) * (seq_len + 1)] for i in range(count)]).astype(np.int64)
    )


def train(
    model: torch.nn.Module,
    train_tokens: np.ndarray,
    held_out: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    teacher: torch.nn.Module | None = None,
    log: Callable[[str], None] = print,
    autocast_cpu: bool = False,
) -> TrainReport:
    """Train in place; the model ends with the weights of its best held-out evaluation."""
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]  # a frozen (shared) embedding stays as is
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or autocast_cpu)
    best_loss, best_step = math.inf, 0
    best_agreement: float | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the weights of the best evaluation
    start = time.perf_counter()
    step = 0
    cut_by_time = False
    for step, batch in enumerate(batches(train_tokens, config, generator), start=1):
        batch = batch.to(device, non_blocking=True)
        with autocast:
            loss = _loss(model, batch, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        last = step >= config.steps or time.perf_counter() - start > config.max_seconds
        if step % config.eval_every == 0 or last:
            held_loss, agreement = evaluate(model, held_out, device, teacher, autocast_cpu)
            log(
                f"step {step}/{config.steps} train {loss.item():.3f} held-out {held_loss:.3f}"
                + (f" agreement {agreement:.3f}" if agreement is not None else "")
                + f" {time.perf_counter() - start:.0f}s"
            )
            if held_loss < best_loss:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_loss, best_step, best_agreement = held_loss, step, agreement
            model.train()
        if last:
            cut_by_time = step < config.steps
            break
    if best_state is None:  # no evaluation was finite (the last step always evaluates)
        raise RuntimeError(f"training diverged: the held-out loss was never finite ({config.steps} steps)")
    model.load_state_dict(best_state)
    model.eval()
    return TrainReport(step, time.perf_counter() - start, best_step, best_loss, best_agreement, cut_by_time)


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _loss(model: torch.nn.Module, batch: torch.Tensor, teacher: torch.nn.Module | None) -> torch.Tensor:
    inputs, labels = batch[:, :-1], batch[:, 1:]
    logits = model(input_ids=inputs).logits.float()
    if teacher is None:
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
    with torch.no_grad():
        target_logp = F.log_softmax(teacher(input_ids=inputs).logits.float(), dim=-1)
    draft_logp = F.log_softmax(logits, dim=-1)
    return F.kl_div(draft_logp, target_logp, log_target=True, reduction="none").sum(-1).mean()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    held_out: torch.Tensor,
    device: torch.device,
    teacher: torch.nn.Module | None,
    autocast_cpu: bool = False,
) -> tuple[float, float | None]:
    """Held-out loss and, for a draft, the share of positions where its argmax equals the target's."""
    model.eval()
    losses, agree, total = [], 0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or autocast_cpu)
    for chunk in held_out.split(16):
        chunk = chunk.to(device)
        with autocast:
            losses.append(_loss(model, chunk, teacher).item())
            if teacher is not None:
                inputs = chunk[:, :-1]
                agree += (
                    (model(input_ids=inputs).logits.argmax(-1) == teacher(input_ids=inputs).logits.argmax(-1))
                    .sum()
                    .item()
                )
                total += inputs.numel()
    return float(np.mean(losses)), (agree / total if teacher is not None else None)
