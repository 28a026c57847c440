"""What one gRPC aio exchange costs on this machine: a bidirectional-stream exchange (the controller's rounds
today) against a unary call, TCP loopback against a Unix socket, and a few channel options and poll
strategies; latency per exchange and CPU per exchange in the client and in the server, interleaved.

    PYTHONPATH=. python benchmarks/grpc_roundtrip.py [--exchanges 2000] [--repeats 5]

The server is an asyncio gRPC server in its own process, answering each message with the same bytes (about
the size of a round's messages), on TCP and a Unix socket at once. Each repeat runs every client variant
once, in its own process, in turn; figures are medians over repeats, and ratios are against `tcp stream`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from banditspec.channels import CHANNEL_OPTIONS

SERVICE = "bench.Echo"
PAYLOAD = bytes(range(64))  # a round's messages are tens of bytes: a few ids, lengths, seconds
NO_BDP = [("grpc.http2.bdp_probe", 0)]
LATENCY = [("grpc.optimization_target", "latency")]
# name → (transport, kind, extra channel options, client environment)
VARIANTS: dict[str, tuple[str, str, list, dict[str, str]]] = {
    "tcp stream": ("tcp", "stream", [], {}),
    "tcp unary": ("tcp", "unary", [], {}),
    "uds stream": ("uds", "stream", [], {}),
    "tcp stream, read posted first": ("tcp", "stream, read posted first", [], {}),
    "uds unary": ("uds", "unary", [], {}),
    "tcp stream, no bdp probe": ("tcp", "stream", NO_BDP, {}),
    "tcp stream, optimize latency": ("tcp", "stream", LATENCY, {}),
    "tcp stream, GRPC_POLL_STRATEGY=poll": ("tcp", "stream", [], {"GRPC_POLL_STRATEGY": "poll"}),
    "tcp stream, iomgr client (-event_engine_client)": (
        "tcp",
        "stream",
        [],
        {"GRPC_EXPERIMENTS": "-event_engine_client"},
    ),
    "tcp stream, pollset_alternative": ("tcp", "stream", [], {"GRPC_EXPERIMENTS": "pollset_alternative"}),
    "tcp stream, use_call_event_engine_in_completion_queue": (
        "tcp",
        "stream",
        [],
        {"GRPC_EXPERIMENTS": "use_call_event_engine_in_completion_queue"},
    ),
    "uds stream, optimize latency, no bdp probe": ("uds", "stream", [*LATENCY, *NO_BDP], {}),
}


# server ----------------------------------------------------------------------------------------


async def serve(tcp_port_file: str, socket_path: str) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for request in requests:
            yield request

    async def cpu(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return struct.pack("d", time.process_time())

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
        "Cpu": grpc.unary_unary_rpc_method_handler(cpu),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    Path(tcp_port_file).write_text(str(port))
    await server.wait_for_termination()


# client ----------------------------------------------------------------------------------------


async def measure(address: str, kind: str, options: list, exchanges: int, gap: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address, options=[*CHANNEL_OPTIONS, *options]) as channel:
        server_cpu = channel.unary_unary(f"/{SERVICE}/Cpu")
        if kind == "unary":
            call = channel.unary_unary(f"/{SERVICE}/Unary")

            async def exchange() -> bytes:
                return await call(PAYLOAD, timeout=5)
        elif kind == "stream, read posted first":
            stream = channel.stream_stream(f"/{SERVICE}/Stream")(timeout=600)

            async def exchange() -> bytes:
                read = asyncio.ensure_future(stream.read())
                await stream.write(PAYLOAD)
                return await read
        else:
            stream = channel.stream_stream(f"/{SERVICE}/Stream")(timeout=600)

            async def exchange() -> bytes:
                await stream.write(PAYLOAD)
                return await stream.read()

        for _ in range(200):  # warm: connection, first calls
            await exchange()
        latencies = []
        server_before = struct.unpack("d", await server_cpu(b"", timeout=5))[0]
        cpu_before = time.process_time()
        for _ in range(exchanges):
            if gap:
                await asyncio.sleep(gap)  # both sides idle, as while the target runs a forward
            start = time.perf_counter()
            await exchange()
            latencies.append(time.perf_counter() - start)
        client_cpu = time.process_time() - cpu_before
        server_after = struct.unpack("d", await server_cpu(b"", timeout=5))[0]
        if kind != "unary":
            await stream.done_writing()
    return {
        "latency_median_us": 1e6 * statistics.median(latencies),
        "latency_mean_us": 1e6 * statistics.fmean(latencies),
        "client_cpu_us": 1e6 * client_cpu / exchanges,
        "server_cpu_us": 1e6 * (server_after - server_before) / exchanges,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="idle time before each exchange")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)  # variant name, address
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
        return 0
    if args.client:
        _, kind, options, _ = VARIANTS[args.client[0]]
        print(json.dumps(asyncio.run(measure(args.client[1], kind, options, args.exchanges, args.gap_ms / 1e3))))
        return 0

    with tempfile.TemporaryDirectory(prefix="grpc-roundtrip-") as workdir:
        port_file, socket_path = f"{workdir}/port", f"{workdir}/echo.sock"
        server = subprocess.Popen([sys.executable, __file__, "--serve", port_file, socket_path])
        try:
            while not Path(port_file).exists() or not Path(port_file).read_text():
                time.sleep(0.05)
            addresses = {"tcp": f"127.0.0.1:{Path(port_file).read_text()}", "uds": f"unix:{socket_path}"}
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
            for repeat in range(args.repeats):
                for name, (transport, _, _, env) in VARIANTS.items():
                    out = subprocess.run(
                        [sys.executable, __file__, "--client", name, addresses[transport],
                         "--exchanges", str(args.exchanges), "--gap-ms", str(args.gap_ms)],
                        env={**os.environ, **env}, capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            server.terminate()
            server.wait()

    fields = ["latency_median_us", "latency_mean_us", "client_cpu_us", "server_cpu_us"]
    medians = {name: {f: statistics.median(r[f] for r in rs) for f in fields} for name, rs in runs.items()}
    base = medians["tcp stream"]
    print(
        f"{args.exchanges} exchanges × {args.repeats} repeats, {args.gap_ms} ms idle before each, medians over repeats (ratio to tcp stream)"
    )
    print("| variant | latency median µs | latency mean µs | client CPU µs | server CPU µs |")
    print("|---|---:|---:|---:|---:|")
    for name, m in medians.items():
        cells = [f"{m[f]:.0f} ({m[f] / base[f]:.2f}×)" for f in fields]
        print(f"| {name} | " + " | ".join(cells) + " |")
    spread = {
        name: max(r["latency_median_us"] for r in rs) / min(r["latency_median_us"] for r in rs)
        for name, rs in runs.items()
    }
    print("latency median, max/min over repeats: " + ", ".join(f"{n} {s:.2f}" for n, s in spread.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
