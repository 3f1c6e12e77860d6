"""The `cors`, `screening` and `quotas` sections: the policies a request passes."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    GetJsonSchemaHandler,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from sidecar.config.fields import Seconds, Section

# What browsers send to Claude routes, the official JS SDK with `dangerouslyAllowBrowser`
# included (`x-stainless-*` is a prefix: the SDK adds new names of that family over time).
_DEFAULT_ALLOW_HEADERS = [
    "authorization", "content-type", "x-api-key", "anthropic-version", "anthropic-beta",
    "anthropic-dangerous-direct-browser-access", "x-stainless-*",
    "last-event-id", "x-request-id", "traceparent", "tracestate", "sidecar-resume", "user-agent",
]  # fmt: skip
_DEFAULT_EXPOSE_HEADERS = [
    "x-request-id", "request-id", "retry-after", "retry-after-ms", "x-should-retry",
    "sidecar-stream-id",
    "sidecar-resume", "x-cache", "age",
    "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit", "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset",
]  # fmt: skip


def _as_browsers_send(origin: str) -> str:
    """`https://App.Example.com:443` as a browser's Origin: host in lower case, no default port."""
    if origin == "*":
        return origin
    scheme, _, host = origin.partition("://")
    default = ":443" if scheme == "https" else ":80"
    host = host.lower()
    return f"{scheme}://{host.removesuffix(default)}"


_HTTP_TOKEN = re.compile(r"[!#$%&'+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token, without `*`
_ORIGIN = re.compile(
    r"https?://(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


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

    @field_validator("allow_methods")
    @classmethod
    def _method_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HTTP_TOKEN.fullmatch(name):
                # A preflight is granted only a method on the list, compared by name: `*`
                # would be a method no browser asks for, and every preflight would be 403.
                raise ValueError(f"{name!r} is not a method name: list each method")
        return value

    @field_validator("expose_headers")
    @classmethod
    def _exposed_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if name != "*" and not _HTTP_TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    @field_validator("allow_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            # A host name or a bracketed IPv6 address, and a port: a pattern (`*.example.com`),
            # userinfo, a query or a path is no origin a browser sends, so it would match
            # nothing while looking like it allows something.
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin (scheme://host[:port], no path; origins are "
                    "matched exactly: list each one, no '*.' patterns)"
                )
        return [_as_browsers_send(origin) for origin in value]

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("'*' in allow_origins cannot be combined with allow_credentials")
        if self.allow_credentials and "*" in self.expose_headers:
            # With credentials, browsers read `*` as a header named `*`: nothing is exposed.
            raise ValueError(
                "'*' in expose_headers exposes nothing with allow_credentials: list the names"
            )
        return self


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


def compile_re2_set(patterns: list[str]) -> Any:
    """The deny rules as one RE2 set, as screening runs them (one pass per text).

    A set is matched by RE2's DFA alone, within RE2's memory budget, and refuses to compile
    when that DFA could not run: a pattern that compiles on its own (`compile_re2`) may not
    (a wide Unicode class repeated, `\\pL{0,300}`), nor may patterns that each fit
    alone. ValueError then, so `sidecar check` and a reload report it, never a crash at start.
    """
    import re2

    rules = re2.Set.SearchSet(re2_options())
    try:
        for pattern in patterns:
            rules.Add(pattern)
        rules.Compile()
    except re2.error:
        raise ValueError(
            "too large for RE2's memory budget (screening runs every rule in one DFA pass)"
        ) from None
    return rules


def _check_pattern(pattern: str) -> str:
    compile_re2(pattern)  # names what RE2 refuses (a backreference, lookaround)
    try:
        compile_re2_set([pattern])
    except ValueError as exc:
        raise ValueError(f"does not compile in RE2: {exc}") from None
    return pattern


Pattern = Annotated[str, AfterValidator(_check_pattern)]


class DenyRule(Section):
    name: str = Field(min_length=1)
    pattern: Pattern


class _OrPlainPattern:
    """A deny rule's JSON Schema also takes a plain pattern, as the loader does (editors
    checking a config against `sidecar schema` must not flag `deny_patterns: ["..."]`)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [{"type": "string"}, handler(schema)]}


class ScreeningConfig(Section):
    max_prompt_chars: int = Field(10000, gt=0)
    max_attachment_bytes: int = Field(5 * 1024 * 1024, gt=0)
    # A plain string is a rule named by its index: `["(?i)secret"]` == `[{name: "0", ...}]`.
    deny_patterns: list[Annotated[DenyRule, _OrPlainPattern()]] = Field(default_factory=list)
    # Match deny rules also against the text with invisible characters removed, NFKC
    # applied and whitespace folded, and with combining marks removed and look-alike
    # letters read as ASCII (see docs/security.md for what this does not catch).
    normalize: bool = False
    # A content block type screening does not know: screen every string in it, or refuse.
    unknown_blocks: Literal["screen", "refuse"] = "screen"
    # Content Claude reads that the request does not hold (a url or file source, remote MCP
    # servers, the web search/fetch tools, a container): let it through unscreened, or refuse.
    remote_content: Literal["allow", "refuse"] = "allow"

    @field_validator("deny_patterns", mode="before")
    @classmethod
    def _name_plain_patterns(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [
            {"name": str(i), "pattern": rule} if isinstance(rule, str) else rule
            for i, rule in enumerate(value)
        ]

    @field_validator("deny_patterns")
    @classmethod
    def _rules_compile_together(cls, value: list[DenyRule]) -> list[DenyRule]:
        # Each rule compiled alone (its own path names it); all of them are one set.
        if len(value) > 1:
            try:
                compile_re2_set([rule.pattern for rule in value])
            except ValueError as exc:
                raise ValueError(
                    f"together the rules do not compile in RE2: {exc}; use fewer or smaller"
                    " patterns"
                ) from None
        return value


# The largest limit a quota store counts exactly: Redis's scripts hold numbers as doubles,
# exact up to 2**53 (a larger limit would be rounded, and past 2**63 not counted at all).
MAX_LIMIT: Final = 2**53


class QuotaConfig(Section):
    store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None
    redis_timeout_seconds: Seconds = 1.0
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    key: Literal["user", "api_key", "tenant", "client_ip"] = "user"
    # A client counted by IP: an IPv6 client by its network of this length (a /64 is what
    # one subscriber is given: rotating addresses inside it is one client); IPv4 as is.
    ipv6_prefix_length: int = Field(64, ge=1, le=128)
    requests_per_minute: int | None = Field(None, gt=0, le=MAX_LIMIT)
    tokens_per_minute: int | None = Field(None, gt=0, le=MAX_LIMIT)
    tokens_per_day: int | None = Field(None, gt=0, le=MAX_LIMIT)
    concurrent_streams: int | None = Field(None, gt=0, le=MAX_LIMIT)
    lease_seconds: Seconds = 60
    # The most a call reserves for one image: what Claude charges the largest image (4784,
    # Claude Opus 4.7's limit), reserved for an image whose size is not in the request (a
    # `url` or `file` source, a header not read); an inline image whose header gives its
    # size reserves what Claude charges for that size, up to this. Settled to usage.
    image_tokens: int = Field(4784, ge=0, le=MAX_LIMIT)
    # What a call reserves for each document Claude reads from elsewhere (a `url` or `file`
    # source: no bytes in the request to estimate from); settled to usage.
    remote_document_tokens: int = Field(30000, ge=0, le=MAX_LIMIT)

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
