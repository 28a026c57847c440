"""Drafts made of their target's own layers: `banditspec distill --init-layers` writes an overlay (trained
tensors only), which resolves to an ordinary model directory that serves as a model drafter."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import WORDS
from safetensors.torch import load_file

from banditspec.model_paths import resolve_model_path
from banditspec.models import load_causal_lm
from banditspec.overlays import OVERLAY_JSON, OVERLAY_TENSORS, draft_from_target_layers
from banditspec.sampling import SamplingParams
from banditspec.training import distill
from services.draft.drafters.base import DraftSession
from services.draft.drafters.model_drafter import ModelDrafter


@pytest.fixture(scope="module")
def overlay(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("overlay")
    words = list(WORDS)
    for index in range(2):
        text = " ".join(words[(i * 7 + index) % len(words)] for i in range(600))
        (root / f"text{index}.txt").write_text(text)
    out = root / "draft"
    distill.main(
        [
            "--target",
            str(tiny_models.target),
            "--out",
            str(out),
            "--text",
            str(root / "text0.txt"),
            str(root / "text1.txt"),
            "--init-layers",
            "1",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--eval-every",
            "2",
            "--held-out-windows",
            "2",
            "--device",
            "cpu",
        ]
    )
    return out


def test_overlay_holds_only_the_trained_tensors(overlay):
    record = json.loads((overlay / OVERLAY_JSON).read_text())
    assert record["layers"] == [1] and record["result"]["steps"] == 4
    assert not (overlay / "config.json").exists()
    names = set(load_file(str(overlay / OVERLAY_TENSORS)))
    assert names and all(n.startswith("model.layers.0.") or n == "model.norm.weight" for n in names), names


def test_overlay_resolves_to_a_model_drafter(overlay, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("BANDITSPEC_CACHE", str(tmp_path))
    path = resolve_model_path(str(overlay))
    assert path.is_relative_to(tmp_path) and (path / "config.json").exists()
    assert resolve_model_path(str(overlay)) == path  # assembled once

    draft = load_causal_lm(path, device="cpu", dtype="float32")
    target = load_causal_lm(tiny_models.target, device="cpu", dtype="float32")
    assert draft.model.config.num_hidden_layers == 1 and draft.fingerprint == target.fingerprint
    torch.testing.assert_close(draft.model.get_input_embeddings().weight, target.model.get_input_embeddings().weight)
    torch.testing.assert_close(draft.model.lm_head.weight, target.model.lm_head.weight)
    trained = load_file(str(overlay / OVERLAY_TENSORS))["model.layers.0.self_attn.q_proj.weight"].float()
    torch.testing.assert_close(draft.model.model.layers[0].self_attn.q_proj.weight, trained)

    drafter = ModelDrafter.load("ov", str(path), device="cpu", dtype="float32", min_confidence=0.0)
    proposal = drafter.propose(DraftSession([5, 9, 13, 17], SamplingParams(), seed=0, prompt_length=4), 3)
    expected = [5, 9, 13, 17]
    with torch.inference_mode():
        for _ in range(3):  # the assembled model's own greedy continuation
            expected.append(int(draft.model(torch.tensor([expected])).logits[0, -1].argmax()))
    assert proposal.token_ids == expected[4:]


def test_a_malformed_overlay_is_a_value_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BANDITSPEC_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / OVERLAY_JSON).write_text('{"layers": [0]}')
    with pytest.raises(ValueError, match="not a valid draft overlay"):  # no tensors file
        resolve_model_path(str(broken))
    (broken / OVERLAY_TENSORS).write_bytes(b"")
    with pytest.raises(ValueError, match="lacks target"):
        resolve_model_path(str(broken))


def test_a_changed_overlay_is_refused(overlay, tmp_path, monkeypatch):
    monkeypatch.setenv("BANDITSPEC_CACHE", str(tmp_path))
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / OVERLAY_JSON).write_text((overlay / OVERLAY_JSON).read_text())
    data = bytearray((overlay / OVERLAY_TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (copy / OVERLAY_TENSORS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_model_path(str(copy))


def test_layers_must_exist_in_the_target(tiny_models):
    target = load_causal_lm(tiny_models.target, device="cpu", dtype="float32").model
    with pytest.raises(ValueError, match="indices"):
        draft_from_target_layers(target, [0, 2])
    draft = draft_from_target_layers(target, [1, 0])
    torch.testing.assert_close(draft.model.layers[0].mlp.up_proj.weight, target.model.layers[1].mlp.up_proj.weight)
    assert not draft.get_input_embeddings().weight.requires_grad


def test_unknown_shipped_draft_names_the_shipped_ones():
    with pytest.raises(ValueError, match="no SmolLM2 draft 'nope'"):
        resolve_model_path("smollm2:nope")
