"""The target's own greedy answers to chat prompts, with its top-k next-token log-probabilities.

Answers are what the target will actually write when served, so a draft trained to predict them learns the
distribution speculative decoding rewards. The log-probabilities come from the same forwards (`generate`'s
logits), so distillation needs no second pass of the target. Batches are written as shards as they finish:
a run cut short keeps what it made and a rerun skips the prompts already answered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from banditspec.training.chat.prompts import ChatPrompt

TOP_K = 16


@dataclass
class Answered:
    prompt_ids: list[int]
    answer_ids: list[int]
    topk_ids: np.ndarray  # [len(answer_ids), TOP_K] int32: the target's most probable next tokens ...
    topk_logp: np.ndarray  # ... and their log-probabilities (float16), at each answer position
    topic: str = ""  # the prompt's topic: held-out splits go by topic, so no topic is on both sides


def answer_all(
    model,
    tokenizer,
    prompts: list[ChatPrompt],
    out: Path,
    max_new_tokens: int,
    batch_size: int,
    max_seconds: float,
    log: Callable[[str], None] = print,
) -> None:
    """Answer every prompt not yet in `out`/answers.jsonl, `batch_size` at a time: each batch one kind's
    prompts of similar length (little padding), the kinds taken in turn (a time cap cuts every kind alike)."""
    out.mkdir(parents=True, exist_ok=True)
    done = {record["id"] for record in read_records(out)}
    todo = [p for p in prompts if p.id not in done]
    by_kind: dict[str, list[tuple[ChatPrompt, list[int]]]] = {}
    for prompt in todo:
        by_kind.setdefault(prompt.kind, []).append((prompt, _render(tokenizer, prompt)))
    queues = [
        [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
        for group in (sorted(items, key=lambda item: len(item[1])) for items in by_kind.values())
    ]
    batches = [queue[turn] for turn in range(max(map(len, queues), default=0)) for queue in queues if turn < len(queue)]
    start = time.perf_counter()
    eos = tokenizer.eos_token_id
    answered_count = 0
    for batch in batches:
        if time.perf_counter() - start > max_seconds:
            log(f"time cap: {len(todo) - answered_count} prompts left unanswered")
            break
        answered = _generate(model, [ids for _, ids in batch], max_new_tokens, eos)
        for (prompt, _), item in zip(batch, answered, strict=True):
            item.topic = prompt.topic
        shard = out / f"shard-{len(list(out.glob('shard-*.npz'))):05d}.npz"
        _save_shard(shard, answered)
        with (out / "answers.jsonl").open("a", encoding="utf-8") as records:
            for (prompt, _), item in zip(batch, answered, strict=True):
                text = tokenizer.decode(item.answer_ids, skip_special_tokens=True)
                record = {
                    "id": prompt.id,
                    "kind": prompt.kind,
                    "topic": prompt.topic,
                    "shard": shard.name,
                    "answer": text,
                }
                records.write(json.dumps(record) + "\n")
        answered_count += len(batch)
        tokens = sum(len(item.answer_ids) for item in answered)
        log(f"{answered_count}/{len(todo)} prompts, {tokens} answer tokens, {time.perf_counter() - start:.0f}s")


def read_records(out: Path) -> list[dict]:
    path = out / "answers.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_shards(directories: list[Path]) -> list[Answered]:
    answered: list[Answered] = []
    for directory in directories:
        for shard in sorted(directory.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                prompt_ends = np.cumsum(data["prompt_lengths"])
                answer_ends = np.cumsum(data["answer_lengths"])
                topics = data["topics"].tolist() if "topics" in data else [""] * len(prompt_ends)
                for index in range(len(prompt_ends)):
                    p0 = prompt_ends[index - 1] if index else 0
                    a0 = answer_ends[index - 1] if index else 0
                    answered.append(
                        Answered(
                            data["prompt_ids"][p0 : prompt_ends[index]].tolist(),
                            data["answer_ids"][a0 : answer_ends[index]].tolist(),
                            data["topk_ids"][a0 : answer_ends[index]],
                            data["topk_logp"][a0 : answer_ends[index]],
                            topics[index],
                        )
                    )
    return answered


def _render(tokenizer, prompt: ChatPrompt) -> list[int]:
    encoded = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@torch.inference_mode()
def _generate(model, prompts: list[list[int]], max_new_tokens: int, eos: int) -> list[Answered]:
    """Greedy answers of a left-padded batch; each ends at its first end-of-text token (kept)."""
    width = max(len(ids) for ids in prompts)
    pad = eos
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=eos,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = output.sequences[:, width:]
    logp = torch.stack(output.logits, dim=1).float().log_softmax(-1)  # [batch, steps, V]
    values, indices = logp.topk(TOP_K, dim=-1)
    answered = []
    for row, ids in enumerate(prompts):
        tokens = new[row].tolist()
        length = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        answered.append(
            Answered(
                ids,
                tokens[:length],
                indices[row, :length].to(torch.int32).numpy(),
                values[row, :length].to(torch.float16).numpy(),
            )
        )
    return answered


def _save_shard(path: Path, answered: list[Answered]) -> None:
    np.savez(
        path,
        prompt_lengths=np.array([len(a.prompt_ids) for a in answered], dtype=np.int32),
        answer_lengths=np.array([len(a.answer_ids) for a in answered], dtype=np.int32),
        prompt_ids=np.array([t for a in answered for t in a.prompt_ids], dtype=np.int32),
        answer_ids=np.array([t for a in answered for t in a.answer_ids], dtype=np.int32),
        topk_ids=np.concatenate([a.topk_ids for a in answered]).reshape(-1, TOP_K),
        topk_logp=np.concatenate([a.topk_logp for a in answered]).reshape(-1, TOP_K),
        topics=np.array([a.topic for a in answered], dtype=str),
    )
