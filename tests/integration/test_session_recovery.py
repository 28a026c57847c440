"""Sessions lost behind a controller's back are rebuilt from the full context, output unchanged.

Target and draft service here hold one session each and serve two controllers (as when several
controllers share services): each controller admits one request at a time, so with both busy every
round may find its session evicted by the other controller's request, and the controllers keep
reopening them (FAILED_PRECONDITION + banditspec-reason=SESSION_LOST). Greedy output must still be the
target's, and sampled output must still follow the target's distribution.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import RPC_TIMEOUT, TWO_GAMMAS, local_stack, reference_greedy
from sampling_stats import rank_counts

from banditspec.cli.launcher import wait_healthy
from banditspec.sampling import SamplingParams
from banditspec.v1 import generation_pb2, generation_pb2_grpc

PROMPTS = [[3, 4, 5, 6, 3, 4, 5], [7, 8, 9, 7, 8], [10, 11, 12, 13, 10, 11], [20, 21, 22, 20, 21]]
MAX_NEW = 24
SAMPLED_REQUESTS = 240
SIGNIFICANCE = 1e-3


@pytest.fixture(scope="module")
def two_controllers(tiny_models, tmp_path_factory):
    """The stack's controller and a second one on the same one-session target and draft service."""
    drafters = ["pld=prompt_lookup:1-3", f"near=model:{tiny_models.near}"]
    with local_stack(
        tmp_path_factory, "one-session", tiny_models.target, drafters, TWO_GAMMAS, service_args=["--max-sessions", "1"]
    ) as stack:
        workdir = tmp_path_factory.mktemp("second-controller")
        ready = workdir / "ready.json"
        log_path = workdir / "controller.log"
        command = [
            *(sys.executable, "-m", "banditspec.cli", "serve-controller"),
            *("--target", stack.address("target"), "--draft", f"local={stack.address('draft')}"),
            *("--port", "0", "--ready-file", str(ready), *TWO_GAMMAS),
        ]
        with open(log_path, "w") as log_file:
            second = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + 120
            while not ready.exists():
                assert second.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            address = json.loads(ready.read_text())["address"]
            wait_healthy(address, timeout=30)
            logs = [stack.log_dir / "controller.log", log_path]
            yield [stack.address("controller"), address], logs
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(30)
            except subprocess.TimeoutExpired:
                second.kill()


def reopens(logs) -> int:
    return sum(path.read_text().count("reopening with the full context") for path in logs)


def run_on_both(addresses, requests: list[generation_pb2.GenerateRequest]) -> list[generation_pb2.GenerateResponse]:
    """Requests alternate between the controllers, several in flight on each."""
    channels = [grpc.insecure_channel(address) for address in addresses]
    stubs = [generation_pb2_grpc.GenerationServiceStub(channel) for channel in channels]
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(stubs[i % 2].Generate, request, timeout=RPC_TIMEOUT) for i, request in enumerate(requests)
            ]
            return [future.result() for future in futures]
    finally:
        for channel in channels:
            channel.close()


def test_concurrent_requests_survive_evictions(two_controllers, target_model):
    addresses, logs = two_controllers
    before = reopens(logs)
    requests = [
        generation_pb2.GenerateRequest(
            token_ids=generation_pb2.TokenIds(ids=prompt), max_new_tokens=MAX_NEW, policy=generation_pb2.POLICY_EXP3SPEC
        )
        for prompt in PROMPTS * 2
    ]
    outputs = run_on_both(addresses, requests)
    for prompt, output in zip(PROMPTS * 2, outputs, strict=True):
        assert list(output.token_ids) == reference_greedy(target_model, prompt, MAX_NEW)
    assert reopens(logs) > before, "no session was evicted: the test proves nothing"


def test_sampled_outputs_survive_evictions(two_controllers, target_model):
    """Reopened sessions keep their sampling state right: rounds after a reopen follow the target too."""
    addresses, logs = two_controllers
    before = reopens(logs)
    params = SamplingParams(temperature=1.0, top_k=5)
    prompt = PROMPTS[0]
    requests = [
        generation_pb2.GenerateRequest(
            token_ids=generation_pb2.TokenIds(ids=prompt),
            max_new_tokens=6,
            temperature=params.temperature,
            top_k=params.top_k,
            seed=seed,
            policy=generation_pb2.POLICY_EXP3SPEC,
            allowed_arms=["local/near/4", "local/pld/3"],
        )
        for seed in range(SAMPLED_REQUESTS)
    ]
    outputs = [list(response.token_ids) for response in run_on_both(addresses, requests)]
    assert reopens(logs) - before > SAMPLED_REQUESTS // 10
    counts = rank_counts(target_model, prompt, outputs, params)
    pvalue = counts.pvalue()
    assert pvalue > SIGNIFICANCE, f"p = {pvalue:.2e}; by rank observed {counts.observed}, expected {counts.expected}"
