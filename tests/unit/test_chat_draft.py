"""The chat draft's pipeline (`banditspec chat-draft`): generated prompts kept apart from the benchmark's,
the target's own answers with its top-k log-probabilities, and a draft over a frequent-token subset that
resolves to a model drafter proposing from that subset only."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import EOS_ID

from banditspec.lean_llama import LeanLlama
from banditspec.model_paths import resolve_model_path
from banditspec.models import load_causal_lm
from banditspec.overlays import OVERLAY_JSON, VOCABULARY_JSON
from banditspec.sampling import SamplingParams
from banditspec.training.chat import answers, build, prompts
from banditspec.training.chat import train as chat_train
from services.draft.drafters.base import DraftSession
from services.draft.drafters.model_drafter import ModelDrafter

BENCHMARK = [p["messages"] for p in json.loads(build.BENCHMARK_PROMPTS.read_text())["prompts"]]


def test_prompts_are_seeded_broad_and_apart_from_the_benchmark():
    first = prompts.first_turn_prompts(random.Random(7), 40, 40, 30)
    again = prompts.first_turn_prompts(random.Random(7), 40, 40, 30)
    assert [p.messages for p in first] == [p.messages for p in again]
    assert {p.kind for p in first} == {"creative", "explanation", "code_edit"} and len(first) == 110
    assert len({p.messages[0]["content"] for p in first}) == len({p.id for p in first}) == len(first)
    more = prompts.first_turn_prompts(random.Random(9), 300, 0, 0)  # ids name the content, not the position
    ids = {p.messages[0]["content"]: p.id for p in more}
    shared = [p for p in first if p.messages[0]["content"] in ids]
    assert shared and all(ids[p.messages[0]["content"]] == p.id for p in shared)
    assert prompts.overlapping(first, BENCHMARK) == []
    answered = [(p, " ".join(["word"] * 50) + f" {i}") for i, p in enumerate(first) if p.kind != "code_edit"]
    second = prompts.second_turn_prompts(random.Random(8), answered)
    assert {p.kind for p in second} == {"summarisation", "qa_context", "multi_turn"}
    assert prompts.overlapping(second, BENCHMARK) == []
    follow = next(p for p in second if p.kind == "multi_turn")
    assert [m["role"] for m in follow.messages] == ["user", "assistant", "user"]
    assert all(p.topic for p in first + second)  # held-out splits go by topic
    parents = {p.topic for p, _ in answered}
    assert {p.topic for p in second} <= parents


def test_overlap_with_a_benchmark_prompt_is_found():
    copied = prompts.ChatPrompt("copy", "creative", [{"role": "user", "content": BENCHMARK[0][0]["content"]}])
    assert prompts.overlapping([copied], BENCHMARK) == ["copy"]


@pytest.fixture(scope="module")
def chat_target(tiny_models, tmp_path_factory):
    """The tiny target with a chat template, as the chat pipeline renders prompts with it."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("chat-target") / "target"
    shutil.copytree(tiny_models.target, directory)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def answered_dir(chat_target, tmp_path_factory):
    out = tmp_path_factory.mktemp("answers")
    args = ["answers", "--target", str(chat_target), "--out", str(out), "--max-new-tokens", "8"]
    build.main([*args, "--creative", "6", "--explanation", "6", "--code", "3", "--batch-size", "4"])
    return out


def test_answers_are_the_targets_greedy_continuations(answered_dir, chat_target):
    from transformers import AutoModelForCausalLM

    records = answers.read_records(answered_dir / "first") + answers.read_records(answered_dir / "second")
    loaded = answers.load_shards([answered_dir / "first", answered_dir / "second"])
    assert len(records) == len(loaded) >= 15 and {r["kind"] for r in records} >= {"creative", "code_edit"}
    model = AutoModelForCausalLM.from_pretrained(str(chat_target), dtype=torch.float32).eval()
    assert {r["kind"] for r in records[:12]} == {"creative", "explanation", "code_edit"}  # kinds in turn
    assert [r["topic"] for r in records] == [item.topic for item in loaded] and all(r["topic"] for r in records)
    for item in loaded[:4]:
        assert 1 <= len(item.answer_ids) <= 8
        assert item.topk_ids.shape == item.topk_logp.shape == (len(item.answer_ids), answers.TOP_K)
        assert (item.topk_ids[:, 0] == item.answer_ids).all()  # greedy: the answer is the top token
        with torch.inference_mode():
            alone = model.generate(
                torch.tensor([item.prompt_ids]),
                max_new_tokens=len(item.answer_ids),
                do_sample=False,
                eos_token_id=EOS_ID,
                pad_token_id=EOS_ID,
            )[0, len(item.prompt_ids) :].tolist()
        assert alone == item.answer_ids  # padding in the batch changed nothing
        assert (item.topk_logp[:, :-1] >= item.topk_logp[:, 1:]).all()


def test_answering_again_skips_what_is_answered(answered_dir, chat_target):
    before = len(answers.read_records(answered_dir / "first"))
    build.main(
        [
            "answers",
            "--target",
            str(chat_target),
            "--out",
            str(answered_dir),
            "--max-new-tokens",
            "8",
            "--creative",
            "6",
            "--explanation",
            "6",
            "--code",
            "3",
        ]
    )
    assert len(answers.read_records(answered_dir / "first")) == before


def test_held_out_split_keeps_a_topic_on_one_side():
    ids = torch.zeros(1, answers.TOP_K).int().numpy()
    items = [answers.Answered([i], [3], ids, ids.astype("float16"), f"topic {i % 10}") for i in range(200)]
    held = {item.topic for item in items if chat_train.held_out(item, 4)}
    trained = {item.topic for item in items if not chat_train.held_out(item, 4)}
    assert held and trained and not held & trained


def test_frequent_vocabulary_keeps_end_of_text_the_most_frequent_then_low_ids():
    ids = torch.zeros(6, answers.TOP_K).int().numpy()
    item = answers.Answered([1], [5, 5, 5, 6, 6, 7], ids, ids.astype("float16"))
    assert chat_train.frequent_vocabulary([item], 2, [0], 50) == [0, 5]
    assert chat_train.frequent_vocabulary([item], 4, [0], 50) == [0, 5, 6, 7]
    assert chat_train.frequent_vocabulary([item], 6, [0], 50) == [0, 1, 2, 5, 6, 7]  # then the lowest ids
    assert chat_train.frequent_vocabulary([item], 60, [0], 50) == list(range(50))
    assert chat_train.coverage([item], [5, 6]) == pytest.approx(5 / 6)


def train_overlay(chat_target, answered_dir, overlay, *args: str) -> None:
    """`chat-draft train` on the tiny answers, one answer topic in three held out."""
    common = ["--target", str(chat_target), "--answers", str(answered_dir), "--out", str(overlay)]
    build.main(["train", *common, "--held-out-every", "3", *args])


def test_a_trained_chat_draft_proposes_from_its_vocabulary(answered_dir, chat_target, tmp_path, monkeypatch):
    monkeypatch.setenv("BANDITSPEC_CACHE", str(tmp_path / "cache"))
    overlay = tmp_path / "chat-draft"
    train_overlay(
        chat_target, answered_dir, overlay, "--layers", "1", "--vocabulary", "12", "--steps", "4", "--eval-every", "2"
    )
    record = json.loads((overlay / OVERLAY_JSON).read_text())
    vocabulary = json.loads((overlay / VOCABULARY_JSON).read_text())
    assert len(vocabulary) == 12 and EOS_ID in vocabulary and record["vocabulary"]["size"] == 12
    assert record["result"]["steps"] == 4 and 0.0 <= record["result"]["held_out_agreement"] <= 1.0

    path = resolve_model_path(str(overlay))
    assert json.loads((path / VOCABULARY_JSON).read_text()) == vocabulary
    drafter = ModelDrafter.load("chat", str(path), device="cpu", dtype="float32", min_confidence=0.0)
    assert "12 frequent tokens" in drafter.source
    context = [5, 9, 13, 17]
    proposal = drafter.propose(DraftSession(list(context), SamplingParams(), seed=0, prompt_length=4), 4)
    draft = load_causal_lm(path, device="cpu", dtype="float32").model
    head = torch.tensor(vocabulary)
    expected = list(context)
    with torch.inference_mode():
        for _ in range(4):  # the greedy continuation when only the subset can be chosen
            logits = draft(torch.tensor([expected])).logits[0, -1]
            expected.append(int(head[logits[head].argmax()]))
            if expected[-1] == EOS_ID:
                break
    assert proposal.token_ids == expected[4 : 4 + len(proposal.token_ids)] and proposal.token_ids
    sampled = drafter.propose(DraftSession(list(context), SamplingParams(temperature=1.0), seed=3, prompt_length=4), 3)
    outside = torch.ones(draft.config.vocab_size, dtype=torch.bool)
    outside[head] = False
    assert sampled.probs is not None and len(sampled.probs) == len(sampled.token_ids) > 0
    # q has no mass outside the subset: the target's accept/residual rule needs nothing else to stay exact
    assert float(sampled.probs[:, outside].sum()) == 0.0
    assert torch.allclose(sampled.probs.sum(-1), torch.ones(len(sampled.token_ids)))


def test_a_changed_vocabulary_is_refused(answered_dir, chat_target, tmp_path, monkeypatch):
    monkeypatch.setenv("BANDITSPEC_CACHE", str(tmp_path / "cache"))
    overlay = tmp_path / "chat-draft"
    train_overlay(chat_target, answered_dir, overlay, "--layers", "0", "--vocabulary", "10", "--steps", "1")
    vocabulary = json.loads((overlay / VOCABULARY_JSON).read_text())
    (overlay / VOCABULARY_JSON).write_text(json.dumps(vocabulary[:-1]))
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_model_path(str(overlay))


def test_lean_logits_over_a_subset_are_the_full_logits_there(tiny_models):
    loaded = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    subset = [0, 4, 7, 11, 30]
    full, lean = LeanLlama(loaded.model, 64), LeanLlama(loaded.model, 64, subset)
    ids = [5, 9, 13, 17, 21]
    everything, some = full.forward(ids, full.new_cache()), lean.forward(ids, lean.new_cache())
    torch.testing.assert_close(some[:, subset], everything[:, subset])
    rest = torch.ones(everything.shape[-1], dtype=torch.bool)
    rest[subset] = False
    assert torch.isneginf(some[:, rest]).all()
    with pytest.raises(ValueError, match="vocabulary subset"):
        LeanLlama(loaded.model, 64, [10_000])
