"""What makes a service safe to put on a network: TLS (optionally mutual), operator credentials for the
admin RPCs, an optional API key for client RPCs, and the model roots drafters may be loaded from.

Tokens are compared in constant time and never logged: the dataclasses holding them keep them out of
their repr, and log lines say only whether a token is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from banditspec.errors import PermissionDenied

log = structlog.get_logger()

ADMIN_TOKEN_ENV = "BANDITSPEC_ADMIN_TOKEN"
API_KEY_ENV = "BANDITSPEC_API_KEY"

# The RPCs that change what a service runs. The controller has none; if it gets one, list it here.
ADMIN_METHODS = frozenset(
    {
        "/banditspec.v1.DraftService/LoadDrafter",
        "/banditspec.v1.DraftService/UnloadDrafter",
    }
)
# Probes and tooling must work without credentials: health and reflection stay open.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

ENABLE_ADMIN_HINT = (
    f"set {ADMIN_TOKEN_ENV} or pass --admin-token-file on the service, and send 'authorization: Bearer <token>'"
)


# secrets ---------------------------------------------------------------------------------------


def read_secret(env: str, file: str | None) -> str | None:
    """A token from its file (first line, surrounding whitespace stripped) or else from the environment;
    None when neither is set. An empty file is an error: it is a mistake, not a wish for no token."""
    if file:
        try:
            text = Path(file).read_text().strip()
            if Path(file).stat().st_mode & 0o077:
                log.warning("the token file is readable by other users; chmod 600 it", file=file)
        except OSError as error:
            raise SystemExit(f"cannot read the token file {file}: {error.strerror}") from error
        if not text:
            raise SystemExit(f"the token file {file} is empty")
        return text.splitlines()[0].strip()
    return os.environ.get(env) or None


def tokens_match(given: str, expected: str) -> bool:
    """Constant time, length included: both sides are hashed to the same length first."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


def bearer_metadata(token: str | None) -> list[tuple[str, str]]:
    """The call metadata a client sends with a token (none without one)."""
    return [("authorization", f"Bearer {token}")] if token else []


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections (a host name other than localhost: no)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# TLS -------------------------------------------------------------------------------------------


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SystemExit(f"cannot read the {what} {path}: {error.strerror}") from error


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key; with `client_ca`, clients must present a certificate it signed."""

    cert: str
    key: str
    client_ca: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))],
            root_certificates=_read(self.client_ca, "client CA") if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )

    @classmethod
    def from_flags(cls, cert: str | None, key: str | None, client_ca: str | None) -> ServerTLS | None:
        if not cert and not key:
            if client_ca:
                raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
            return None
        if not cert or not key:
            raise SystemExit("TLS needs both --tls-cert and --tls-key")
        return cls(cert, key, client_ca or None)


@dataclass(frozen=True)
class ClientTLS:
    """How a client checks a server (`ca`; None: the system's roots) and, for mutual TLS, the
    certificate it presents (`cert`, `key`)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise SystemExit("a client certificate needs both its certificate and its key")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate") if self.ca else None,
            private_key=_read(self.key, "TLS key") if self.key else None,
            certificate_chain=_read(self.cert, "TLS certificate") if self.cert else None,
        )

    @classmethod
    def from_flags(cls, ca: str | None, cert: str | None, key: str | None) -> ClientTLS | None:
        """None (plaintext) unless one of the flags is given."""
        if not (ca or cert or key):
            return None
        return cls(ca or None, cert or None, key or None)


# the server's settings and the interceptor -----------------------------------------------------


@dataclass(frozen=True)
class ServerSecurity:
    """TLS, credentials and the message limit of one server (serving.run_server applies them)."""

    tls: ServerTLS | None = None
    admin_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    max_receive_bytes: int = 64 * 1024 * 1024

    def describe(self, host: str, has_admin: bool = True) -> dict[str, object]:
        """For the start-up log line: what is on, never a secret."""
        if not has_admin:
            admin = "none"
        elif self.admin_token:
            admin = "token"
        elif is_loopback(host):
            admin = "open (loopback)"
        else:
            admin = "disabled (no token)"
        return {
            "tls": "mutual" if self.tls and self.tls.client_ca else ("on" if self.tls else "off"),
            "admin_rpcs": admin,
            "api_key": self.api_key is not None,
            "max_receive_bytes": self.max_receive_bytes,
        }


Denial = tuple[grpc.StatusCode, str]


@dataclass(frozen=True)
class AuthPolicy:
    """Who may call what. Admin RPCs: with a token, the token; without one, anyone on a loopback bind
    (local development) and no one otherwise. Other RPCs: the API key when one is set."""

    host: str
    admin_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    admin_methods: frozenset[str] = ADMIN_METHODS

    def check(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Denial | None:
        if method.startswith(OPEN_SERVICE_PREFIXES):
            return None
        if method in self.admin_methods:
            if self.admin_token is None:
                if is_loopback(self.host):
                    return None
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"admin RPCs are disabled: this service listens on {self.host} and has no admin token; "
                    f"to enable them, {ENABLE_ADMIN_HINT}",
                )
            return _check_token(_bearer(metadata), self.admin_token, "admin token")
        if self.api_key is None:
            return None
        return _check_token(_bearer(metadata), self.api_key, "API key")

    @property
    def is_open(self) -> bool:
        """Nothing to check: no interceptor needed."""
        return self.api_key is None and self.admin_token is None and is_loopback(self.host)


def _check_token(given: str | None, expected: str, what: str) -> Denial | None:
    if not given:
        return grpc.StatusCode.UNAUTHENTICATED, f"this RPC needs an {what}: send 'authorization: Bearer <token>'"
    if not tokens_match(given, expected):
        return grpc.StatusCode.PERMISSION_DENIED, f"the {what} is not valid"
    return None


def _denied(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses the call (without parsing the request:
    an unauthenticated payload is never deserialized)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    kwargs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Applies an AuthPolicy before a call reaches its servicer."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        denial = self.policy.check(method, handler_call_details.invocation_metadata)
        if denial is None or handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler
        return _denied(handler, *denial)


# model roots -----------------------------------------------------------------------------------

OUTSIDE_ROOTS = "drafters load only from the service's model roots (--model-root)"


class OutsideModelRoots(PermissionDenied):
    """A path a LoadDrafter named lies outside every model root. The message is the same whether or
    not the path exists, so a refusal tells a caller nothing about the filesystem."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path!r}: {OUTSIDE_ROOTS}")


def confine(path: str | Path, roots: Sequence[Path]) -> Path:
    """The path, resolved (symlinks followed), if it lies inside one of `roots` (resolved too); else
    OutsideModelRoots. A relative path is taken relative to the service's working directory."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL byte
        raise OutsideModelRoots(str(path)) from error
    for root in roots:
        try:
            real_root = root.expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if resolved.is_relative_to(real_root):
            return resolved
    raise OutsideModelRoots(str(path))
