"""The `server` and `app` sections: the listeners, TLS, limits and timeouts; the app behind."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from sidecar.config.fields import (
    HeaderName,
    HostPort,
    HttpUrl,
    Network,
    Seconds,
    SecondsOrZero,
    Section,
    redact_url,
    split_host_port,
)
from sidecar.header_lists import folded_name


class TLSConfig(Section):
    cert_file: Path | None = None
    key_file: Path | None = None
    hsts: bool = True
    hsts_max_age_seconds: int = Field(31536000, ge=0)

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        for path in (self.cert_file, self.key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"file not readable: {path}")
        # Read as the listener will: a file that is there but unreadable, not PEM, or a key
        # that does not match the certificate is refused here, not when the port is bound.
        problem = load_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def _no_passphrase() -> str:
    return ""  # an encrypted key is refused, never a passphrase prompt on the terminal


def load_certificate(context: ssl.SSLContext, tls: TLSConfig) -> str | None:
    """Load `tls`'s certificate and key into `context`; why they cannot serve, or None."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load cert_file/key_file: {exc}"
    return None


class ServerConfig(Section):
    listen: HostPort = "0.0.0.0:8080"
    admin_listen: HostPort = "0.0.0.0:9090"
    max_body_bytes: int = Field(1048576, gt=0)
    shutdown_grace_seconds: SecondsOrZero = 30
    trusted_proxies: list[Network] = Field(default_factory=list)
    tls: TLSConfig = TLSConfig()
    request_id_header: HeaderName = "X-Request-Id"
    reload_poll_seconds: SecondsOrZero = 2  # watch the config file; 0 = SIGHUP only
    # Slow clients: a request head must arrive within this long of its first byte (of the
    # connection, for the first request); a body the sidecar reads whole (Claude routes)
    # within body_read; a body streamed to the app may pause at most body_idle between bytes.
    header_read_timeout_seconds: Seconds = 10
    body_read_timeout_seconds: Seconds = 60
    body_idle_timeout_seconds: Seconds = 30
    # An idle kept-alive connection (between requests) is closed after this long.
    keepalive_timeout_seconds: Seconds = 75

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        traffic, admin = split_host_port(self.listen), split_host_port(self.admin_listen)
        if traffic[1] != 0 and traffic == admin:
            raise ValueError("listen and admin_listen must differ")
        return self


# Framing, routing and tracing headers the app proxy sets or drops: never an identity header.
_PROXY_SET_HEADERS = frozenset(
    {
        "host", "content-length", "content-type", "content-encoding", "transfer-encoding",
        "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "traceparent", "tracestate",
    }
)  # fmt: skip


class IdentityHeaders(Section):
    """Headers that carry the verified identity to the app (client copies are stripped)."""

    user: HeaderName = "X-Sidecar-User"
    tenant: HeaderName = "X-Sidecar-Tenant"
    api_key_name: HeaderName = "X-Sidecar-Api-Key-Name"
    # The verified token's `iss`: a user named alike by two issuers is two people.
    issuer: HeaderName = "X-Sidecar-Issuer"

    @field_validator("user", "tenant", "api_key_name", "issuer")
    @classmethod
    def _not_a_proxy_header(cls, value: str) -> str:
        if value.lower() in _PROXY_SET_HEADERS:
            raise ValueError(f"{value!r} is set by the proxy itself; choose another name")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> IdentityHeaders:
        # `_`, `.` and `-` are one to WSGI/CGI (and PHP) apps: a shared name would carry the
        # wrong value.
        given = (self.user, self.tenant, self.api_key_name, self.issuer)
        if len({folded_name(n) for n in given}) != len(given):
            raise ValueError("user, tenant, api_key_name and issuer must be different headers")
        return self


class AppConfig(Section):
    url: HttpUrl = "http://127.0.0.1:3000"
    connect_timeout_seconds: Seconds = 5
    read_timeout_seconds: Seconds = 300
    # A client that takes none of the app's answer this long is cut (nginx's
    # `send_timeout`): a socket that never reads holds no handler or app connection. A
    # WebSocket's sides likewise, both ways (the app too).
    send_timeout_seconds: Seconds = 60
    identity_headers: IdentityHeaders = IdentityHeaders()
    # The credential the sidecar checked (a Bearer `Authorization`, `x-api-key`, the JWT
    # query parameter) is the sidecar's: kept from the app unless it needs the token too.
    forward_credentials: bool = False
    # A WebSocket message is relayed whole (frames are joined): the largest one either side
    # may send, so no client can make the sidecar hold an unbounded message.
    websocket_max_message_bytes: int = Field(4194304, gt=0)
    # A WebSocket side silent this long is pinged; one answering nothing within half that
    # is dead (gone without a FIN or RST) and both sides are closed, so no idle socket
    # whose peer vanished holds its app connection for good.
    websocket_ping_seconds: Seconds = 30

    @field_validator("url")
    @classmethod
    def _base_only(cls, value: str) -> str:
        # Each request's path and query are appended to it: a query in it would become
        # part of every path, and a fragment would cut off each request's own.
        if "?" in value or "#" in value:
            raise ValueError(
                "must be a base URL without a query or fragment (each request's path and "
                f"query are appended to it), got {redact_url(value)!r}"
            )
        return value
