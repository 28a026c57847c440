"""Every client channel the package opens: plaintext, or TLS (mutual with a client certificate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from banditspec.security import ClientTLS

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive on every channel: a peer that vanished without closing (host down, cable pulled) is
    # noticed within ~30 s instead of at the next call's timeout. Servers permit the pings.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A restarted peer is reconnected within about 2 s (gRPC's default backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def open_channel(
    address: str, tls: ClientTLS | None = None, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS
) -> grpc.Channel:
    """A blocking channel to `address`; TLS when `tls` is given."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=list(options))


def open_aio_channel(
    address: str, tls: ClientTLS | None = None, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    """An asyncio channel to `address`; TLS when `tls` is given."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=list(options))
