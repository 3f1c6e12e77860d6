"""The `claude` section: the upstream, its key, models, retries, timeouts and the queue."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from sidecar.config.fields import (
    MAX_SECONDS,
    Seconds,
    SecondsOrZero,
    Section,
    check_http_url,
    redact_url,
)
from sidecar.int64 import INT64


class QueueConfig(Section):
    max_waiting: int = Field(512, ge=0)
    max_wait_seconds: SecondsOrZero = 10


class FakeClaudeConfig(Section):
    """Pacing of the built-in fake model (`base_url: builtin:fake`)."""

    tokens: int = Field(40, gt=0)
    tokens_per_second: float = Field(50, ge=0)
    time_to_first_token_ms: float = Field(150, ge=0, le=MAX_SECONDS * 1000)


class ClaudeConfig(Section):
    base_url: str = "builtin:fake"
    api_key: SecretStr | None = None
    model: str = "claude-sonnet-5-5"
    max_tokens: int = Field(1024, gt=0, lt=INT64)  # as a request's
    allowed_models: list[str] | None = None
    # Anthropic API paths besides /v1/messages and /v1/messages/count_tokens that are
    # forwarded (prefixes, whole segments); anything else is a 403. Open batches or files
    # only knowingly: they spend the sidecar's key outside screening and token quotas.
    forward_paths: list[str] = Field(default_factory=lambda: ["/v1/models"])
    anthropic_version: str = "2023-06-01"
    max_retries: int = Field(3, ge=0, le=10)
    retry_base_seconds: Seconds = 0.5
    retry_max_seconds: Seconds = 8
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
        if value == "builtin:fake":
            return value
        try:
            url = check_http_url(value)
        except ValueError:  # the one value that is no URL is named too (a typo of it)
            shown = redact_url(value)
            raise ValueError(
                f"must be builtin:fake or an http:// or https:// URL, got {shown!r}"
            ) from None
        # Only the scheme, host, port and path of it are used (the call's path is joined
        # on): credentials, a query or a fragment would be accepted and never sent.
        if "?" in url or "#" in url or URL(url).raw_user is not None:
            raise ValueError(
                "must be a base URL without credentials, a query or a fragment (only its "
                "scheme, host, port and path are used; the sidecar's key is claude.api_key), "
                f"got {redact_url(value)!r}"
            )
        return url

    @model_validator(mode="after")
    def _key_for_a_real_claude(self) -> ClaudeConfig:
        # Without its key every call to a real Claude is a 401 that each client sees as a
        # 502: caught by `sidecar check`, before the sidecar takes traffic.
        if not self.is_fake and not (self.api_key and self.api_key.get_secret_value().strip()):
            raise ValueError(
                "api_key: needed when base_url is not builtin:fake (the sidecar's own key;"
                " clients never send it)"
            )
        return self

    @property
    def is_fake(self) -> bool:
        return self.base_url == "builtin:fake"
