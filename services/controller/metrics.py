"""Prometheus counters, vLLM-style names with an `arm` label; rates are derived downstream.

acceptance rate  = rate(spec_decode_num_accepted_tokens) / rate(spec_decode_num_draft_tokens)
tokens per round = rate(banditspec_generated_tokens) / rate(spec_decode_num_drafts)
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NUM_DRAFTS = Counter("spec_decode_num_drafts", "Rounds (one draft + one verification)", ["arm"])
NUM_DRAFT_TOKENS = Counter("spec_decode_num_draft_tokens", "Draft tokens proposed", ["arm"])
NUM_ACCEPTED_TOKENS = Counter("spec_decode_num_accepted_tokens", "Draft tokens accepted", ["arm"])
GENERATED_TOKENS = Counter("banditspec_generated_tokens", "Verified tokens emitted", ["arm"])
REQUESTS = Counter("banditspec_requests", "Generation requests by outcome", ["outcome"])
TARGET_RETRIES = Counter("banditspec_target_retries", "Calls to the target retried after UNAVAILABLE")
DRAFTER_FAILURES = Counter(
    "banditspec_drafter_failures", "Drafters that left a request (failed, too slow, or rejected)", ["service"]
)
DRAFT_SERVICE_WITHDRAWN = Gauge(
    "banditspec_draft_service_withdrawn", "1 while a draft service's circuit breaker withdraws its arms", ["service"]
)
ROUND_SECONDS = Histogram(
    "banditspec_round_seconds",
    "Wall time of a round, RPCs included",
    ["arm"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.4, 1.0, 3.0),
)


def record_round(arm: str, drafted: int, accepted: int, emitted: int, seconds: float) -> None:
    NUM_DRAFTS.labels(arm).inc()
    NUM_DRAFT_TOKENS.labels(arm).inc(drafted)
    NUM_ACCEPTED_TOKENS.labels(arm).inc(accepted)
    GENERATED_TOKENS.labels(arm).inc(emitted)
    ROUND_SECONDS.labels(arm).observe(seconds)
