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
# `network.protocol.version` of the versions aiohttp serves, formatted once; HTTP/2 and
# later are written as their major version alone, as the conventions spell them.
_VERSIONS: Final[dict[tuple[int, int], str]] = {(1, 1): "1.1", (1, 0): "1.0", (0, 9): "0.9"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
MAX_SERVER_ADDRESS: Final = 255  # characters of a host name (RFC 1035); `Host` is client-chosen
# The route label of a request no route matches (bounded, unlike its path). It is the
# sidecar's own label (logs, `sidecar.rejections`): the HTTP conventions' `http.route` is a
# matched route, so spans and `http.server.request.duration` leave it out for such requests.
NO_ROUTE: Final = "unmatched"


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


def protocol_version(version: tuple[int, int]) -> str:
    """`network.protocol.version` of an HTTP version (`1.1`, `2`): a bounded set, as the
    request parser takes one digit each."""
    known = _VERSIONS.get(version)
    if known is not None:
        return known
    major, minor = version
    return str(major) if major >= 2 and minor == 0 else f"{major}.{minor}"


# `server_address`'s answers by (`Host`, scheme): a sidecar is asked by the same few names,
# so most requests are one lookup (bounded: `Host` is the client's choice).
_ADDRESSES: dict[tuple[str, str], tuple[str, int]] = {}
_ADDRESSES_LIMIT: Final = 256


def server_address(host: str, scheme: str) -> tuple[str, int]:
    """`server.address` and `server.port` of a server span, from the request's `Host`
    (`name`, `name:port`, `[v6]:port`); the scheme's default port when it names none.
    The name is cut to `MAX_SERVER_ADDRESS` characters: the client chose it."""
    try:
        return _ADDRESSES[host, scheme]
    except KeyError:
        pass
    if len(_ADDRESSES) >= _ADDRESSES_LIMIT:
        _ADDRESSES.clear()
    found = _ADDRESSES[host, scheme] = _parse_host(host, scheme)
    return found


def _parse_host(host: str, scheme: str) -> tuple[str, int]:
    name, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            name, port = host[1:end], host[end + 2 :] if host[end + 1 : end + 2] == ":" else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    if len(name) > MAX_SERVER_ADDRESS:
        name = name[:MAX_SERVER_ADDRESS]
    if port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535:
        return name, int(port)
    return name, _DEFAULT_PORTS.get(scheme, 80)


def server_span_name(method: str, route: str) -> str:
    """A server span's name as the HTTP conventions give it: `{method} {http.route}`, the
    method `HTTP` when it is outside the known set (`_OTHER`), and no route part for a
    request no route matched (`NO_ROUTE`)."""
    shown = method if method in KNOWN_METHODS else "HTTP"
    return shown if route == NO_ROUTE else f"{shown} {route}"


def server_error_type(status: int) -> str | None:
    """`error.type` of a server request by its status: the code for a 5xx, else none (a
    4xx is the client's error, not the server's)."""
    return str(status) if status >= 500 else None


def server_duration_attributes(
    method: str, scheme: str, route: str, status: int, version: str = ""
) -> dict[str, Any]:
    """The attributes of an `http.server.request.duration` point (all bounded): those the
    HTTP conventions list for it, without the opt-in `server.address` / `server.port`,
    and without `http.route` when no route matched."""
    attributes: dict[str, Any] = {
        "http.request.method": http_method(method), "url.scheme": scheme,
        "http.response.status_code": status,
    }  # fmt: skip
    if route != NO_ROUTE:  # `http.route` only for a matched route
        attributes["http.route"] = route
    if version:
        attributes["network.protocol.version"] = version
    error = server_error_type(status)
    if error is not None:
        attributes["error.type"] = error
    return attributes
