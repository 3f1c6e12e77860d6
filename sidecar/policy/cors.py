"""CORS: exact-origin allow-list, preflights answered here, `Vary: Origin` always.

`allow_headers` entries are header names, or a prefix ending in `*` (`x-stainless-*`, the
family of headers the official JS SDK sends from a browser). A preflight that passes is
answered with exactly the headers it asked for, so patterns never reach a browser, which
would read `*` as a literal name whenever credentials are allowed.

The resume protocol's own headers are always part of the grant, whatever the lists say:
`Last-Event-ID` and `Sidecar-Resume` may be sent, `Sidecar-Stream-Id` and `Sidecar-Resume`
are readable. A browser client cannot resume or cancel a stream without them (before its
first event, the stream id is only in the header), and they reveal nothing the stream's own
event ids do not; a custom list written for the app's own headers must not break resume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.config import CorsConfig

_VARY = "Origin"
# An HTTP token (RFC 9110 §5.6.2), bounded: only such names are ever quoted in a refusal.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# The resume protocol's headers (see the module docstring): always allowed and exposed.
PROTOCOL_REQUEST_HEADERS = ("last-event-id", "sidecar-resume")
PROTOCOL_RESPONSE_HEADERS = ("sidecar-stream-id", "sidecar-resume")


def merge_vary(existing: str | None) -> str:
    """`Vary` that keeps what the app varies on and adds `Origin` (caches must not mix them)."""
    if not existing:
        return _VARY
    names = [name.strip() for name in existing.split(",") if name.strip()]
    if "*" in names or any(name.lower() == "origin" for name in names):
        return ", ".join(names)
    return ", ".join([*names, _VARY])


def origin_of(scheme: str, host: str) -> str:
    """`scheme://host[:port]` as a browser writes its Origin: lower case, no default port."""
    scheme = scheme.lower()
    host = host.lower()
    name, colon, port = host.rpartition(":")
    if colon and port == _DEFAULT_PORTS.get(scheme):
        host = name  # `[::1]:443` → `[::1]`; in `[::1]` the last colon is inside the brackets
    return f"{scheme}://{host}"


@dataclass(frozen=True, slots=True)
class PreflightAnswer:
    """A preflight's verdict: the status, headers to send, and, when refused, what was refused."""

    status: int
    headers: dict[str, str]
    refused: str | None = None  # a message safe to show: names only validated tokens


class CorsPolicy:
    """One route's CORS policy; header values are computed once."""

    def __init__(self, config: CorsConfig) -> None:
        self._origins = frozenset(o for o in config.allow_origins if o != "*")
        self._wildcard = "*" in config.allow_origins
        self._credentials = config.allow_credentials
        self._methods = [m.upper() for m in config.allow_methods]
        names = [h.lower() for h in config.allow_headers]
        self._headers = frozenset(
            [*(h for h in names if not h.endswith("*")), *PROTOCOL_REQUEST_HEADERS]
        )
        self._header_prefixes = tuple(h[:-1] for h in names if h.endswith("*"))
        self._preflight = {
            "Access-Control-Allow-Methods": ", ".join(self._methods),
            "Access-Control-Max-Age": str(config.max_age_seconds),
        }
        listed = {name.lower() for name in config.expose_headers}
        missing = [name for name in PROTOCOL_RESPONSE_HEADERS if name not in listed]
        self._expose = ", ".join([*config.expose_headers, *missing])

    def allows(self, origin: str) -> bool:
        return self._wildcard or origin in self._origins

    def allows_header(self, name: str) -> bool:
        """A request header a preflight may ask for (exact name or an allowed prefix)."""
        name = name.lower()
        return name in self._headers or name.startswith(self._header_prefixes)

    def refuses(self, origin: str | None, host: str, scheme: str = "http") -> bool:
        """True for a cross-origin caller not on the list (same-origin pages always pass).

        Same origin means same scheme, host and port as the request itself (`scheme` is the
        one the client used, e.g. https behind a trusted TLS-ending proxy). The Host header
        is the client's word: under DNS rebinding a hostile page's requests carry its own
        name in both, so passing this check is never authentication.
        """
        if origin is None or self.allows(origin):
            return False
        return origin.lower() != origin_of(scheme, host)

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """Headers for an actual response (streams too); a fresh dict the caller may change."""
        if origin is None or not self.allows(origin):
            return {"Vary": _VARY}
        headers = {
            "Access-Control-Allow-Origin": "*" if self._wildcard and not self._credentials
            else origin,
            "Vary": _VARY,
        }  # fmt: skip
        if self._credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if self._expose:
            headers["Access-Control-Expose-Headers"] = self._expose
        return headers

    def preflight(
        self, origin: str | None, request_method: str | None, request_headers: str | None
    ) -> PreflightAnswer:
        """204 with the grant for an allowed preflight, else 403 saying what was refused."""
        refused = {"Vary": _VARY}
        if origin is None or not self.allows(origin):
            return PreflightAnswer(403, refused, "origin not allowed")
        method = (request_method or "").strip()
        if method.upper() not in self._methods:
            shown = f"method {method} " if _TOKEN.fullmatch(method) else "the requested method "
            return PreflightAnswer(403, refused, shown + "not allowed")
        asked = [h.strip().lower() for h in (request_headers or "").split(",") if h.strip()]
        for name in asked:
            if not _TOKEN.fullmatch(name):
                return PreflightAnswer(403, refused, "a requested header name is not valid")
            if not self.allows_header(name):
                return PreflightAnswer(403, refused, f"header {name} not allowed")
        headers = self.response_headers(origin)
        headers.update(self._preflight)
        if asked:
            headers["Access-Control-Allow-Headers"] = ", ".join(dict.fromkeys(asked))
        return PreflightAnswer(204, headers)
