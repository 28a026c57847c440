"""Every service serves Prometheus metrics; scraped while a request streams and after it, they count it."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest
from conftest import RPC_TIMEOUT, TWO_GAMMAS, local_stack
from prometheus_client.parser import text_string_to_metric_families

from banditspec.channels import open_channel
from banditspec.v1 import generation_pb2, generation_pb2_grpc

PROMPT = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_stack(tiny_models, tmp_path_factory):
    ports = {name: free_port() for name in ("target", "draft", "controller")}
    drafters = ["pld=prompt_lookup:1-3:fixed", f"near=model:{tiny_models.near}^4"]
    with local_stack(
        tmp_path_factory,
        "metrics",
        tiny_models.target,
        drafters,
        controller_args=["--metrics-port", str(ports["controller"]), "--warm-start", "off", *TWO_GAMMAS],
        target_args=("--verify-padding", "off", "--metrics-port", str(ports["target"])),
        draft_args=("--metrics-port", str(ports["draft"])),
    ) as stack:
        yield stack, ports


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name: (labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(value for have, value in samples.get(name, []) if all(have.get(k) == v for k, v in labels.items()))


def test_every_service_is_scraped_during_and_after_a_request(metrics_stack):
    stack, ports = metrics_stack
    before = {name: scrape(port) for name, port in ports.items()}
    during: dict[str, dict] = {}
    first_chunk = threading.Event()

    def stream() -> list[int]:
        with open_channel(stack.address("controller")) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            request = generation_pb2.GenerateRequest(
                token_ids=generation_pb2.TokenIds(ids=PROMPT),
                max_new_tokens=48,
                policy=generation_pb2.POLICY_UCBSPEC,
                allowed_arms=["local/pld/3", "local/near/4"],
            )
            ids = []
            for chunk in stub.GenerateStream(request, timeout=RPC_TIMEOUT):
                if chunk.HasField("round"):
                    ids += list(chunk.round.token_ids)
                    if not first_chunk.is_set():
                        during.update({name: scrape(port) for name, port in ports.items()})
                        first_chunk.set()
            return ids

    ids = stream()
    assert ids and first_chunk.is_set()
    after = {name: scrape(port) for name, port in ports.items()}

    # The scrape during the request already sees the target's forwards and a live session.
    assert total(during["target"], "banditspec_target_forward_seconds_count") > total(
        before["target"], "banditspec_target_forward_seconds_count"
    )
    assert total(during["target"], "banditspec_target_sessions") >= 1
    assert total(during["draft"], "banditspec_draft_sessions") >= 1

    # Target: every forward observed, with its rows and tokens; sessions and evictions exported.
    forwards = total(after["target"], "banditspec_target_forward_seconds_count")
    assert forwards > total(before["target"], "banditspec_target_forward_seconds_count")
    assert total(after["target"], "banditspec_target_batch_rows_count") == forwards
    assert total(after["target"], "banditspec_target_batch_tokens_sum") >= forwards
    assert "banditspec_target_evictions_total" in after["target"]

    # Draft service: proposals per drafter; the model drafter's batches; its lookahead hits.
    for drafter in ("pld", "near"):
        assert total(after["draft"], "banditspec_draft_proposal_seconds_count", drafter=drafter) > 0
    assert total(after["draft"], "banditspec_draft_batch_proposals_count", drafter="near") > 0
    assert "banditspec_draft_lookahead_hits_total" in after["draft"]

    # Controller: per arm, split into labels; accepted tokens by position add up to the accepted ones.
    controller = after["controller"]
    arm = {"draft_service": "local", "drafter": "pld", "gamma": "3"}
    drafts = total(controller, "spec_decode_num_drafts_total", **arm)
    assert drafts > 0
    assert total(controller, "spec_decode_num_draft_tokens_total", **arm) > 0
    accepted = sum(total(controller, "spec_decode_num_accepted_tokens_total", drafter=d) for d in ("pld", "near"))
    by_position = total(controller, "spec_decode_num_accepted_tokens_per_pos_total")
    assert by_position == accepted
    assert total(controller, "spec_decode_num_accepted_tokens_per_pos_total", position="0") >= total(
        controller, "spec_decode_num_accepted_tokens_per_pos_total", position="1"
    )
    assert total(controller, "banditspec_generated_tokens_total") >= len(ids)
    assert total(controller, "banditspec_round_seconds_count", **arm) == drafts
    assert total(controller, "banditspec_time_to_first_token_seconds_count") >= 1
    assert total(controller, "banditspec_request_seconds_count") >= 1
    assert total(controller, "banditspec_requests_total") >= 1
    slowdowns = {labels["part"]: value for labels, value in controller["banditspec_forward_slowdown"]}
    assert set(slowdowns) == {"fixed", "tokens"} and all(0.2 <= value <= 5 for value in slowdowns.values())
    assert {labels["finish_reason"] for labels, _ in controller["banditspec_requests_total"]} <= {
        "length",
        "eos",
        "stop",
        "context",
    }
