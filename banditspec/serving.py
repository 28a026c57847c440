"""What every banditspec server shares: health, reflection, readiness, graceful shutdown, and its
security settings (TLS, credentials, the message limit; banditspec.security)."""

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
from prometheus_client import start_http_server

from banditspec.channels import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from banditspec.security import AuthInterceptor, AuthPolicy, ServerSecurity, is_loopback

log = structlog.get_logger()

__all__ = ["CHANNEL_OPTIONS", "DRAIN_SECONDS", "MAX_MESSAGE_BYTES", "run_server"]

# In-flight calls get this long to finish after SIGTERM; `--drain-seconds` on every service sets it.
DRAIN_SECONDS = 10.0
# Servers permit the keepalive pings every client channel sends (banditspec.channels).
KEEPALIVE_PERMIT = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
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
    security: ServerSecurity | None = None,
    metrics_port: int | None = None,
    drain: Callable[[], Awaitable[None]] | None = None,
    ready_info: Callable[[], dict[str, object]] | None = None,
    unix_socket: str | None = None,
) -> None:
    """Bind first and report NOT_SERVING while `load` runs, then SERVING until SIGINT/SIGTERM; then
    NOT_SERVING at once, in-flight calls get `grace_seconds` (default DRAIN_SECONDS) to finish. With
    `metrics_port`, Prometheus metrics are served over HTTP on host:metrics_port from the start. `drain`
    stops what else the process serves (an HTTP API) alongside the gRPC server's drain; `ready_info`
    adds to the ready file. With `unix_socket`, the server also listens on that Unix socket (callers on
    this machine dial `unix:PATH`), with the same credentials."""
    grace_seconds = DRAIN_SECONDS if grace_seconds is None else grace_seconds
    service_names = list(service_names)
    security = security or ServerSecurity()
    policy = AuthPolicy(host, admin_token=security.admin_token, api_key=security.api_key)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", security.max_receive_bytes),
            *KEEPALIVE_PERMIT,
        ],
        interceptors=[] if policy.is_open else [AuthInterceptor(policy)],
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    register(server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    if security.tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", security.tls.credentials())
    if bound == 0:
        raise SystemExit(f"{name}: cannot bind {host}:{port}")
    unix_address = None if unix_socket is None else f"unix:{unix_socket}"
    if unix_address is not None:
        bound_unix = (
            server.add_insecure_port(unix_address)
            if security.tls is None
            else server.add_secure_port(unix_address, security.tls.credentials())
        )
        if bound_unix == 0:
            raise SystemExit(f"{name}: cannot listen on {unix_address}")
    if metrics_port is not None:
        try:
            start_http_server(metrics_port, addr=host)
        except OSError as error:
            raise SystemExit(f"{name}: cannot serve metrics on {host}:{metrics_port}: {error}") from error
    for service in ["", *service_names]:
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    address = f"{host}:{bound}"
    has_admin = any(method.startswith(f"/{s}/") for s in service_names for method in policy.admin_methods)
    log.info(
        "listening, loading", server=name, address=address, unix_address=unix_address,
        **security.describe(host, has_admin),
    )  # fmt: skip
    if not is_loopback(host):
        if security.tls is None:
            log.warning("plaintext on a non-loopback address: anyone on the network can call it", server=name)
        if security.admin_token is None and has_admin:
            log.warning(
                "admin RPCs are refused: no admin token (BANDITSPEC_ADMIN_TOKEN or --admin-token-file)", server=name
            )

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
        ready = {"address": address, "port": bound, **(ready_info() if ready_info else {})}
        if unix_address is not None:
            ready["unix_address"] = unix_address
        staging.write_text(json.dumps(ready))
        staging.replace(ready_file)
    log.info("serving", server=name, address=address)

    await stop.wait()
    log.info("draining", server=name, grace_seconds=grace_seconds)
    await health.enter_graceful_shutdown()  # every service NOT_SERVING
    if drain is None:
        await server.stop(grace_seconds)
    else:
        await asyncio.gather(server.stop(grace_seconds), drain())
    if close is not None:
        await close()
    log.info("stopped", server=name)
