"""Which semantic-convention names the sidecar emits, chosen once per process.

The GenAI conventions are still in development and renamed their inference metrics.
As the spec prescribes for the migration, the names emitted by default do not change;
`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` (a comma-separated list)
switches spans and metrics to the latest names instead of the old ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
GEN_AI_LATEST: Final = "gen_ai_latest_experimental"

# HTTP methods the HTTP conventions know; any other is recorded as `_OTHER` (client-chosen).
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
OTHER_METHOD: Final = "_OTHER"


@dataclass(frozen=True, slots=True)
class GenAiNames:
    """The names of one GenAI convention version."""

    latest: bool
    duration: str
    time_to_first_chunk: str
    time_per_output_chunk: str
    cache_write_attribute: str  # span attribute of tokens written to Claude's prompt cache


DEFAULT: Final = GenAiNames(
    latest=False,
    duration="gen_ai.client.operation.duration",
    time_to_first_chunk="gen_ai.client.operation.time_to_first_chunk",
    time_per_output_chunk="gen_ai.client.operation.time_per_output_chunk",
    cache_write_attribute="gen_ai.usage.cache_creation.input_tokens",
)
LATEST: Final = GenAiNames(
    latest=True,
    duration="gen_ai.client.inference.duration",
    time_to_first_chunk="gen_ai.client.inference.time_to_first_chunk",
    time_per_output_chunk="gen_ai.client.inference.time_per_output_chunk",
    cache_write_attribute="gen_ai.usage.cache_write.input_tokens",
)


def gen_ai_names(env: Mapping[str, str] | None = None) -> GenAiNames:
    """The latest names when `gen_ai_latest_experimental` is opted into, else the defaults."""
    environ = os.environ if env is None else env
    values = {part.strip().lower() for part in environ.get(OPT_IN_ENV, "").split(",")}
    return LATEST if GEN_AI_LATEST in values else DEFAULT


def http_method(method: str) -> str:
    """The method as the HTTP conventions record it: a known method, else `_OTHER`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def server_error_type(status: int) -> str | None:
    """`error.type` of a server request by its status: the code for a 5xx, else none (a
    4xx is the client's error, not the server's)."""
    return str(status) if status >= 500 else None


def server_duration_attributes(method: str, scheme: str, route: str, status: int) -> dict[str, Any]:
    """The attributes of an `http.server.request.duration` point (all bounded)."""
    attributes: dict[str, Any] = {
        "http.request.method": http_method(method), "url.scheme": scheme,
        "http.route": route, "http.response.status_code": status,
    }  # fmt: skip
    error = server_error_type(status)
    if error is not None:
        attributes["error.type"] = error
    return attributes
