"""The pydocs family: shipped artifacts match their manifest, the build pieces work on toy data, and
the trained target and drafts serve through the real services losslessly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from banditspec.model_paths import PYDOCS_DIR, resolve_model_path
from banditspec.training.distill import project_embedding
from banditspec.training.pydocs import build, corpus
from banditspec.training.pydocs.train import TrainConfig, held_out_windows, train


def test_shipped_artifacts_match_their_manifest_and_size_budget():
    assert build.verify(PYDOCS_DIR) == []
    manifest = json.loads((PYDOCS_DIR / "MANIFEST.json").read_text())
    total = sum((PYDOCS_DIR / name).stat().st_size for name in manifest["sha256"])
    assert total <= 40 * 1024 * 1024
    for name in ("draft-m", "draft-s"):
        assert manifest["models"][name]["training"]["agreement"] >= 0.55, name
    assert manifest["data"]["source_sha256"] == corpus.DEB_SHA256


def test_verify_names_a_tampered_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    build.write_manifest(tmp_path, {}, {}, {})
    assert build.verify(tmp_path) == []
    (tmp_path / "a.txt").write_text("y")
    assert build.verify(tmp_path) == ["a.txt does not match its SHA-256"]


def test_pydocs_aliases_resolve_to_shipped_models():
    assert resolve_model_path("pydocs") == PYDOCS_DIR / "target"
    assert resolve_model_path("pydocs:draft-s") == PYDOCS_DIR / "draft-s"
    with pytest.raises(ValueError, match="no pydocs model"):
        resolve_model_path("pydocs:nope")


def _ar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members.items():
        out.write(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def test_reads_a_member_of_a_debian_ar_archive():
    archive = _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"odd", "data.tar.xz": b"payload"})
    assert corpus._ar_member(archive, "data.tar.xz") == b"payload"
    with pytest.raises(ValueError, match="not found"):
        corpus._ar_member(archive, "nothing")
    with pytest.raises(ValueError, match="not a Debian package"):
        corpus._ar_member(b"PK\x03\x04", "data.tar.xz")


def test_held_out_split_is_a_function_of_the_path():
    documents = [corpus.Document(f"library/m{i}.rst.txt", "") for i in range(400)]
    held = [d.path for d in documents if d.held_out]
    assert held == [d.path for d in documents if corpus.Document(d.path, "other text").held_out]
    assert 5 <= len(held) <= 40  # about one in twenty


def _tiny(hidden: int, layers: int, vocab: int = 64) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def test_training_and_distillation_run_on_toy_data():
    torch.manual_seed(0)
    tokens = np.tile(np.arange(16, dtype=np.uint16), 200)  # a pattern both models can learn
    held = held_out_windows(tokens, 16, 4)
    target = _tiny(32, 2)
    config = TrainConfig(steps=200, batch_size=8, seq_len=16, learning_rate=1e-2, warmup_steps=10, eval_every=50)
    report = train(target, tokens, held, config, torch.device("cpu"), log=lambda _: None)
    assert report.steps == 200 and report.held_out_loss < 0.5 and report.agreement is None
    target.requires_grad_(False)
    draft = _tiny(16, 1)
    project_embedding(target, draft)
    distilled = train(draft, tokens, held, config, torch.device("cpu"), teacher=target, log=lambda _: None)
    assert np.isfinite(distilled.held_out_loss) and distilled.agreement > 0.9


def test_projected_embedding_keeps_the_target_geometry():
    torch.manual_seed(0)
    target, draft = _tiny(32, 1), _tiny(8, 1)
    project_embedding(target, draft)
    source = target.get_input_embeddings().weight.detach()
    projected = draft.get_input_embeddings().weight.detach()
    # the projection onto the top singular directions keeps most of the energy of the rows
    assert projected.pow(2).sum() > 0.25 * source.pow(2).sum()
    assert projected.shape == (64, 8)
