"""A Node.js client built from the proto alone (clients/node) calls the controller; run where `node` and
`npm` are installed. Its greedy output is the target's, as the Python client's is."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import reference_greedy

from banditspec.v1 import generation_pb2

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
PROMPT = [3, 4, 5, 3, 4, 5, 6]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node and npm are not installed"
)


@pytest.fixture(scope="module")
def node_client():
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        # The versions and digests package-lock.json pins, from the registry npm is configured with.
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci failed (no registry?): {done.stderr.strip()[-300:]}")
    return CLIENT / "generate.js"


def test_the_node_client_gets_the_targets_greedy_output(node_client, stack, generation_stub, target_model):
    done = subprocess.run(
        ["node", str(node_client), "--address", stack.address("controller"), "--token-ids", ",".join(map(str, PROMPT)),
         "--max-new-tokens", "12"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    python = generation_stub.Generate(
        generation_pb2.GenerateRequest(token_ids=generation_pb2.TokenIds(ids=PROMPT), max_new_tokens=12), timeout=60
    )
    assert response["token_ids"] == list(python.token_ids) == reference_greedy(target_model, PROMPT, 12)
    assert response["stats"]["generated_tokens"] == 12 or response["finish_reason"] != "FINISH_REASON_LENGTH"


def test_the_node_client_reports_a_bad_request(node_client, stack):
    done = subprocess.run(
        ["node", str(node_client), "--address", stack.address("controller"), "--token-ids", "3,4", "--max-new-tokens",
         "100000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("INVALID_ARGUMENT")
