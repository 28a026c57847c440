"""`banditspec loadtest`: N concurrent streaming clients against a local stack, side by side with
transformers' batched baselines, for N = 1, 2, 4, 8, 16.

Per N, N client threads stream the same requests of the workload (greedy), one at a time each: its first
`--prompts-per-phase` prompts, kinds taking turns (by default the largest N × `--requests-per-client`;
0: each N its own N × `--requests-per-client`). Clients take the next prompt from one queue when a request
ends (`--dispatch queue`, as vLLM's max-concurrency benchmark does; `per-client` fixes each client's
prompts, so clients whose prompts go fast leave their rows empty for the rest of the phase). The phase
reports aggregate tokens/s (all tokens ÷ the phase's wall time, and the same until its first client ran
out of requests), time to first token, request latency p50/p99, the arms' pull shares and the mean γ
pulled, and each service's resident memory. The baselines run the same prompts in-process, N at a time:
`generate()` on a left-padded static batch (plain decoding), and transformers' continuous batching
(`generate_batch`), each checked against the target's own greedy output. Every stack output is checked
against it too: batching must stay lossless.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import grpc
import torch

from banditspec.bench.config import FAMILIES, TARGET_ARGS
from banditspec.bench.forwards import ForwardTotals, free_port, phase_forwards, scrape, scrape_slowdown
from banditspec.bench.machine import StealMeter, machine
from banditspec.bench.workload import Prompt, interleaved_by_kind, load_prompts, render_prompts
from banditspec.channels import open_channel
from banditspec.cli.launcher import LocalStack
from banditspec.model_paths import resolve_model_path
from banditspec.policy_names import DEFAULT_POLICY, POLICY_WIRE_VALUES
from banditspec.priority import lower_thread_priority
from banditspec.target_measurements import start_up_batches
from banditspec.tokens import common_prefix_length
from banditspec.v1 import generation_pb2, generation_pb2_grpc, target_pb2, target_pb2_grpc

DEFAULT_CLIENTS = (1, 2, 4, 8, 16)
CLIENT_NICE = 10  # the client threads' priority below the harness's (run_clients)
DISPATCH = ("queue", "per-client")  # how a phase's prompts reach its clients (run_clients)


@dataclass
class Request:
    """One client request as the client saw it."""

    prompt: str
    tokens: list[int]
    seconds: float
    first_token_seconds: float
    arms: dict[str, int] = field(default_factory=dict)  # arm → pulls
    rewards: dict[str, float] = field(default_factory=dict)  # arm → mean reward (tokens/s) of its pulls
    error: str = ""
    client: int = 0
    started: float = 0.0  # seconds from the phase's start (run_clients)
    rounds: list[tuple[float, int]] = field(default_factory=list)  # (seconds from the phase's start, tokens) per round


@dataclass
class Phase:
    """One method at one N."""

    method: str
    clients: int
    requests: int
    tokens: int
    seconds: float
    tokens_per_second: float
    ttft_p50: float | None = None
    latency_p50: float | None = None
    latency_p99: float | None = None
    arm_shares: dict[str, float] = field(default_factory=dict)
    arm_rewards: dict[str, float] = field(default_factory=dict)  # what the bandit measured: tokens/s per round
    mean_gamma: float | None = None
    errors: int = 0
    mismatches: int = 0  # outputs that differ from the target's own greedy output
    first_mismatch: dict | None = None
    rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per service, during the phase
    note: str = ""
    steal: float | None = None  # share of CPU time the hypervisor took during the phase (machine.cpu_ticks)
    target: dict[str, float] = field(default_factory=dict)  # the target's forwards (bench.forwards.phase_forwards)
    slowdown: dict[str, float] = field(default_factory=dict)  # the controller's forward model at the phase's end
    sitting: int = 0  # which pass over the N's methods (--sittings)
    # Until the first client ran out of requests (`all_busy`): the phase without its drain, when rows leave
    # one by one as requests end on different rounds.
    all_busy_seconds: float = 0.0
    all_busy_tokens: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def gamma_of(arm: str) -> int:
    """The γ in an arm's name (SERVICE/DRAFTER/γ, or γtN for a tree of N tokens); 0 for target-only."""
    return 0 if arm == "target-only" else int(arm.rsplit("/", 1)[1].split("t")[0])


# --- the stack ----------------------------------------------------------------------------------------------


def stream_request(stub, prompt: Prompt, max_new_tokens: int, policy: str, arms: list[str], timeout: float) -> Request:
    request = generation_pb2.GenerateRequest(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    request.policy = POLICY_WIRE_VALUES[policy]  # type: ignore[assignment]  # an enum int
    request.allowed_arms.extend(arms)
    request.token_ids.ids.extend(prompt.ids)
    start = time.perf_counter()
    first = None
    rounds: list[tuple[float, int]] = []
    try:
        for message in stub.GenerateStream(request, timeout=timeout):
            if message.HasField("round"):
                now = time.perf_counter()
                rounds.append((now, len(message.round.token_ids)))
                if first is None and message.round.token_ids:
                    first = now - start
                continue
            final = message.final
            pulls = {arm.arm: arm.pulls for arm in final.stats.arms if arm.pulls}
            rewards = {arm.arm: arm.mean_reward for arm in final.stats.arms if arm.pulls}
            seconds = time.perf_counter() - start
            tokens = list(final.token_ids)
            return Request(prompt.id, tokens, seconds, first or seconds, pulls, rewards, started=start, rounds=rounds)
    except grpc.RpcError as error:
        failed = f"{error.code().name}: {error.details()}"
        return Request(prompt.id, [], time.perf_counter() - start, 0.0, error=failed, started=start)
    failed = "the stream ended without a result"
    return Request(prompt.id, [], time.perf_counter() - start, 0.0, error=failed, started=start)


def batches_of(assignments: list[list[Prompt]]) -> list[list[Prompt]]:
    """Every client's first prompt, then every client's second, ...: the padded baseline's batches."""
    rounds = max((len(prompts) for prompts in assignments), default=0)
    return [[prompts[r] for prompts in assignments if r < len(prompts)] for r in range(rounds)]


def queue_order(assignments: list[list[Prompt]]) -> list[Prompt]:
    """The order the stack's clients take prompts in from one queue: the padded baseline's batches in turn."""
    return [prompt for batch in batches_of(assignments) for prompt in batch]


def _filled(prompts: list[Prompt]) -> queue.SimpleQueue[Prompt]:
    waiting: queue.SimpleQueue[Prompt] = queue.SimpleQueue()
    for prompt in prompts:
        waiting.put(prompt)
    return waiting


def run_clients(
    address: str,
    assignments: list[list[Prompt]],
    max_new_tokens: int,
    policy: str,
    arms: list[str],
    timeout: float,
    dispatch: str = "queue",
) -> tuple[list[Request], float]:
    """One thread per client, each with its own channel, streaming one request at a time. `queue`: every
    client takes the next of the phase's prompts when its request ends (the padded baseline's batch order),
    so the clients stay busy until the queue is empty; `per-client`: client c streams assignments[c]."""
    if dispatch not in DISPATCH:
        raise ValueError(f"dispatch must be one of {', '.join(DISPATCH)}, got {dispatch!r}")
    results: list[list[Request]] = [[] for _ in assignments]
    start_line = threading.Barrier(len(assignments) + 1)
    shared = _filled(queue_order(assignments))
    queues = [shared if dispatch == "queue" else _filled(prompts) for prompts in assignments]

    def client(index: int) -> None:
        # The clients stand in for remote users: on this machine they would take cores from the target's
        # forwards (banditspec.priority), as the controller would at the target's own priority.
        lower_thread_priority(CLIENT_NICE)
        with open_channel(address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            start_line.wait()
            while True:
                try:
                    prompt = queues[index].get_nowait()
                except queue.Empty:
                    return
                request = stream_request(stub, prompt, max_new_tokens, policy, arms, timeout)
                request.client = index
                results[index].append(request)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(assignments))]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    requests = [r for rs in results for r in rs]
    for r in requests:  # times from the phase's start
        r.started -= start
        r.rounds = [(at - start, tokens) for at, tokens in r.rounds]
    return requests, seconds


def all_busy(requests: list[Request]) -> tuple[float, int]:
    """Seconds from the phase's start until the first client ran out of requests, and the tokens its clients
    were streamed by then: the phase before its drain, in which rows leave the target's forwards one by one
    as requests end on different rounds. Target-only's fixed-length requests end together and drafting's do
    not, so the drain weighs on drafting arms only (RESULTS 49)."""
    ends: dict[int, float] = {}
    for r in requests:
        ends[r.client] = max(ends.get(r.client, 0.0), r.started + r.seconds)
    if not ends:
        return 0.0, 0
    until = min(ends.values())  # a client whose requests failed ran out too; their tokens are not the phase's
    return until, sum(tokens for r in requests if not r.error for at, tokens in r.rounds if at <= until)


def stack_phase(method: str, clients: int, requests: list[Request], seconds: float, references: dict) -> Phase:
    done = [r for r in requests if not r.error]
    tokens = sum(len(r.tokens) for r in done)
    pulls: dict[str, int] = {}
    reward_sums: dict[str, float] = {}
    for r in done:
        for arm, count in r.arms.items():
            pulls[arm] = pulls.get(arm, 0) + count
            reward_sums[arm] = reward_sums.get(arm, 0.0) + r.rewards.get(arm, 0.0) * count
    total_pulls = sum(pulls.values())
    phase = Phase(
        method,
        clients,
        len(requests),
        tokens,
        seconds,
        tokens / seconds if seconds else 0.0,
        errors=len(requests) - len(done),
    )
    phase.all_busy_seconds, phase.all_busy_tokens = all_busy(requests)
    if done:
        latencies = [r.seconds for r in done]
        phase.ttft_p50 = statistics.median(r.first_token_seconds for r in done)
        phase.latency_p50, phase.latency_p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    if total_pulls:
        phase.arm_shares = {arm: pulls[arm] / total_pulls for arm in sorted(pulls)}
        phase.arm_rewards = {arm: reward_sums[arm] / pulls[arm] for arm in sorted(pulls)}
        phase.mean_gamma = sum(gamma_of(arm) * n for arm, n in pulls.items()) / total_pulls
    check(phase, [(r.prompt, r.tokens) for r in done], references)
    return phase


def check(phase: Phase, outputs: list[tuple[str, list[int]]], references: dict[str, list[int]]) -> None:
    for prompt, tokens in outputs:
        expected = references.get(prompt)
        if expected is not None and tokens != expected:
            phase.mismatches += 1
            if phase.first_mismatch is None:
                phase.first_mismatch = {"prompt": prompt, "at_token": common_prefix_length(tokens, expected)}


def resident_mib(stack: LocalStack) -> dict[str, float]:
    """Each service's peak resident memory so far (VmHWM), MiB."""
    out = {}
    for service in stack.services:
        for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out[service.name] = int(line.split()[1]) / 1024
    return out


def cpu_seconds(stack: LocalStack) -> dict[str, float]:
    """Each service's CPU time so far (user + system), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for service in stack.services:
        fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[service.name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


# --- in-process baselines ---------------------------------------------------------------------------------


@torch.inference_mode()
def padded_generate(model, prompts: list[Prompt], max_new_tokens: int, pad: int, eos: set[int]) -> list[list[int]]:
    """Plain greedy `generate()` on one left-padded batch; each output cut after its first EOS."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p.ids)) + p.ids for p in prompts])
    mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
    )
    return [cut_at_eos(row[width:].tolist(), eos) for row in out]


def cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos:
            return tokens[: index + 1]
    return tokens


def batch_phase(method: str, clients: int, outputs: list[tuple[str, list[int]]], seconds: float, references) -> Phase:
    tokens = sum(len(t) for _, t in outputs)
    phase = Phase(method, clients, len(outputs), tokens, seconds, tokens / seconds if seconds else 0.0)
    check(phase, outputs, references)
    return phase


def run_padded(model, batches: list[list[Prompt]], clients: int, max_new: int, pad: int, eos, references) -> Phase:
    outputs, start = [], time.perf_counter()
    for batch in batches:
        outputs += list(zip([p.id for p in batch], padded_generate(model, batch, max_new, pad, eos), strict=True))
    return batch_phase("generate-padded", clients, outputs, time.perf_counter() - start, references)


def run_continuous(model, prompts: list[Prompt], clients: int, max_new: int, eos, references) -> Phase:
    """transformers' continuous batching over the phase's prompts, at most `clients` at a time."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(eos))
    start = time.perf_counter()
    try:
        results = model.generate_batch([p.ids for p in prompts], generation_config=config, progress_bar=False)
    except Exception as error:  # not every transformers release runs it on a CPU
        return Phase("generate-continuous", clients, len(prompts), 0, 0.0, 0.0, errors=len(prompts), note=repr(error))
    seconds = time.perf_counter() - start
    ordered = [results[key] for key in sorted(results, key=lambda k: int(k.rsplit("_", 1)[1]))]
    outputs = [(p.id, cut_at_eos(list(r.generated_tokens), eos)) for p, r in zip(prompts, ordered, strict=True)]
    return batch_phase("generate-continuous", clients, outputs, seconds, references)


def metered(run: Callable[..., Phase], *args: Any) -> Phase:
    """A baseline phase with the CPU steal it saw."""
    with StealMeter() as steal:
        phase = run(*args)
    phase.steal = steal.fraction
    return phase


# --- the run ------------------------------------------------------------------------------------------------


def assign(prompts: list[Prompt], clients: int, per_client: int, per_phase: int = 0) -> list[list[Prompt]]:
    """Client c's requests: `per_client` consecutive prompts; or with `per_phase`, the workload's first
    `per_phase` prompts dealt to the clients in turn, so that every N runs the same requests."""
    if per_phase:
        phase = [prompts[i % len(prompts)] for i in range(per_phase)]
        return [phase[c::clients] for c in range(clients)]
    return [[prompts[(c * per_client + r) % len(prompts)] for r in range(per_client)] for c in range(clients)]


def like_for_like(counts: list[int], per_client: int, per_phase: int | None) -> int:
    """Prompts per phase: as asked, else the largest N's share, streamed at every N. Each N taking its own
    N × per-client prompts makes one client's phase a few prompts of one or two kinds, and tok/s at N ÷ at
    one client a ratio of different requests (RESULTS 49)."""
    if per_phase is not None:
        return per_phase
    return max(counts, default=1) * per_client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="banditspec loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="default")
    parser.add_argument("--clients", default=",".join(map(str, DEFAULT_CLIENTS)), help="comma-separated N values")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument(
        "--prompts-per-phase",
        type=int,
        default=None,
        help="every N's phases stream these many prompts (the workload's first, kinds mixed), so that tok/s at "
        "N and at 1 measure the same requests; default: the largest N × --requests-per-client; 0: each N "
        "streams N × --requests-per-client",
    )
    parser.add_argument(
        "--dispatch",
        choices=DISPATCH,
        default="queue",
        help="queue: clients take the phase's prompts from one queue (as a busy server's clients would); "
        "per-client: each client streams its own, and one whose prompts go fast idles for the rest of the phase",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICY_WIRE_VALUES))
    parser.add_argument("--fixed-at", default="8", help="N values at which every arm also runs fixed ('' for none)")
    parser.add_argument("--baselines", default="padded,continuous", help="comma-separated: padded, continuous")
    parser.add_argument(
        "--continuous-at", default="1,8", help="N values for generate_batch ('' for all): it is slow on a CPU"
    )
    parser.add_argument("--drafter", action="append", help="drafter specs (default: the family's)")
    parser.add_argument(
        "--model-free-gammas",
        default="2,6",
        help="the controller's γ values: a short and a long one let the bandit choose",
    )
    parser.add_argument(
        "--warm-up-tokens",
        type=int,
        default=16,
        help="before each N's phases, every client streams one unmeasured request of this many tokens, and "
        "padded generate() runs one unmeasured batch of N as long (0: neither): the first phase at an N "
        "otherwise also pays for filling N sessions' buffers and caches, or a first batch that wide",
    )
    parser.add_argument(
        "--sittings",
        type=int,
        default=1,
        help="passes over each N's methods, every other one in reverse order: this machine's speed drifts "
        "between phases by more than the arms differ, and alternating shows every method the same drift",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--controller-arg", action="append", default=[], help="passed to serve-controller")
    parser.add_argument(
        "--target-arg", action="append", default=[], help="passed to serve-target (e.g. --target-arg=--threads=2)"
    )
    parser.add_argument(
        "--model-free-in-service",
        action="store_true",
        help="model-free drafters in the draft service, not the controller",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the reference outputs (and the check)")
    parser.add_argument("--out", default="results/loadtest")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    family = FAMILIES[args.family]
    model_path = resolve_model_path(family.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    counts = [int(n) for n in args.clients.split(",") if n]
    fixed_at = {int(n) for n in args.fixed_at.split(",") if n}
    baselines = {b for b in args.baselines.split(",") if b}
    continuous_at = {int(n) for n in args.continuous_at.split(",") if n} or set(counts)
    # A phase takes the workload's first prompts: mixed across kinds, as the workload is (in file order,
    # 8 clients' 16 took only the creative and explanation prompts, whose drafts are rarely accepted).
    prompts = interleaved_by_kind(load_prompts(family.prompts))
    render_prompts(prompts, tokenizer)
    per_phase = like_for_like(counts, args.requests_per_client, args.prompts_per_phase)
    used = {p.id: p for n in counts for ps in assign(prompts, n, args.requests_per_client, per_phase) for p in ps}

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, args.dtype)).eval()
    eos = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    references: dict[str, list[int]] = {}
    if not args.no_check:
        print(f"references: greedy generate() of {len(used)} prompts, one at a time", flush=True)
        references = {pid: padded_generate(model, [p], args.max_new_tokens, pad, eos)[0] for pid, p in used.items()}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases: list[Phase] = []
    warm_ups: dict[int, dict[str, int]] = {}  # N → the unmeasured requests before its phases
    device_args = ["--dtype", args.dtype, "--device", args.device]
    metrics_port, metrics_args = _metrics_port(args.target_arg)  # how full and how long its forwards were
    controller_metrics_port, controller_metrics_args = _metrics_port(args.controller_arg)  # its slow-downs
    measured_machine = machine(args.device)  # the commit that runs, not the one checked out at the end
    with LocalStack(
        model=str(model_path),
        drafters=args.drafter or list(family.drafters),
        controller_port=0,
        extra_target_args=[*TARGET_ARGS, *device_args, *metrics_args, *args.target_arg],
        extra_draft_args=device_args,
        extra_controller_args=[
            *(["--model-free-gammas", args.model_free_gammas] if args.model_free_gammas else []),
            *controller_metrics_args,
            *args.controller_arg,
        ],
        log_dir=out / "logs",
        model_free_in_controller=not args.model_free_in_service,
    ) as stack:
        address = stack.address("controller")
        with open_channel(address) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            arms = [arm.name for arm in stub.ListArms(generation_pb2.ListArmsRequest(), timeout=30).arms]
            stream_request(stub, prompts[0], 8, args.policy, [], args.timeout)  # warm-up
        forward_ms = target_forward_ms(stack.address("target"))
        for clients in counts:
            assignments = assign(prompts, clients, args.requests_per_client, per_phase)
            if args.warm_up_tokens > 0:
                warm_up = [[prompts[-1 - c % len(prompts)]] for c in range(clients)]  # the workload's last prompts
                done, _ = run_clients(
                    address, warm_up, args.warm_up_tokens, args.policy, [], args.timeout, "per-client"
                )
                warm_ups[clients] = {"requests": len(done), "errors": sum(1 for r in done if r.error)}
            methods = [(args.policy, [])] + ([("fixed:" + a, [a]) for a in arms] if clients in fixed_at else [])
            for sitting in range(args.sittings):
                for method, allowed in methods if sitting % 2 == 0 else methods[::-1]:
                    policy = "fixed" if allowed else args.policy
                    before = _scrape(metrics_port)
                    cpu_before = cpu_seconds(stack)
                    with StealMeter() as steal:
                        requests, seconds = run_clients(
                            address, assignments, args.max_new_tokens, policy, allowed, args.timeout, args.dispatch
                        )
                    after = _scrape(metrics_port)
                    phase = stack_phase(method, clients, requests, seconds, references)
                    phase.steal, phase.sitting = steal.fraction, sitting
                    if before is not None and after is not None:
                        phase.target = phase_forwards(before, after, seconds)
                    phase.slowdown = _scrape_slowdown(controller_metrics_port)
                    phase.rss_mib = resident_mib(stack)
                    phase.cpu_seconds = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(stack).items()}
                    phases.append(phase)
                    print(_line(phase), flush=True)
                batch_prompts = [p for ps in assignments for p in ps]
                if "padded" in baselines:
                    batches = batches_of(assignments)
                    if sitting == 0 and args.warm_up_tokens > 0:  # as the stack's phases: a first batch this wide
                        padded_generate(model, batches[0], args.warm_up_tokens, pad, eos)  # runs slow (RESULTS 40)
                    phases.append(
                        metered(run_padded, model, batches, clients, args.max_new_tokens, pad, eos, references)
                    )
                    phases[-1].sitting = sitting
                    print(_line(phases[-1]), flush=True)
                if "continuous" in baselines and clients in continuous_at:
                    phases.append(
                        metered(run_continuous, model, batch_prompts, clients, args.max_new_tokens, eos, references)
                    )
                    phases[-1].sitting = sitting
                    print(_line(phases[-1]), flush=True)

    document = {
        "machine": measured_machine,
        "config": vars(args) | {"prompts_per_phase": per_phase, "arms": arms, "prompts": len(prompts)},
        "phases": [asdict(p) for p in phases],
        "target_forward_ms": forward_ms,
        "warm_ups": warm_ups,
    }
    (out / "loadtest.json").write_text(json.dumps(document, indent=1))
    (out / "loadtest.md").write_text(report(document))
    plot(phases, args.policy, out / "loadtest.png")
    print(f"wrote {out / 'loadtest.json'}, {out / 'loadtest.md'}, {out / 'loadtest.png'}")
    bad = [p for p in phases if p.method == args.policy or p.method.startswith("fixed:")]
    return 1 if any(p.mismatches or p.errors for p in bad) else 0


def target_forward_ms(address: str) -> dict[str, float]:
    """The target's start-up measurements: one row of 1-16 tokens ("1".."16"), and batched forwards as
    rows × tokens per row ("8×1", "8×2"… "16×8"): what a draft token adds to a forward, alone and beside
    others, which is what decides whether shorter drafts pay under load."""
    with open_channel(address) as channel:
        info = target_pb2_grpc.TargetServiceStub(channel).Info(target_pb2.TargetInfoRequest(), timeout=30)
    out = {str(k): 1e3 * s for k, s in enumerate(info.forward_seconds, start=1)}
    for (rows, tokens), seconds in start_up_batches(info).items():
        out[f"{rows}×{tokens // rows}"] = 1e3 * seconds
    return out


def _flag_int(args: list[str], flag: str) -> int | None:
    """The value of `--flag=N` or `--flag N` among pass-through arguments, if given."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return int(arg.split("=", 1)[1])
        if arg == flag and index + 1 < len(args):
            return int(args[index + 1])
    return None


def _metrics_port(pass_through: list[str]) -> tuple[int, list[str]]:
    """A service's metrics port: the one its pass-through arguments give, else a free one, with the flag."""
    given = _flag_int(pass_through, "--metrics-port")
    return (given, []) if given else (port := free_port(), [f"--metrics-port={port}"])


def _scrape_slowdown(port: int) -> dict[str, float]:
    """The controller's forward slow-downs; empty if its metrics cannot be read."""
    try:
        return scrape_slowdown(port)
    except OSError:
        return {}


def _scrape(port: int) -> ForwardTotals | None:
    """The target's forward totals; None if its metrics cannot be read (the phase then reports none)."""
    try:
        return scrape(port)
    except OSError as error:
        print(f"target metrics on port {port} unreadable: {error}", flush=True)
        return None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _line(p: Phase) -> str:
    extra = f" p50 {p.latency_p50:.2f}s p99 {p.latency_p99:.2f}s γ̄ {p.mean_gamma:.2f}" if p.latency_p50 else ""
    return (
        f"N={p.clients:<3} {_label(p):<27} {p.tokens_per_second:7.1f} tok/s{extra}"
        f" mismatches {p.mismatches} errors {p.errors} {p.note}"
    )


def _label(p: Phase, sittings: int = 2) -> str:
    """The method, and which sitting when there were several."""
    return f"{p.method} #{p.sitting + 1}" if sittings > 1 else p.method


def _sitting(sitting: int, sittings: int) -> str:
    return f" #{sitting + 1}" if sittings > 1 else ""


def _sittings_intro(phases: list[Phase], policy: str, sittings: int) -> list[str]:
    if sittings <= 1:
        return []
    intro = (
        f"Every N's methods ran in {sittings} sittings, every other one in reverse order. The target shared "
        "prompt prefixes among open sessions only (`--retained-prefixes 0`), so no phase found the prompts an "
        "earlier one sent. Pooled:"
    )
    return [intro, "", *sittings_table(phases, policy), "", "Each sitting:", ""]


def _pooled(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds else 0.0


def rate(group: list[Phase]) -> float:
    """Phases pooled: all their tokens ÷ all their seconds (0 for none)."""
    return _pooled(sum(p.tokens for p in group), sum(p.seconds for p in group))


def all_busy_rate(group: list[Phase]) -> float:
    """Phases pooled until each one's first client ran out of requests (`all_busy`); 0 where not measured."""
    return _pooled(sum(p.all_busy_tokens for p in group), sum(p.all_busy_seconds for p in group))


def sittings_table(phases: list[Phase], policy: str) -> list[str]:
    """Per N and method, every sitting's tok/s and all of them pooled (all tokens ÷ all seconds), against
    padded generate() and the best fixed arm pooled the same way; the policy also against its own mix, the
    fixed arms' pooled tok/s weighted by its pull shares (what playing those arms in those shares would make
    if the arms did not interact: below 1, its rows cost each other more than the fixed arms' rows do, or
    its own work slows the stack), and against the best fixed arm chosen out of sample (`_held_out_best`)."""
    pooled: dict[tuple[int, str], list[Phase]] = {}
    for p in phases:
        pooled.setdefault((p.clients, p.method), []).append(p)

    lines = [
        "| N | method | tok/s per sitting | pooled tok/s | ÷ padded generate() | ÷ best fixed arm "
        "| ÷ best fixed arm, chosen on the other sittings | ÷ its mix | tok/s while every client was busy "
        "| ÷ best fixed arm, the same |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients in sorted({n for n, _ in pooled}):
        fixed_groups = {m: g for (n, m), g in pooled.items() if n == clients and m.startswith("fixed:")}
        fixed = {m: rate(g) for m, g in fixed_groups.items()}
        best = max(fixed.values(), default=0.0)
        best_busy = max(map(all_busy_rate, fixed_groups.values()), default=0.0)
        padded = rate(pooled.get((clients, "generate-padded"), []))
        for (n, method), group in pooled.items():
            if n != clients:
                continue
            value = rate(group)
            each = ", ".join(f"{p.tokens_per_second:.1f}" for p in sorted(group, key=lambda p: p.sitting))
            to_padded = f"{value / padded:.2f}" if padded else ""
            to_best = f"{value / best:.2f}" if best and (method == policy or method.startswith("fixed:")) else ""
            mix = _mix(group, fixed) if method == policy else None
            to_mix = f"{value / mix:.2f}" if mix else ""
            held_out = _held_out_best([p for p in phases if p.clients == clients]) if method == policy else None
            to_held_out = f"{value / held_out:.2f}" if held_out else ""
            busy = all_busy_rate(group)
            busy_cell = f"{busy:.1f}" if busy else ""
            to_best_busy = f"{busy / best_busy:.2f}" if busy and best_busy and to_best else ""
            lines.append(
                f"| {clients} | {method} | {each} | {value:.1f} | {to_padded} | {to_best} | {to_held_out} | {to_mix} "
                f"| {busy_cell} | {to_best_busy} |"
            )
    return lines


def _held_out_best(phases: list[Phase]) -> float | None:
    """The best fixed arm's tok/s, chosen without the sitting that measures it: for each sitting, the fixed arm
    fastest over the other sittings, as that sitting measured it; pooled. The best of several arms' pooled
    rates is the best arm's rate plus the luck of whichever arm drew most from the machine's drift, so it
    overstates what a fixed arm would make; this does not. None with fewer than two sittings."""
    fixed = [p for p in phases if p.method.startswith("fixed:")]
    sittings = sorted({p.sitting for p in fixed})
    if len(sittings) < 2:
        return None
    measured: list[Phase] = []
    for sitting in sittings:
        others: dict[str, list[Phase]] = {}
        for p in fixed:
            if p.sitting != sitting:
                others.setdefault(p.method, []).append(p)
        chosen = max(others, key=lambda method: rate(others[method]))
        measured += [p for p in fixed if p.method == chosen and p.sitting == sitting]
    return rate(measured) or None


def _mix(group: list[Phase], fixed: dict[str, float]) -> float | None:
    """The fixed arms' tok/s weighted by the policy's pull shares (mean over its sittings); None unless every
    arm it pulled also ran fixed."""
    shares: dict[str, float] = {}
    for p in group:
        for arm, share in p.arm_shares.items():
            shares[arm] = shares.get(arm, 0.0) + share / len(group)
    pulled = {arm: share for arm, share in shares.items() if share > 0}
    if not pulled or any(f"fixed:{arm}" not in fixed for arm in pulled):
        return None
    return sum(share * fixed[f"fixed:{arm}"] for arm, share in pulled.items()) / sum(pulled.values())


def report(document: dict) -> str:
    phases = [Phase(**p) for p in document["phases"]]
    config = document["config"]
    policy = config["policy"]
    sittings = config.get("sittings", 1)
    base = {(p.clients, p.sitting): p for p in phases if p.method == policy}
    one = base.get((1, 0))
    lines = [
        "# Load test",
        "",
        f"`banditspec loadtest {' '.join(_argv(config))}` at commit {document['machine'].get('git_commit', '?')}: "
        f"{config['family']} family, {config['dtype']} on {config['device']}, {config['max_new_tokens']} new tokens, "
        f"greedy, {_requests(config)}"
        f"{' from one queue' if config.get('dispatch', 'per-client') == 'queue' else ', each client its own'}; "
        f"arms {', '.join(config['arms'])}.",
        "",
        *_sittings_intro(phases, policy, sittings),
        "| N | method | requests | tok/s | tok/s while every client was busy | ÷ N=1 | ÷ padded generate() "
        "| TTFT p50 s | latency p50 s | p99 s | p99 ÷ p50 | mean γ | errors | ≠ target | CPU steal |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    padded = {(p.clients, p.sitting): p for p in phases if p.method == "generate-padded"}
    for p in phases:
        ratio_one = f"{p.tokens_per_second / one.tokens_per_second:.2f}" if one and one.tokens_per_second else ""
        pad = padded.get((p.clients, p.sitting))
        ratio_pad = f"{p.tokens_per_second / pad.tokens_per_second:.2f}" if pad and pad.tokens_per_second else ""
        spread = f"{p.latency_p99 / p.latency_p50:.2f}" if p.latency_p50 and p.latency_p99 else ""
        busy = all_busy_rate([p])
        lines.append(
            f"| {p.clients} | {_label(p, sittings)} | {p.requests} | {p.tokens_per_second:.1f} | "
            f"{f'{busy:.1f}' if busy else ''} | {ratio_one} | {ratio_pad} | "
            f"{_num(p.ttft_p50)} | {_num(p.latency_p50)} | {_num(p.latency_p99)} | {spread} | {_num(p.mean_gamma)} | "
            f"{p.errors} | {p.mismatches} | {'' if p.steal is None else f'{100 * p.steal:.1f}%'} |"
        )
    lines += [
        "",
        "tok/s while every client was busy: the tokens streamed until the phase's first client ran out of "
        "requests, ÷ that time; it leaves out the phase's drain, in which the target's forwards lose their rows "
        "one by one as requests end. CPU steal: the share of CPU time the hypervisor gave these CPUs to other "
        "guests during the phase; a phase with much of it measured the neighbours too.",
    ]
    stack_phases = [p for p in phases if p.target]
    if stack_phases:
        lines += ["", "The target's forwards during each stack phase (from its metrics):", ""]
        lines += [
            "| N | method | forwards | rows per forward | tokens per forward | ms per forward | busy | waiting for rows "
            "| waits ran out | prompt reused | slow-down: fixed / tokens |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for p in stack_phases:
            t, slow = p.target, p.slowdown
            slowdown = f"{slow['fixed']:.2f} / {slow['tokens']:.2f}" if {"fixed", "tokens"} <= set(slow) else ""
            lines.append(
                f"| {p.clients} | {_label(p, sittings)} | {t['forwards']:.0f} | {t['rows_per_forward']:.2f} | "
                f"{t['tokens_per_forward']:.1f} | {t['ms_per_forward']:.1f} | {100 * t['busy']:.0f}% | "
                f"{100 * t.get('gathering', 0.0):.1f}% | {t.get('gathers_expired', 0.0):.0f} | "
                f"{100 * t.get('prompt_reused', 0.0):.0f}% | {slowdown} |"
            )
        lines += [
            "",
            "busy: the share of the phase's wall time the target spent in forwards (prefill included). waiting "
            "for rows: the share it spent holding a forward for sessions whose next round was on its way; waits "
            "ran out: how many of those ended with a session still missing. prompt "
            "reused: the share of the prompt tokens opened whose keys and values came from a prefix the target "
            "held (another session's, or a released one's) instead of a forward. slow-down: how much slower than "
            "at start-up the controller's forward model found batched forwards at the phase's end, their fixed "
            "part (a forward of one token per row) and the tokens drafted beyond it; it prices a drafted token "
            "by the second.",
        ]
    timed = [p for p in phases if p.cpu_seconds]
    if timed:
        services = sorted({s for p in timed for s in p.cpu_seconds})
        lines += ["", "CPU seconds each service used per second of each stack phase (the machine has "
                  f"{document['machine'].get('cpus_usable', '?')} CPUs):", ""]  # fmt: skip
        lines += ["| N | method | " + " | ".join(services) + " |", "|---:|---|" + "---:|" * len(services)]
        for p in timed:
            cells = (f"{p.cpu_seconds.get(s, 0.0) / p.seconds:.2f}" for s in services)
            lines.append(f"| {p.clients} | {_label(p, sittings)} | " + " | ".join(cells) + " |")
    lines += ["", "Arm shares of the adaptive policy (pulls ÷ all pulls):", ""]
    arms = config["arms"]
    lines += ["| N | " + " | ".join(arms) + " |", "|---:|" + "---:|" * len(arms)]
    for (clients, sitting), p in sorted(base.items()):
        lines.append(
            f"| {clients}{_sitting(sitting, sittings)} | "
            + " | ".join(f"{p.arm_shares.get(a, 0.0):.2f}" for a in arms)
            + " |"
        )
    lines += ["", "What the adaptive policy measured per arm (mean verified tokens per second of its rounds):", ""]
    lines += ["| N | " + " | ".join(arms) + " |", "|---:|" + "---:|" * len(arms)]
    for (clients, sitting), p in sorted(base.items()):
        cells = (f"{p.arm_rewards[a]:.1f}" if a in p.arm_rewards else "" for a in arms)
        lines.append(f"| {clients}{_sitting(sitting, sittings)} | " + " | ".join(cells) + " |")
    fixed_rewards = _fixed_rewards(phases)
    if fixed_rewards:
        lines += ["", "What each fixed arm's rounds measured (the same reward, per sitting):", ""]
        lines += ["| N | arm | tokens per second of its rounds |", "|---:|---|---|", *fixed_rewards]
    lines += ["", "Peak resident memory per service (MiB, VmHWM) after each N:", ""]
    services = sorted({s for p in base.values() for s in p.rss_mib})
    lines += ["| N | " + " | ".join(services) + " |", "|---:|" + "---:|" * len(services)]
    for (clients, sitting), p in sorted(base.items()):
        cells = (f"{p.rss_mib.get(s, 0):.0f}" for s in services)
        lines.append(f"| {clients}{_sitting(sitting, sittings)} | " + " | ".join(cells) + " |")
    forward = document.get("target_forward_ms") or {}
    if forward:
        lines += [
            "",
            "The target's forward time (ms, measured at start-up): one row of 1-16 tokens, then rows × tokens per row:",
            "",
        ]
        lines += ["| " + " | ".join(forward) + " |", "|" + "---:|" * len(forward)]
        lines.append("| " + " | ".join(f"{ms:.1f}" for ms in forward.values()) + " |")
    notes = [f"- {p.method} at N={p.clients}: {p.note}" for p in phases if p.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _requests(config: dict) -> str:
    if config.get("prompts_per_phase"):
        return f"the same {config['prompts_per_phase']} prompts at every N"
    return f"{config['requests_per_client']} requests per client"


def _fixed_rewards(phases: list[Phase]) -> list[str]:
    """Table rows: per N and fixed arm, the mean reward its rounds measured in each sitting."""
    measured: dict[tuple[int, str], list[Phase]] = {}
    for p in phases:
        if p.method.startswith("fixed:") and p.arm_rewards:
            measured.setdefault((p.clients, p.method), []).append(p)
    rows = []
    for (clients, method), group in sorted(measured.items()):
        arm = method.removeprefix("fixed:")
        each = ", ".join(
            f"{p.arm_rewards[arm]:.1f}" for p in sorted(group, key=lambda p: p.sitting) if arm in p.arm_rewards
        )
        rows.append(f"| {clients} | {arm} | {each} |")
    return rows


def _argv(config: dict) -> list[str]:
    keys = ("family", "clients", "requests_per_client", "max_new_tokens", "dtype", "device", "policy", "fixed_at",
            "model_free_gammas")  # fmt: skip
    flags = [f"--{k.replace('_', '-')} {config[k]}" for k in keys]
    if config.get("prompts_per_phase") is not None:  # 0: each N its own N × requests per client
        flags.append(f"--prompts-per-phase {config['prompts_per_phase']}")
    if "warm_up_tokens" in config:  # reports from before the warm-up ran none
        flags.append(f"--warm-up-tokens {config['warm_up_tokens']}")
    if config.get("sittings", 1) > 1:
        flags.append(f"--sittings {config['sittings']}")
    passed = [f"--{k.replace('_', '-')}={v}" for k in ("controller_arg", "target_arg") for v in config.get(k) or []]
    return flags + passed


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def plot(phases: list[Phase], policy: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for method in (policy, "generate-padded", "generate-continuous"):
        points = sorted((p.clients, p.tokens_per_second) for p in phases if p.method == method and p.tokens)
        if points:
            throughput.plot(*zip(*points, strict=True), marker="o", label=method)
    points = sorted((p.clients, p.latency_p99) for p in phases if p.method == policy and p.latency_p99)
    if points:
        latency.plot(*zip(*points, strict=True), marker="o", label=f"{policy} p99")
    points = sorted((p.clients, p.latency_p50) for p in phases if p.method == policy and p.latency_p50)
    if points:
        latency.plot(*zip(*points, strict=True), marker="o", label=f"{policy} p50")
    for axis, title, unit in ((throughput, "Aggregate throughput", "tokens/s"), (latency, "Request latency", "s")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients N")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.legend()
    figure.savefig(path, dpi=110)
    plt.close(figure)
