"""CORS: exact-origin allow-list, preflights answered here, `Vary: Origin` always."""

from __future__ import annotations

from sidecar.config import CorsConfig

_VARY = "Origin"


def merge_vary(existing: str | None) -> str:
    """`Vary` that keeps what the app varies on and adds `Origin` (caches must not mix them)."""
    if not existing:
        return _VARY
    names = [name.strip() for name in existing.split(",") if name.strip()]
    if "*" in names or any(name.lower() == "origin" for name in names):
        return ", ".join(names)
    return ", ".join([*names, _VARY])


class CorsPolicy:
    """One route's CORS policy; header values are computed once."""

    def __init__(self, config: CorsConfig) -> None:
        self._origins = frozenset(o for o in config.allow_origins if o != "*")
        self._wildcard = "*" in config.allow_origins
        self._credentials = config.allow_credentials
        self._methods = [m.upper() for m in config.allow_methods]
        self._headers = {h.lower() for h in config.allow_headers}
        self._preflight = {
            "Access-Control-Allow-Methods": ", ".join(self._methods),
            "Access-Control-Allow-Headers": ", ".join(config.allow_headers),
            "Access-Control-Max-Age": str(config.max_age_seconds),
        }
        self._expose = ", ".join(config.expose_headers)

    def allows(self, origin: str) -> bool:
        return self._wildcard or origin in self._origins

    def refuses(self, origin: str | None, host: str) -> bool:
        """True for a cross-origin caller not on the list (same-origin pages always pass)."""
        if origin is None or self.allows(origin):
            return False
        return origin.partition("://")[2].lower() != host.lower()

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
    ) -> tuple[int, dict[str, str]]:
        """(204, headers) for an allowed preflight, else (403, {"Vary": "Origin"})."""
        if origin is None or not self.allows(origin):
            return 403, {"Vary": _VARY}
        if (request_method or "").upper() not in self._methods:
            return 403, {"Vary": _VARY}
        asked = {h.strip().lower() for h in (request_headers or "").split(",") if h.strip()}
        if not asked <= self._headers:
            return 403, {"Vary": _VARY}
        headers = self.response_headers(origin)
        headers.update(self._preflight)
        return 204, headers
