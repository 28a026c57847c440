"""The Kubernetes manifests as kustomize renders them (`kubectl kustomize`, offline; skipped where kubectl is
absent): the base and the TLS overlay render, every rendered object is valid against the Kubernetes schemas,
and the rendering is what the unit tier checks (tests/unit/test_deploy_files.py applies the overlay itself)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_deploy_files import K8S, K8S_TLS, KUBERNETES_VERSION, LAYOUTS

PART_OF = {"app.kubernetes.io/part-of": "banditspec"}  # base/kustomization.yaml's labels


@pytest.mark.parametrize("layout", ["base", "tls"])
def test_kustomize_renders_what_the_unit_tests_check(layout):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    directory = {"base": K8S, "tls": K8S_TLS}[layout]
    rendered = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    expected = copy.deepcopy(LAYOUTS[layout])
    for doc in expected:
        doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **PART_OF}

    def key(doc):
        return (doc["kind"], doc["metadata"]["name"])

    assert sorted(docs, key=key) == sorted(expected, key=key)
