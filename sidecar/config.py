"""Typed configuration: a frozen pydantic model for every section of the YAML file.

Loading (YAML, `${VAR}` interpolation, collecting every problem, route overrides merged
onto their sections) lives in `sidecar.loader`; behaviour lives in the modules that
consume a section. The models check values at load so that a config that validates
also works: host:port pairs, header names, URLs (Redis ones as redis-py parses them),
RE2 patterns and JWT key files (read, and matched to the algorithms) fail `sidecar
check`, not the first request. Every model forbids unknown keys, so a typo is an
error, never a silent default.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    create_model,
    field_validator,
    model_validator,
)

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\s\[\]]*)):(?P<port>\d{1,5})$")


def split_host_port(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:8080`); raise ValueError if malformed."""
    match = _HOST_PORT.match(value)
    if match is None:
        raise ValueError(f"must be host:port, got {value!r}")
    port = int(match["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return (match["v6"] or match["host"] or "0.0.0.0"), port


def _check_host_port(value: str) -> str:
    split_host_port(value)
    return value


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@]*)@")


def redact_url(value: str) -> str:
    """A URL without the password in its userinfo (`https://user:***@host/...`)."""
    match = _USERINFO.match(value)
    if match is None or ":" not in match["userinfo"]:
        return value
    user = match["userinfo"].partition(":")[0]
    return f"{match['scheme']}{user}:***@{value[match.end() :]}"


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"must be an http:// or https:// URL, got {redact_url(value)!r}")
    return value.rstrip("/")


def _check_header_name(value: str) -> str:
    # A name that is not an RFC 9110 token breaks every response (or request) it is put on.
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"{value!r} is not an HTTP header name")
    return value


HostPort = Annotated[str, AfterValidator(_check_host_port)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
Seconds = Annotated[float, Field(gt=0)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Section(BaseModel):
    """Base of every config model: strict keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """What these settings are, secrets included (as SHA-256 hashes), as one string.

        For de-duplicating and caching per policy: a redacted dump would make two policies
        that differ only in a secret look the same, and one would serve the other's route.
        """
        return json.dumps(_hashed_secrets(self.model_dump(mode="python")), default=str)


def _hashed_secrets(data: Any) -> Any:
    if isinstance(data, SecretStr):
        return "sha256:" + hashlib.sha256(data.get_secret_value().encode()).hexdigest()
    if isinstance(data, dict):
        return {key: _hashed_secrets(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_hashed_secrets(value) for value in data]
    return data


# --------------------------------------------------------------------------- server


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
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ServerConfig(Section):
    listen: HostPort = "0.0.0.0:8080"
    admin_listen: HostPort = "0.0.0.0:9090"
    max_body_bytes: int = Field(1048576, gt=0)
    shutdown_grace_seconds: float = Field(30, ge=0)
    trusted_proxies: list[Network] = Field(default_factory=list)
    tls: TLSConfig = TLSConfig()
    request_id_header: HeaderName = "X-Request-Id"
    reload_poll_seconds: float = Field(2, ge=0)  # watch the config file; 0 = SIGHUP only
    # Slow clients: a request head must arrive within this long of its first byte (of the
    # connection, for the first request); a body the sidecar reads whole (Claude routes)
    # within body_read; a body streamed to the app may pause at most body_idle between bytes.
    header_read_timeout_seconds: Seconds = 10
    body_read_timeout_seconds: Seconds = 60
    body_idle_timeout_seconds: Seconds = 30

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        traffic, admin = split_host_port(self.listen), split_host_port(self.admin_listen)
        if traffic[1] != 0 and traffic == admin:
            raise ValueError("listen and admin_listen must differ")
        return self


# --------------------------------------------------------------------------- app


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

    @field_validator("user", "tenant", "api_key_name")
    @classmethod
    def _not_a_proxy_header(cls, value: str) -> str:
        if value.lower() in _PROXY_SET_HEADERS:
            raise ValueError(f"{value!r} is set by the proxy itself; choose another name")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> IdentityHeaders:
        # `_` and `-` are one to WSGI/CGI apps, and a shared name would carry the wrong value.
        names = {n.lower().replace("_", "-") for n in (self.user, self.tenant, self.api_key_name)}
        if len(names) != 3:
            raise ValueError("user, tenant and api_key_name must be different headers")
        return self


class AppConfig(Section):
    url: HttpUrl = "http://127.0.0.1:3000"
    connect_timeout_seconds: Seconds = 5
    read_timeout_seconds: Seconds = 300
    identity_headers: IdentityHeaders = IdentityHeaders()


# --------------------------------------------------------------------------- claude


class QueueConfig(Section):
    max_waiting: int = Field(512, ge=0)
    max_wait_seconds: float = Field(10, ge=0)


class FakeClaudeConfig(Section):
    """Pacing of the built-in fake model (`base_url: builtin:fake`)."""

    tokens: int = Field(40, gt=0)
    tokens_per_second: float = Field(50, ge=0)
    time_to_first_token_ms: float = Field(150, ge=0)


class ClaudeConfig(Section):
    base_url: str = "builtin:fake"
    api_key: SecretStr | None = None
    model: str = "claude-sonnet-5-5"
    max_tokens: int = Field(1024, gt=0)
    allowed_models: list[str] | None = None
    # Anthropic API paths besides /v1/messages and /v1/messages/count_tokens that are
    # forwarded (prefixes, whole segments); anything else is a 403. Open batches or files
    # only knowingly: they spend the sidecar's key outside screening and token quotas.
    forward_paths: list[str] = Field(default_factory=lambda: ["/v1/models"])
    anthropic_version: str = "2023-06-01"
    max_retries: int = Field(3, ge=0, le=10)
    retry_base_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(8, gt=0)
    connect_timeout_seconds: Seconds = 10
    idle_timeout_seconds: Seconds = 30  # streaming: longest silence between events
    request_timeout_seconds: Seconds = 600  # non-streaming: the whole call (Claude answers at once)
    heartbeat_seconds: Seconds = 15
    # A stream whose client accepts no bytes this long is ended (Claude cancelled, settled):
    # a reader that never reads must not hold a stream slot forever.
    client_stall_timeout_seconds: Seconds = 60
    max_concurrent_streams: int = Field(256, gt=0)
    queue: QueueConfig = QueueConfig()
    fake: FakeClaudeConfig = FakeClaudeConfig()

    @field_validator("forward_paths")
    @classmethod
    def _api_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/v1/") or path.rstrip("/") == "/v1":
                raise ValueError(f"{path!r} is not an Anthropic API path below /v1/")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return value if value == "builtin:fake" else _check_http_url(value)

    @property
    def is_fake(self) -> bool:
        return self.base_url == "builtin:fake"


# --------------------------------------------------------------------------- auth

_HS = {"HS256", "HS384", "HS512"}
_ASYMMETRIC = {
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K", "EdDSA",
}  # fmt: skip


def _key_algorithms(key: object) -> tuple[str, ...]:
    """Which JWT algorithm prefixes a public key can verify."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return ("RS", "PS")
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ES",)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def _check_public_key(path: Path, algorithms: list[str], jwks_url: str | None) -> None:
    """A bad key file is a config error, not a crash at start."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError:
        raise ValueError(f"public_key_file not readable: {path}") from None
    except (ValueError, TypeError):
        raise ValueError(f"public_key_file is not a PEM public key: {path}") from None
    usable = any(alg.startswith(_key_algorithms(key)) for alg in algorithms)
    if jwks_url is None and not usable:
        raise ValueError(f"public_key_file holds a key none of the algorithms {algorithms} fit")


class JWTConfig(Section):
    secret: SecretStr | None = None
    public_key_file: Path | None = None
    jwks_url: HttpUrl | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"], min_length=1)
    issuer: str | None = None
    audience: str | list[str] | None = None
    user_claim: str = "sub"
    tenant_claim: str | None = None
    query_param: str | None = None
    leeway_seconds: float = Field(30, ge=0, le=300)
    jwks_refresh_seconds: Seconds = 300
    jwks_min_refresh_seconds: Seconds = 10

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in _HS | _ASYMMETRIC]
        if unknown:
            raise ValueError(f"unsupported algorithms {unknown} (alg 'none' is never allowed)")
        return value

    @model_validator(mode="after")
    def _keys_match_algorithms(self) -> JWTConfig:
        if self.secret is None and self.public_key_file is None and self.jwks_url is None:
            raise ValueError("set secret, public_key_file or jwks_url")
        wants_hs = any(alg in _HS for alg in self.algorithms)
        wants_asym = any(alg in _ASYMMETRIC for alg in self.algorithms)
        if wants_hs and self.secret is None:
            raise ValueError("HS* algorithms need a secret")
        if wants_asym and self.public_key_file is None and self.jwks_url is None:
            raise ValueError("RS*/PS*/ES*/EdDSA algorithms need public_key_file or jwks_url")
        if self.secret is not None and not wants_hs:
            raise ValueError("secret is set but no HS* algorithm is listed")
        if self.secret is not None and len(self.secret.get_secret_value().encode()) < 32:
            raise ValueError("secret must be at least 32 bytes (RFC 7518 3.2)")
        if self.public_key_file is not None:
            _check_public_key(self.public_key_file, self.asymmetric_algorithms, self.jwks_url)
        return self

    @property
    def hs_algorithms(self) -> list[str]:
        return [alg for alg in self.algorithms if alg in _HS]

    @property
    def asymmetric_algorithms(self) -> list[str]:
        return [alg for alg in self.algorithms if alg in _ASYMMETRIC]


class ApiKeyConfig(Section):
    name: str = Field(min_length=1)
    sha256: str
    user: str | None = None
    tenant: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be the 64-character hex SHA-256 of the key")
        return value.lower()


class AuthConfig(Section):
    mode: Literal["required", "optional", "none"] = "required"
    jwt: JWTConfig | None = None
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    allowed_tenants: list[str] | None = None
    allowed_models: list[str] | None = None

    @model_validator(mode="after")
    def _has_credentials(self) -> AuthConfig:
        if self.mode != "none" and self.jwt is None and not self.api_keys:
            raise ValueError(f"mode {self.mode!r} needs jwt or api_keys")
        names = [key.name for key in self.api_keys]
        if len(names) != len(set(names)):
            raise ValueError("api_keys names must be unique")
        return self


# --------------------------------------------------------------------------- cors

# What browsers send to Claude routes, the official JS SDK with `dangerouslyAllowBrowser`
# included (`x-stainless-*` is a prefix: the SDK adds new names of that family over time).
_DEFAULT_ALLOW_HEADERS = [
    "authorization", "content-type", "x-api-key", "anthropic-version", "anthropic-beta",
    "anthropic-dangerous-direct-browser-access", "x-stainless-*",
    "last-event-id", "x-request-id", "traceparent", "tracestate", "sidecar-resume",
]  # fmt: skip
_DEFAULT_EXPOSE_HEADERS = [
    "x-request-id", "request-id", "retry-after", "retry-after-ms", "sidecar-stream-id",
    "sidecar-resume",
    "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset",
]  # fmt: skip


def _as_browsers_send(origin: str) -> str:
    """`https://App.Example.com:443` as a browser's Origin: host in lower case, no default port."""
    if origin == "*":
        return origin
    scheme, _, host = origin.partition("://")
    default = ":443" if scheme == "https" else ":80"
    host = host.lower()
    return f"{scheme}://{host.removesuffix(default)}"


class CorsConfig(Section):
    allow_origins: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    # DELETE: cancelling a resumable stream (`DELETE <route>/<stream id>`, a Stop button).
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"])
    allow_headers: list[str] = Field(default_factory=lambda: list(_DEFAULT_ALLOW_HEADERS))
    expose_headers: list[str] = Field(default_factory=lambda: list(_DEFAULT_EXPOSE_HEADERS))
    max_age_seconds: int = Field(600, ge=0)

    @field_validator("allow_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[!#$%&'+.^_`|~0-9A-Za-z-]*\*?", name) or not name:
                raise ValueError(f"{name!r} is not a header name (or a prefix ending in '*')")
        return value

    @field_validator("allow_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return [_as_browsers_send(origin) for origin in value]

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("'*' in allow_origins cannot be combined with allow_credentials")
        return self


# --------------------------------------------------------------------------- screening


def re2_options() -> Any:
    """RE2 options shared by validation and screening (errors raised, not logged)."""
    import re2

    options = re2.Options()
    options.log_errors = False
    return options


def compile_re2(pattern: str) -> Any:
    """Compile with RE2, the linear-time engine: no prompt can cause backtracking."""
    import re2

    try:
        return re2.compile(pattern, re2_options())
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"does not compile in RE2: {detail}") from None


def _check_pattern(pattern: str) -> str:
    compile_re2(pattern)
    return pattern


Pattern = Annotated[str, AfterValidator(_check_pattern)]


class DenyRule(Section):
    name: str = Field(min_length=1)
    pattern: Pattern


class ScreeningConfig(Section):
    max_prompt_chars: int = Field(10000, gt=0)
    max_attachment_bytes: int = Field(5 * 1024 * 1024, gt=0)
    # A plain string is a rule named by its index: `["(?i)secret"]` == `[{name: "0", ...}]`.
    deny_patterns: list[DenyRule] = Field(default_factory=list)
    # Match deny rules also against the text with invisible characters removed, NFKC
    # applied and whitespace folded (see docs/security.md for what this does not catch).
    normalize: bool = False
    # A content block type screening does not know: screen every string in it, or refuse.
    unknown_blocks: Literal["screen", "refuse"] = "screen"

    @field_validator("deny_patterns", mode="before")
    @classmethod
    def _name_plain_patterns(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [
            {"name": str(i), "pattern": rule} if isinstance(rule, str) else rule
            for i, rule in enumerate(value)
        ]


# --------------------------------------------------------------------------- quotas


class QuotaConfig(Section):
    store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None
    redis_timeout_seconds: Seconds = 1.0
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    key: Literal["user", "api_key", "tenant", "client_ip"] = "user"
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)
    tokens_per_day: int | None = Field(None, gt=0)
    concurrent_streams: int | None = Field(None, gt=0)
    lease_seconds: float = Field(60, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_can_use(cls, value: SecretStr | None) -> SecretStr | None:
        # What redis-py's from_url would refuse at start; the message never echoes the URL.
        if value is None:
            return value
        try:
            parsed = urlsplit(value.get_secret_value())
            parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _redis_needs_url(self) -> QuotaConfig:
        if self.store == "redis" and self.redis_url is None:
            raise ValueError("store 'redis' needs redis_url")
        return self

    @property
    def enabled(self) -> bool:
        # Read on every Claude call: plain tests, no generator.
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.tokens_per_day is not None
            or self.concurrent_streams is not None
        )


# --------------------------------------------------------------------------- resume


class ResumeConfig(Section):
    """Resumable streams: every event is kept for `ttl_seconds` so a client can reconnect."""

    enabled: bool = True
    store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None  # None: quotas.redis_url
    redis_timeout_seconds: Seconds = 1.0
    ttl_seconds: Seconds = 300
    detach_grace_seconds: float = Field(15, ge=0)
    max_buffer_bytes: int = Field(1024 * 1024, gt=0)  # per stream
    max_total_bytes: int = Field(256 * 1024 * 1024, gt=0)  # memory store, all streams
    max_subscribers: int = Field(4, gt=0)  # clients reading one stream at once
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"

    @field_validator("redis_url")
    @classmethod
    def _redis_can_use(cls, value: SecretStr | None) -> SecretStr | None:
        return QuotaConfig._redis_can_use(value)


# --------------------------------------------------------------------------- cache


class CacheConfig(Section):
    """The response cache: complete answers replayed for identical requests (off by default)."""

    enabled: StrictBool = False
    store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None  # None: quotas.redis_url
    redis_timeout_seconds: Seconds = 1.0
    ttl_seconds: Seconds = 3600
    max_entries: int = Field(1000, gt=0)  # memory store
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)  # memory store, all entries
    scope: Literal["tenant", "user", "global"] = "tenant"
    include_sampled: StrictBool = False
    replay: Literal["instant", "paced"] = "instant"
    charge_hits: StrictBool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_can_use(cls, value: SecretStr | None) -> SecretStr | None:
        return QuotaConfig._redis_can_use(value)


# --------------------------------------------------------------------------- telemetry


class ModelPrice(Section):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write: float = Field(0, ge=0)
    cache_read: float = Field(0, ge=0)


def _default_prices() -> dict[str, ModelPrice]:
    return {
        "claude-opus-5-5": ModelPrice(input=15, output=75, cache_write=18.75, cache_read=1.5),
        "claude-sonnet-5-5": ModelPrice(input=3, output=15, cache_write=3.75, cache_read=0.3),
        "claude-haiku-5-5": ModelPrice(input=1, output=5, cache_write=1.25, cache_read=0.1),
    }


class TelemetryConfig(Section):
    service_name: str = "claude-sidecar"
    otlp_endpoint: HttpUrl | None = None
    otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    prometheus: bool = True
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True
    # The per-call lines wait at most this long to be written, together (0: at the end of
    # the event-loop turn that logged them); WARNING and above at the end of their turn.
    log_flush_seconds: float = Field(0.02, ge=0, le=10)
    capture_content: bool = False
    user_attribute: Literal["none", "hashed", "plain"] = "hashed"
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)


# --------------------------------------------------------------------------- browser


class BrowserConfig(Section):
    """The browser client module (and the demo page) served under `path`."""

    enabled: bool = True
    path: str = "/_sidecar"
    demo: bool = False

    @field_validator("path")
    @classmethod
    def _prefix(cls, value: str) -> str:
        segments = value.split("/")[1:]
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value) or {".", ".."} & set(segments):
            raise ValueError("must be an absolute path like /_sidecar (no trailing slash)")
        return value


# --------------------------------------------------------------------------- ui route


class UiConfig(Section):
    """The `ui` route (the AI SDK's UI message stream): what the sidecar adds to each call.

    Browsers are untrusted: the request's own `system` and `model` are refused unless
    accepted here, and the tools offered to Claude come from this file, never the body.
    """

    system: str | None = None  # a system prompt the sidecar puts first
    accept_system: bool = False  # the body's `system` and system-role messages
    accept_model: bool = False  # the body's `model` (still within claude.allowed_models)
    model: str | None = None  # defaults to claude.model
    max_tokens: int | None = Field(None, gt=0)  # defaults to claude.max_tokens
    thinking_budget_tokens: int | None = Field(None, ge=1024)  # extended thinking when set
    tools: list[dict[str, Any]] = Field(default_factory=list)  # Claude tool definitions

    @field_validator("tools")
    @classmethod
    def _named_tools(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for tool in value:
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise ValueError("every tool needs a name (and an input_schema)")
        return value


# --------------------------------------------------------------------------- routes

Handler = Literal["prompt", "anthropic", "ui", "app"]


def _override_type(annotation: Any) -> Any:
    """`annotation` with every section model in it replaced by its override model."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return override_model(annotation)
    if get_origin(annotation) in (Union, UnionType):
        args = tuple(_override_type(arg) for arg in get_args(annotation))
        return Union[args]  # noqa: UP007 - built from a runtime tuple
    return annotation


def _unless_none(func: Callable[..., Any]) -> Callable[..., Any]:
    """A field validator that lets an override's explicit `null` through (it unsets a key)."""

    @functools.wraps(func)  # pydantic reads the signature (info or not) through `__wrapped__`
    def validate(cls: Any, value: Any, *rest: Any) -> Any:
        return value if value is None else func(cls, value, *rest)

    return validate


def override_model(model: type[Section]) -> type[Section]:
    """`model` with every field optional and unset by default: a route's partial override.

    Field types stay (so secrets stay `SecretStr` and are redacted wherever the config is
    shown), field validators stay (they normalise, e.g. plain deny patterns), and checks
    across fields are left to the merged section, which the loader validates with `model`.
    """
    cached = _OVERRIDES.get(model)
    if cached is not None:
        return cached
    fields: dict[str, Any] = {
        name: (_override_type(info.annotation) | None, None)
        for name, info in model.model_fields.items()
    }
    validators: dict[str, Any] = {
        f"_{name}": field_validator(*dec.info.fields, mode=dec.info.mode, check_fields=False)(
            classmethod(_unless_none(getattr(dec.func, "__func__", dec.func)))
        )
        for name, dec in model.__pydantic_decorators__.field_validators.items()
    }
    built: type[Section] = create_model(
        f"{model.__name__.removesuffix('Config')}Override",
        __base__=Section,
        __doc__=f"A route's override of `{model.__name__}`: only the keys it sets are merged.",
        __validators__=validators,
        **fields,
    )
    _OVERRIDES[model] = built
    return built


_OVERRIDES: dict[type[Section], type[Section]] = {}

if TYPE_CHECKING:
    AuthOverride = Section
    CorsOverride = Section
    ScreeningOverride = Section
    QuotaOverride = Section
    CacheOverride = Section
else:
    AuthOverride = override_model(AuthConfig)
    CorsOverride = override_model(CorsConfig)
    ScreeningOverride = override_model(ScreeningConfig)
    QuotaOverride = override_model(QuotaConfig)
    CacheOverride = override_model(CacheConfig)


class ResumeOverride(Section):
    """A route's resume switch: only `enabled` may be set per route."""

    enabled: StrictBool


class RouteConfig(Section):
    path: str
    handler: Handler
    # Partial overrides, deep-merged onto the top-level section of the same name
    # and validated with the same model (see `sidecar.loader.route_policies`).
    auth: AuthOverride | None = None
    cors: CorsOverride | None = None
    screening: ScreeningOverride | None = None
    quotas: QuotaOverride | None = None
    # Only `enabled` may be set per route; on an anthropic route it makes resume the
    # default (else a request opts in with the `Sidecar-Resume: on` header).
    resume: ResumeOverride | None = None
    # The store (`store`, `redis_url`, sizes) is one per process: top level only.
    cache: CacheOverride | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


def _default_routes(has_app: bool) -> list[dict[str, str]]:
    routes = [
        {"path": "/api/stream-response", "handler": "prompt"},
        {"path": "/v1/", "handler": "anthropic"},
        {"path": "/api/chat", "handler": "ui"},
    ]
    if has_app:
        routes.append({"path": "/", "handler": "app"})
    return routes


class Config(Section):
    server: ServerConfig = ServerConfig()
    app: AppConfig | None = None
    claude: ClaudeConfig = ClaudeConfig()
    auth: AuthConfig = AuthConfig(mode="none")
    cors: CorsConfig = CorsConfig()
    screening: ScreeningConfig = ScreeningConfig()
    quotas: QuotaConfig = QuotaConfig()
    resume: ResumeConfig = ResumeConfig()
    cache: CacheConfig = CacheConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    browser: BrowserConfig = BrowserConfig()
    ui: UiConfig = UiConfig()
    routes: list[RouteConfig] = Field(default_factory=list)
    # Each route's effective policy, built once by the loader (`sidecar.loader.route_policies`).
    _route_policies: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _fill_default_routes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("routes") is None:
            data = {**data, "routes": _default_routes(data.get("app") is not None)}
        return data

    @model_validator(mode="after")
    def _routes_consistent(self) -> Config:
        if not self.routes:
            raise ValueError("routes: at least one route is needed")
        if self.app is None and any(route.handler == "app" for route in self.routes):
            raise ValueError("routes: handler 'app' needs the app section (app.url)")
        paths = [route.path for route in self.routes]
        if len(paths) != len(set(paths)):
            raise ValueError("routes: paths must be unique")
        resume = self.resume
        if resume.enabled and resume.store == "redis" and self.resume_redis_url is None:
            raise ValueError("resume: store 'redis' needs resume.redis_url or quotas.redis_url")
        return self

    @property
    def cache_redis_url(self) -> SecretStr | None:
        """Where the Redis cache lives: its own URL, else the quota store's."""
        return self.cache.redis_url or self.quotas.redis_url

    @property
    def cache_used(self) -> bool:
        """The cache is on at the top level or on some route (the store is then opened)."""
        if self.cache.enabled:
            return True
        return any(
            route.cache is not None and getattr(route.cache, "enabled", None)
            for route in self.routes
        )

    @property
    def resume_redis_url(self) -> SecretStr | None:
        """Where the Redis resume store lives: its own URL, else the quota store's."""
        return self.resume.redis_url or self.quotas.redis_url
