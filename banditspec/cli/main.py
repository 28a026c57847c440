"""`banditspec`: run the services, the local stack, and the client."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import banditspec.cli.settings as settings
from banditspec.cli.launcher import DEFAULT_DRAFTERS
from banditspec.policy_names import DEFAULT_POLICY, POLICY_WIRE_VALUES
from services.draft.specs import USAGE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLE_PROMPT = "Explain in three sentences why the sky is blue."


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def _seconds(minimum: float):
    def parse(text: str) -> float:
        value = float(text)
        if not value >= minimum:  # NaN too
            raise argparse.ArgumentTypeError(f"must be a number of seconds >= {minimum}, got {text}")
        return value

    return parse


def _service_args(parser: argparse.ArgumentParser, port: int, max_message_mib: int) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port, help="0 picks a free port")
    parser.add_argument("--ready-file", help="write the bound address here once SERVING")
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics over HTTP on host:PORT")
    parser.add_argument(
        "--drain-seconds", type=_seconds(0.0), default=10.0, help="after SIGTERM, how long in-flight calls may finish"
    )
    parser.add_argument("--tls-cert", help="serve TLS with this certificate (PEM; with --tls-key)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    parser.add_argument("--tls-client-ca", help="mutual TLS: require client certificates signed by this CA (PEM)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="lower this service's CPU priority by N (0-19): on cores shared with a CPU target, so that the "
        "target's forwards are not preempted",
    )
    parser.add_argument(
        "--max-message-mib", type=int, default=max_message_mib,
        help=f"largest request message accepted, MiB (default {max_message_mib}); larger: RESOURCE_EXHAUSTED",
    )  # fmt: skip


def _unix_socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unix-socket", metavar="PATH",
        help="also listen on this Unix socket; a controller on this machine dials unix:PATH (less per-message "
        "cost than TCP loopback)",
    )  # fmt: skip


def _client_tls_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--tls-ca", help=f"connect to the {what} over TLS, trusting this CA (PEM)")
    parser.add_argument("--tls-cert", help="mutual TLS: this client certificate (PEM; with --tls-key)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")


def _client_tls(args: argparse.Namespace):
    from banditspec.security import ClientTLS

    # `demo` calls the stack it started, without these flags
    return ClientTLS.from_flags(*(getattr(args, flag, None) for flag in ("tls_ca", "tls_cert", "tls_key")))


def _server_security(args: argparse.Namespace, admin_token: str | None = None, api_key: str | None = None):
    from banditspec.security import ServerSecurity, ServerTLS

    if args.max_message_mib < 1:
        sys.exit("error: --max-message-mib must be at least 1")
    return ServerSecurity(
        tls=ServerTLS.from_flags(args.tls_cert, args.tls_key, args.tls_client_ca),
        admin_token=admin_token,
        api_key=api_key,
        max_receive_bytes=args.max_message_mib * 1024 * 1024,
    )


def _lower_priority(by: int) -> None:
    from banditspec.priority import lower_process_priority

    try:
        lower_process_priority(by)
    except ValueError as error:
        sys.exit(f"error: --nice: {error}")


def cmd_serve_target(args: argparse.Namespace) -> None:
    from services.target.server import TargetConfig, serve

    _lower_priority(args.nice)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    asyncio.run(
        serve(
            TargetConfig(
                model=args.model,
                device=args.device,
                dtype=args.dtype,
                max_sessions=args.max_sessions,
                host=args.host,
                port=args.port,
                ready_file=args.ready_file,
                verify_padding=args.verify_padding == "auto",
                security=_server_security(args),
                metrics_port=args.metrics_port,
                drain_seconds=args.drain_seconds,
                unix_socket=args.unix_socket,
                solo_threads=args.solo_threads,
                prefix_reuse=not args.no_prefix_reuse,
                packed_weights=not args.no_packed_weights,
                **{  # unset: the engine's defaults (the CLI does not import torch to learn them)
                    key: value
                    for key, value in (
                        ("max_batch_tokens", args.max_batch_tokens),
                        ("prefill_chunk", args.prefill_chunk),
                        ("retained_prefixes", args.retained_prefixes),
                    )
                    if value is not None
                },
            )
        )
    )


def cmd_serve_draft(args: argparse.Namespace) -> None:
    from banditspec.security import ADMIN_TOKEN_ENV, read_secret
    from services.draft.server import DraftConfig, serve

    _lower_priority(args.nice)

    asyncio.run(
        serve(
            DraftConfig(
                drafters=[] if args.no_drafters else args.drafter or list(DEFAULT_DRAFTERS),
                device=args.device,
                dtype=args.dtype,
                max_sessions=args.max_sessions,
                host=args.host,
                port=args.port,
                ready_file=args.ready_file,
                security=_server_security(args, admin_token=read_secret(ADMIN_TOKEN_ENV, args.admin_token_file)),
                model_roots=[Path(root) for root in args.model_root] if args.model_root else None,
                metrics_port=args.metrics_port,
                drain_seconds=args.drain_seconds,
                unix_socket=args.unix_socket,
            )
        )
    )


def _parse_drafts(values: list[str]) -> dict[str, str]:
    drafts: dict[str, str] = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep:
            name, address = f"draft{len(drafts)}", value
        drafts[name] = address
    return drafts


def _model_free_gammas(args: argparse.Namespace) -> str:
    if args.pld_gammas is None:
        return str(args.model_free_gammas)
    print("banditspec: --pld-gammas is deprecated; use --model-free-gammas", file=sys.stderr)
    return str(args.pld_gammas)


def cmd_serve_controller(args: argparse.Namespace) -> None:
    from banditspec.security import API_KEY_ENV, ClientTLS, read_secret
    from services.controller.server import ControllerConfig, serve

    _lower_priority(args.nice)

    asyncio.run(
        serve(
            ControllerConfig(
                target=args.target,
                drafts=_parse_drafts(args.draft or []),
                local_drafters=args.local_drafter or [],
                tokenizer=args.tokenizer,
                policy=args.policy,
                model_free_gammas=_ints(_model_free_gammas(args)),
                model_gammas=_ints(args.model_gammas),
                tree_tokens=_ints(args.tree_tokens),
                rpc_timeout=args.rpc_timeout,
                draft_deadline=args.draft_deadline,
                refresh_seconds=args.refresh_seconds,
                host=args.host,
                port=args.port,
                metrics_port=args.metrics_port,
                drain_seconds=args.drain_seconds,
                http_port=args.http_port,
                max_concurrent=args.max_concurrent,
                max_queued=args.max_queued,
                load_cost=args.load_cost,
                warm_start=args.warm_start == "on",
                ready_file=args.ready_file,
                security=_server_security(args, api_key=read_secret(API_KEY_ENV, args.api_key_file)),
                upstream_tls=ClientTLS.from_flags(args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key),
            )
        )
    )


def _stack(args: argparse.Namespace):
    from banditspec.cache import cache_dir
    from banditspec.cli.launcher import LocalStack

    target_args = ["--dtype", args.dtype] if args.dtype else []
    return LocalStack(
        log_dir=cache_dir() / "logs",
        model=args.model,
        drafters=args.drafter or list(DEFAULT_DRAFTERS),
        controller_port=args.port,
        extra_target_args=target_args,
        extra_draft_args=[f"--model-root={root}" for root in args.model_root or []],
        extra_controller_args=["--policy", args.policy],
        http_port=args.http_port,
        model_free_in_controller=not args.model_free_in_service,
    )


def cmd_up(args: argparse.Namespace) -> None:
    import signal

    stack = _stack(args)
    print("starting target, draft service and controller (the first run converts the default model)...", flush=True)
    print(f"service logs: {stack.log_dir}/", flush=True)
    stack.start()
    for service in stack.services:
        print(f"  {service.name:<10} {service.address}  (pid {service.process.pid})", flush=True)
    print(
        f"ready: banditspec generate --controller {stack.address('controller')} 'your prompt'   (Ctrl-C stops)",
        flush=True,
    )
    if stack.http_url():
        print(f"OpenAI-compatible API: {stack.http_url()}", flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and all(s.process.poll() is None for s in stack.services):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("stopping...", flush=True)
    stack.stop()


def cmd_demo(args: argparse.Namespace) -> None:
    stack = _stack(args)
    print("starting target, draft service and controller (the first run converts the default model)...", flush=True)
    print(f"service logs: {stack.log_dir}/", flush=True)
    with stack:
        args.controller = stack.address("controller")
        args.prompt = args.prompt or SAMPLE_PROMPT
        args.chat = True
        print(f"prompt: {args.prompt}\n", flush=True)
        _generate(args)


def cmd_generate(args: argparse.Namespace) -> None:
    _generate(args)


def _generate(args: argparse.Namespace) -> None:
    import grpc
    from google.protobuf import json_format

    from banditspec.channels import open_channel
    from banditspec.security import API_KEY_ENV, bearer_metadata, read_secret
    from banditspec.v1 import generation_pb2, generation_pb2_grpc

    request = generation_pb2.GenerateRequest(max_new_tokens=args.max_new_tokens, stop=args.stop or [])
    if args.chat:
        request.chat.messages.add(role="user", content=args.prompt)
    else:
        request.text = args.prompt
    if args.temperature is not None:
        request.temperature = args.temperature
    if args.top_p is not None:
        request.top_p = args.top_p
    if args.top_k:
        request.top_k = args.top_k
    if args.seed is not None:
        request.seed = args.seed
    if args.policy_override:
        request.policy = POLICY_WIRE_VALUES[args.policy_override]  # type: ignore[assignment]  # an enum int
    request.allowed_arms.extend(args.arm or [])
    metadata = bearer_metadata(read_secret(API_KEY_ENV, getattr(args, "api_key_file", None)))
    with open_channel(args.controller, _client_tls(args)) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        try:
            if args.json:
                response = stub.Generate(request, timeout=args.timeout, metadata=metadata)
                print(
                    json_format.MessageToJson(
                        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
                )
                return
            final = None
            for message in stub.GenerateStream(request, timeout=args.timeout, metadata=metadata):
                if message.HasField("round"):
                    print(message.round.text, end="", flush=True)
                else:
                    final = message.final
        except grpc.RpcError as error:
            sys.exit(f"error: {error.code().name}: {error.details()}")
    _print_stats(final)


def _print_stats(response) -> None:
    from banditspec.v1 import generation_pb2

    stats = response.stats
    reason = generation_pb2.FinishReason.Name(response.finish_reason).removeprefix("FINISH_REASON_").lower()
    print(
        f"\n\n{stats.generated_tokens} tokens in {stats.wall_seconds:.2f}s = {stats.tokens_per_second:.1f} tok/s; "
        f"{stats.rounds} rounds, policy {stats.policy}, finish {reason}, "
        f"controller overhead median {stats.controller_overhead_median_seconds * 1e3:.2f} ms/round"
    )
    print(f"{'arm':<22}{'pulls':>7}{'drafted':>9}{'accepted':>10}{'accept%':>9}{'tok/s':>9}")
    for arm in stats.arms:
        rate = 100 * arm.accepted_tokens / arm.drafted_tokens if arm.drafted_tokens else 0.0
        print(
            f"{arm.arm:<22}{arm.pulls:>7}{arm.drafted_tokens:>9}{arm.accepted_tokens:>10}{rate:>8.0f}%{arm.mean_reward:>9.1f}"
        )


def cmd_drafters(args: argparse.Namespace) -> None:
    import grpc

    from banditspec.channels import open_channel
    from banditspec.security import ADMIN_TOKEN_ENV, bearer_metadata, read_secret
    from banditspec.v1 import draft_pb2, draft_pb2_grpc
    from services.draft.specs import DrafterSpec

    metadata = bearer_metadata(read_secret(ADMIN_TOKEN_ENV, args.admin_token_file))
    with open_channel(args.draft, _client_tls(args)) as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        try:
            if args.action == "list":
                for d in stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=args.timeout).drafters:
                    hits = f" [lookahead hits: {d.lookahead_hits}]" if d.lookahead_hits else ""
                    print(f"{d.name:<16}{draft_pb2.DrafterKind.Name(d.kind):<30}{d.device:<8}{d.source}{hits}")
            elif args.action == "load":
                spec = DrafterSpec.parse(args.spec)
                response = stub.LoadDrafter(spec.to_pb(replace=args.replace), timeout=args.timeout, metadata=metadata)
                print(f"loaded {response.drafter.name} in {response.load_seconds:.2f}s")
            else:
                stub.UnloadDrafter(
                    draft_pb2.UnloadDrafterRequest(name=args.spec), timeout=args.timeout, metadata=metadata
                )
                print(f"unloaded {args.spec}")
        except grpc.RpcError as error:
            sys.exit(f"error: {error.code().name}: {error.details()}")
        except ValueError as error:  # a malformed spec, refused before any call
            sys.exit(f"error: {error}")


def cmd_datastore(args: argparse.Namespace) -> None:
    from banditspec.model_paths import resolve_model_path
    from banditspec.models import load_tokenizer, vocab_fingerprint
    from banditspec.training.datastore_build import build_datastore, recorded_outputs, text_files

    if not args.text and not args.outputs:
        sys.exit("error: give --text and/or --outputs")
    start = time.perf_counter()
    try:
        tokenizer = load_tokenizer(resolve_model_path(args.tokenizer))
        files = text_files(args.text or [], args.glob)
        documents = [tokenizer.encode(f.read_text(errors="replace"), add_special_tokens=False) for f in files]
        for path in args.outputs or []:
            documents.extend(recorded_outputs(path))
        names = [*(args.text or []), *(args.outputs or [])]
        source = f"{len(files)} text files, {len(args.outputs or [])} output files: " + ", ".join(names)
        datastore = build_datastore(documents, vocab_fingerprint(tokenizer), source[:500])
        datastore.save(args.out)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(
        f"{datastore.num_tokens} tokens, {datastore.num_documents} documents, "
        f"{time.perf_counter() - start:.2f} seconds -> {args.out}"
    )


def cmd_pydocs(argv: list[str]) -> None:
    from banditspec.model_paths import PYDOCS_DIR
    from banditspec.training.pydocs import build

    if argv[:1] == ["verify"]:
        problems = build.verify(Path(argv[1]) if len(argv) > 1 else PYDOCS_DIR)
        if problems:
            sys.exit("error: " + "; ".join(problems))
        print("all files match MANIFEST.json")
    elif argv[:1] == ["build"]:
        build.main(["all", *argv[1:]], prog="banditspec pydocs build")
    elif argv[:1] == ["datastore"] and len(argv) == 3:
        cache = Path.home() / ".cache" / "banditspec" / "downloads"
        print(build.build_corpus_datastore(argv[1], Path(argv[2]), cache))
    else:
        sys.exit(
            "usage: banditspec pydocs build [--help] | banditspec pydocs verify [DIR] | "
            "banditspec pydocs datastore TOKENIZER OUT.npz  (retrieval datastore of the corpus' training split)"
        )


def cmd_distill(argv: list[str]) -> None:
    from banditspec.training import distill

    distill.main(argv)


def cmd_chat_draft(argv: list[str]) -> None:
    from banditspec.training.chat import build

    build.main(argv)


def cmd_bench(argv: list[str]) -> None:
    from banditspec.bench.cli import main as bench_main

    sys.exit(bench_main(argv))


def cmd_loadtest(argv: list[str]) -> None:
    from banditspec.bench.loadtest import main as loadtest_main

    sys.exit(loadtest_main(argv))


TRAINING_COMMANDS = {
    "pydocs": cmd_pydocs,
    "distill": cmd_distill,
    "chat-draft": cmd_chat_draft,
    "bench": cmd_bench,
    "loadtest": cmd_loadtest,
}


def cmd_health(args: argparse.Namespace) -> None:
    """Exit 0 when the server at ADDRESS reports SERVING (for container health checks), else 1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from banditspec.channels import open_channel

    with open_channel(args.address, _client_tls(args)) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            sys.exit(f"unhealthy: {error.code().name}: {error.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        sys.exit(f"unhealthy: {status}")
    print(status)


# Subcommands whose flags also come from BANDITSPEC_* variables and a --config file (cli/settings.py).
CONFIGURABLE = ("serve-target", "serve-draft", "serve-controller", "up", "demo", "generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banditspec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    target = sub.add_parser("serve-target", help="run the target (verifier) service")
    target.add_argument("--model", default="default", help="HF model directory, or 'default' (SmolLM2-135M-Instruct)")
    target.add_argument("--device", default="auto")
    target.add_argument(
        "--dtype", default="auto", help="float32 | bfloat16 | float16 (auto: float32 on CPU, bfloat16 on CUDA)"
    )
    target.add_argument("--max-sessions", type=int, default=64)
    target.add_argument(
        "--max-batch-tokens", type=int,
        help="tokens one forward may carry across sessions, bounding a round's wait (default 256)",
    )  # fmt: skip
    target.add_argument(
        "--prefill-chunk", type=int, help="prompt tokens per forward while other sessions wait (default 64)",
    )  # fmt: skip
    target.add_argument(
        "--retained-prefixes", type=int,
        help="released sessions' caches kept while their pool slots are free, for prompts that start like "
        "them (a conversation's next turn; default 16); 0: none kept (open sessions' prefixes are still shared)",
    )  # fmt: skip
    target.add_argument(
        "--no-prefix-reuse", action="store_true",
        help="prefill every prompt whole, sharing no prefix with other sessions (for A/B measurements)",
    )  # fmt: skip
    target.add_argument(
        "--no-packed-weights", action="store_true",
        help="on a CPU, multiply with the model's own weights only: no copies packed for oneDNN or MKL (saves "
        "the weights' memory once per copy kept; forwards of several tokens slower)",
    )  # fmt: skip
    target.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    target.add_argument(
        "--solo-threads", type=int, default=0,
        help="torch CPU threads of a forward while only one session is open, when nothing else on the machine "
        "works during it (0: as --threads)",
    )  # fmt: skip
    target.add_argument(
        "--verify-padding",
        choices=["auto", "off"],
        default="auto",
        help="auto: pad a verify to a longer forward where the measured one is cheaper",
    )
    _service_args(target, 50051, max_message_mib=64)
    _unix_socket_arg(target)
    target.set_defaults(func=cmd_serve_target)

    draft = sub.add_parser("serve-draft", help="run a draft service")
    draft.add_argument(
        "--drafter", action="append", help=f"{USAGE}; repeatable (default: {' '.join(DEFAULT_DRAFTERS)})"
    )
    draft.add_argument(
        "--no-drafters", action="store_true", help="start with no drafter (load them later with `drafters load`)"
    )
    draft.add_argument("--device", default="auto")
    draft.add_argument("--dtype", default="auto")
    draft.add_argument("--max-sessions", type=int, default=256)
    draft.add_argument(
        "--model-root", action="append",
        help="LoadDrafter reads model and datastore files only under this directory; repeatable "
        "(default: the shipped models/ and the model cache)",
    )  # fmt: skip
    draft.add_argument(
        "--admin-token-file", help="admin token for LoadDrafter/UnloadDrafter (or $BANDITSPEC_ADMIN_TOKEN)"
    )
    _service_args(draft, 50052, max_message_mib=64)
    _unix_socket_arg(draft)
    draft.set_defaults(func=cmd_serve_draft)

    controller = sub.add_parser("serve-controller", help="run the controller clients call")
    controller.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT, or unix:PATH")
    controller.add_argument(
        "--draft", action="append", help="NAME=HOST:PORT (or NAME=unix:PATH) of a draft service; repeatable"
    )
    controller.add_argument(
        "--local-drafter", action="append", metavar="SPEC",
        help="a model-free drafter (prompt_lookup, suffix, retrieval) run in the controller itself: its rounds "
        "make one RPC instead of two; arms inproc/NAME/γ; repeatable",
    )  # fmt: skip
    controller.add_argument("--tokenizer", help="tokenizer directory (default: the target's model directory)")
    controller.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICY_WIRE_VALUES))
    controller.add_argument(
        "--model-free-gammas", default="6", help="γ values for model-free drafters (prompt lookup, suffix, retrieval)"
    )
    # The old spelling said prompt lookup only, yet set γ for every model-free drafter.
    controller.add_argument("--pld-gammas", dest="pld_gammas", help=argparse.SUPPRESS)
    controller.add_argument("--model-gammas", default="4", help="γ values for model drafters")
    controller.add_argument(
        "--tree-tokens", default="",
        help="token budgets of tree arms (e.g. 12,24): drafters that branch (prompt lookup, suffix tree) also "
        "propose token trees of that many tokens, as deep as their longest chain",
    )  # fmt: skip
    controller.add_argument("--rpc-timeout", type=float, default=60.0)
    controller.add_argument(
        "--draft-deadline", type=_seconds(0.001), default=3.0,
        help="seconds a proposal may take; a slower one costs its drafter the request (and feeds the breaker)",
    )  # fmt: skip
    controller.add_argument("--max-concurrent", type=int, default=32, help="requests run at once (then they queue)")
    controller.add_argument(
        "--load-cost", choices=["cycle", "share"], default="cycle",
        help="how a round beside other requests is charged: the target time of a cycle in which every running "
        "request played its arm (cycle), or its share of the forward it ran in (share)",
    )  # fmt: skip
    controller.add_argument(
        "--warm-start", choices=["on", "off"], default="on",
        help="start each request's bandit from recent requests' arm means at a similar load",
    )  # fmt: skip
    controller.add_argument(
        "--max-queued", type=int, default=64, help="requests that may wait; beyond: RESOURCE_EXHAUSTED"
    )
    controller.add_argument(
        "--refresh-seconds", type=float, default=2.0, help="how often arms follow the draft services' drafters"
    )
    controller.add_argument("--http-port", type=int, help="serve the OpenAI-compatible HTTP API on this port")
    controller.add_argument("--api-key-file", help="require this API key from clients (or $BANDITSPEC_API_KEY)")
    controller.add_argument("--upstream-tls-ca", help="reach the target and draft services over TLS, trusting this CA")
    controller.add_argument("--upstream-tls-cert", help="mutual TLS towards the services: this client certificate")
    controller.add_argument("--upstream-tls-key", help="the private key of --upstream-tls-cert")
    _service_args(controller, 50050, max_message_mib=4)
    controller.set_defaults(func=cmd_serve_controller)

    for name, func, help_text in (
        ("up", cmd_up, "start target, draft service and controller locally until Ctrl-C"),
        ("demo", cmd_demo, "start the stack, answer a sample prompt, print statistics, stop"),
    ):
        stack = sub.add_parser(name, help=help_text)
        stack.add_argument("--port", type=int, default=50050, help="controller port")
        stack.add_argument("--model", default="default")
        stack.add_argument("--dtype", default=None)
        stack.add_argument("--drafter", action="append")
        stack.add_argument(
            "--model-free-in-service", action="store_true",
            help="run prompt lookup and the suffix tree in the draft service, not in the controller",
        )  # fmt: skip
        stack.add_argument("--policy", default=DEFAULT_POLICY, choices=list(POLICY_WIRE_VALUES))
        stack.add_argument("--model-root", action="append", help="the draft service's --model-root (repeatable)")
        stack.add_argument("--http-port", type=int, help="the controller's OpenAI-compatible HTTP API on this port")
        stack.set_defaults(func=func)

    generate = sub.add_parser("generate", help="call the controller")
    generate.add_argument("prompt")
    sub_demo = sub.choices["demo"]
    sub_demo.add_argument("prompt", nargs="?", default=None)
    for p in (generate, sub_demo):
        p.add_argument("--max-new-tokens", type=int, default=128)
        p.add_argument("--temperature", type=float)
        p.add_argument("--top-p", type=float)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--seed", type=int)
        p.add_argument("--stop", action="append")
        p.add_argument("--arm", action="append", help="allow only these arms (repeatable)")
        p.add_argument("--policy-override", dest="policy_override", choices=list(POLICY_WIRE_VALUES))
        p.add_argument("--json", action="store_true", help="print the whole response as JSON")
        p.add_argument("--timeout", type=float, default=600.0)
    generate.add_argument("--controller", default="127.0.0.1:50050")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--api-key-file", help="send this API key (or $BANDITSPEC_API_KEY)")
    _client_tls_args(generate, "controller")
    generate.set_defaults(func=cmd_generate)

    drafters = sub.add_parser("drafters", help="list, load or unload drafters on a running draft service")
    # One subcommand each, so options may come before or after the spec.
    drafters_sub = drafters.add_subparsers(dest="action", required=True)
    for action, spec_help in (("list", None), ("load", f"NAME=KIND[:ARGS]: {USAGE}"), ("unload", "NAME")):
        command = drafters_sub.add_parser(action, help=f"{action} drafters")
        if spec_help:
            command.add_argument("spec", help=spec_help)
        command.add_argument("--draft", default="127.0.0.1:50052", help="the draft service's HOST:PORT")
        command.add_argument("--timeout", type=float, default=300.0)
        if action == "load":
            command.add_argument("--replace", action="store_true", help="swap out a drafter of the same name")
        command.add_argument("--admin-token-file", help="send this admin token (or $BANDITSPEC_ADMIN_TOKEN)")
        _client_tls_args(command, "draft service")
        command.set_defaults(func=cmd_drafters)

    health = sub.add_parser("health", help="check a server's gRPC health (exit 0 when SERVING): for probes")
    health.add_argument("address", help="HOST:PORT")
    health.add_argument("--service", default="", help="a service name (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3: within a probe's timeout)")
    _client_tls_args(health, "server")
    health.set_defaults(func=cmd_health)

    datastore = sub.add_parser("datastore", help="build a token datastore for retrieval drafters")
    datastore_sub = datastore.add_subparsers(dest="action", required=True)
    build = datastore_sub.add_parser("build", help="index text files and/or recorded outputs into one .npz file")
    build.add_argument(
        "--tokenizer", required=True, help="model or tokenizer directory, or 'default'; must be the target's"
    )
    build.add_argument("--out", required=True, help="the datastore file to write (.npz)")
    build.add_argument("--text", action="append", help="a text file (one document) or a directory of them; repeatable")
    build.add_argument(
        "--outputs", action="append", help="JSON lines with top-level token_ids (generate --json); repeatable"
    )
    build.add_argument("--glob", default="*.txt", help="which files to take from --text directories (default *.txt)")
    build.set_defaults(func=cmd_datastore)

    # Training commands parse their own arguments (main() hands them over); listed here for --help.
    sub.add_parser("pydocs", help="build (or verify) the pydocs model family: banditspec pydocs build --help")
    sub.add_parser("distill", help="distil a draft model from any target: banditspec distill --help")
    sub.add_parser("chat-draft", help="self-distil a SmolLM2 chat draft: banditspec chat-draft --help")
    sub.add_parser("bench", help="benchmark the stack against transformers generate(): banditspec bench --help")
    sub.add_parser("loadtest", help="N concurrent clients against batched baselines: banditspec loadtest --help")
    for name in CONFIGURABLE:
        settings.add_config_flag(sub.choices[name])
    return parser


def main(argv: list[str] | None = None) -> None:
    from banditspec import logs

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TRAINING_COMMANDS:  # they parse their own arguments, --help included
        TRAINING_COMMANDS[argv[0]](argv[1:])
        return
    parser = build_parser()
    settings.apply(parser, argv, os.environ)
    args = parser.parse_args(argv)
    logs.configure(getattr(args, "log_level", None))
    args.func(args)


if __name__ == "__main__":
    main()
