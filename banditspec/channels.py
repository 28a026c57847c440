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
