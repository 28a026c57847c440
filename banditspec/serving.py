"""What every banditspec server shares: health, reflection, readiness, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

log = structlog.get_logger()

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# In-flight calls get this long to finish after SIGTERM; `--drain-seconds` on every service sets it.
DRAIN_SECONDS = 10.0
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive on every channel: a peer that vanished without closing (host down, cable pulled) is
    # noticed within ~30 s instead of at the next call's timeout. Servers permit the pings.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # A restarted peer is reconnected within about 2 s (gRPC's default backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


async def run_server(
    *,
    name: str,
    host: str,
    port: int,
    service_names: Iterable[str],
    register: Callable[[grpc.aio.Server], None],
    load: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]] | None = None,
    ready_file: str | None = None,
    grace_seconds: float | None = None,
) -> None:
    """Bind first and report NOT_SERVING while `load` runs, then SERVING until SIGINT/SIGTERM; then
    NOT_SERVING at once, in-flight calls get `grace_seconds` (default DRAIN_SECONDS) to finish."""
    grace_seconds = DRAIN_SECONDS if grace_seconds is None else grace_seconds
    service_names = list(service_names)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    register(server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"{name}: cannot bind {host}:{port}")
    for service in ["", *service_names]:
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    address = f"{host}:{bound}"
    log.info("listening, loading", server=name, address=address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    loading = asyncio.ensure_future(load())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():  # a signal while loading (e.g. a controller waiting for its target): stop now
        loading.cancel()
        log.info("stopped while loading", server=name)
        await server.stop(0)
        return
    stopping.cancel()
    try:
        loading.result()
    except Exception:
        log.exception("load failed", server=name)
        await server.stop(0)
        raise
    for service in ["", *service_names]:
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    if ready_file:
        # Written whole, then renamed: a reader polling for the file never sees it half-written.
        staging = Path(f"{ready_file}.tmp")
        staging.write_text(json.dumps({"address": address, "port": bound}))
        staging.replace(ready_file)
    log.info("serving", server=name, address=address)

    await stop.wait()
    log.info("draining", server=name, grace_seconds=grace_seconds)
    await health.enter_graceful_shutdown()  # every service NOT_SERVING
    await server.stop(grace_seconds)
    if close is not None:
        await close()
    log.info("stopped", server=name)
