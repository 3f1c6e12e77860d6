"""The `telemetry` section: exporters, logs, identities on spans and the price table."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from sidecar.config.fields import HttpUrl, Section

# `telemetry.user_hash_key`: at least the size of an HMAC-SHA256 key (RFC 2104).
MIN_HASH_KEY_BYTES: Final = 32


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
    # With `hashed`: pseudonyms are an HMAC-SHA256 under this key, which nobody reading
    # spans or logs can reverse by hashing guessed names (None: a plain SHA-256).
    user_hash_key: SecretStr | None = None
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)

    @field_validator("otlp_endpoint")
    @classmethod
    def _base_url_only(cls, value: str | None) -> str | None:
        # The signal paths are joined on (`/v1/traces`), so a query would end up in the
        # path, and the exporters log the URL they failed to reach, query and all: a key
        # written there would be sent to the wrong place and printed in the logs.
        if value is not None and ("?" in value or "#" in value):
            raise ValueError(
                "must be a base URL without a query or fragment; "
                "send credentials as OTEL_EXPORTER_OTLP_HEADERS"
            )
        return value

    @field_validator("user_hash_key")
    @classmethod
    def _key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # A short key can itself be guessed, and with it every pseudonym reversed.
        if value is not None and len(value.get_secret_value().encode()) < MIN_HASH_KEY_BYTES:
            raise ValueError(
                f"must be at least {MIN_HASH_KEY_BYTES} bytes (the size of an HMAC-SHA256 "
                "key, RFC 2104); e.g. the output of `openssl rand -hex 32`"
            )
        return value

    @model_validator(mode="after")
    def _key_only_for_hashed(self) -> TelemetryConfig:
        if self.user_hash_key is not None and self.user_attribute != "hashed":
            raise ValueError(
                f"user_hash_key is set but user_attribute is {self.user_attribute!r}: "
                "only `hashed` pseudonyms use it"
            )
        return self
