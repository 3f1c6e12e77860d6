"""The browser files under `browser.path`: the client module, its types, the demo page.

Served before route matching, so an app route at `/` cannot shadow them. The module is
public code: any origin may load it (`Access-Control-Allow-Origin: *`, needed for a
cross-origin `<script type="module">`; a preflight is answered for any origin), it carries
no credentials. The demo page is served only when `browser.demo` is on, under a strict
Content-Security-Policy, to its own origin only (no CORS headers). Every file has a strong
`ETag` (a hash of its bytes) and a `Last-Modified`, both computed once: a revalidation
(`If-None-Match`, `If-Modified-Since`) is a 304 without the body.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import html
import pathlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

from sidecar.config import Config
from sidecar.header_lists import header_value
from sidecar.routes import RouteTable

_ALLOW: Final = "GET, HEAD, OPTIONS"
_MODULE_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag",  # Last-Modified is readable without it
    "Cache-Control": "public, max-age=300",
    "X-Content-Type-Options": "nosniff",
}
_DEMO_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_DEMO_HEADERS: Final = {
    "Content-Security-Policy": _DEMO_CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# name → (file, content type, demo only)
_FILES: Final = {
    "claude-stream.js": ("claude-stream.js", "text/javascript", False),
    "claude-stream.d.ts": ("claude-stream.d.ts", "text/plain", False),
    "demo": ("demo.html", "text/html", True),
    "demo.js": ("demo.js", "text/javascript", True),
}
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_LOADED: Final = time.time()  # Last-Modified of a file without an mtime (a zipped package)


@dataclass(frozen=True, slots=True)
class _Body:
    """One file's bytes as served, with its validators."""

    data: bytes
    etag: str  # strong: a hash of `data`
    modified: int  # Last-Modified, whole seconds since the epoch
    last_modified: str  # the same as an HTTP date


@functools.cache
def static_file(name: str) -> str:
    """The text of a file shipped in `sidecar/browser/static` (read once)."""
    return resources.files("sidecar.browser").joinpath("static", name).read_text("utf-8")


def _mtime(name: str) -> float:
    path = resources.files("sidecar.browser").joinpath("static", name)
    if not isinstance(path, pathlib.Path):
        return _LOADED
    try:
        return path.stat().st_mtime
    except OSError:
        return _LOADED


@functools.cache
def _body(file_name: str, prompt_route: str) -> _Body:
    """A file's bytes and validators, computed once (the demo page once per prompt route)."""
    text = static_file(file_name)
    modified = _mtime(file_name)
    if file_name == "demo.html":
        text = text.replace("{{PROMPT_ROUTE}}", html.escape(prompt_route, quote=True))
        # The page depends on the config too: a rendering is new when first made.
        modified = max(modified, time.time())
    data = text.encode("utf-8")
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    whole = int(modified)
    return _Body(data, etag, whole, email.utils.formatdate(whole, usegmt=True))


def is_browser_path(config: Config, path: str) -> bool:
    """Whether `path` is under `browser.path` (and the browser files are served)."""
    browser = config.browser
    return browser.enabled and (path == browser.path or path.startswith(browser.path + "/"))


def _prompt_route(routes: RouteTable) -> str:
    for route in routes.routes:
        if route.handler == "prompt":
            return route.path
    return ""


def _not_modified(request: web.Request, body: _Body) -> bool:
    """Whether the client's copy is current (RFC 9110 13.2.2: If-None-Match, when sent,
    decides alone; weak comparison)."""
    tags = header_value(request.headers, "If-None-Match")
    if tags is not None:
        listed = (tag.strip() for tag in tags.split(","))
        return any(tag == "*" or tag.removeprefix("W/") == body.etag for tag in listed)
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        when = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False  # not a date: ignored, as RFC 9110 says
    return body.modified <= when.timestamp()


def _preflight_headers(request: web.Request) -> dict[str, str]:
    """The module's preflight: any origin, the safe methods, the headers asked for (only
    well-formed names; it carries no credentials, so there is nothing to protect)."""
    out = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": _ALLOW,
        "Access-Control-Max-Age": "600",
    }
    asked = header_value(request.headers, "Access-Control-Request-Headers") or ""
    names = [name.strip().lower() for name in asked.split(",") if name.strip()]
    allowed = [name for name in names if _TOKEN.fullmatch(name)]
    if allowed:
        out["Access-Control-Allow-Headers"] = ", ".join(allowed)
    return out


def serve_browser_file(
    request: web.Request, path: str, config: Config, routes: RouteTable, headers: dict[str, str]
) -> web.Response:
    """Answer a request under `browser.path` (`path`, canonical): a file (304 when the
    client's copy is current), 204 to OPTIONS, 404 for another name, 405 for a write."""
    name = path[len(config.browser.path) :].lstrip("/")
    entry = _FILES.get(name)
    if entry is None or (entry[2] and not config.browser.demo):
        return web.json_response(
            {"error": {"type": "not_found", "message": "no such browser file"}},
            status=404,
            headers=headers,
        )
    file_name, content_type, demo = entry
    if request.method == "OPTIONS":
        # A preflight (or a plain OPTIONS) gets the CORS policy of the GET: any origin for
        # the public files, none for the demo page (same origin only).
        cors = {} if demo else _preflight_headers(request)
        return web.Response(status=204, headers={**headers, **cors, "Allow": _ALLOW})
    if request.method not in ("GET", "HEAD"):
        return web.json_response(
            {"error": {"type": "invalid_request", "message": "use GET"}},
            status=405,
            headers={**headers, "Allow": _ALLOW},
        )
    body = _body(file_name, _prompt_route(routes) if file_name == "demo.html" else "")
    out = {**headers, **(_DEMO_HEADERS if demo else _MODULE_HEADERS),
           "ETag": body.etag, "Last-Modified": body.last_modified}  # fmt: skip
    if _not_modified(request, body):
        return web.Response(status=304, headers=out)
    return web.Response(body=body.data, content_type=content_type, charset="utf-8", headers=out)
