"""The browser files under `browser.path`: the client module, its types, the demo page.

Served before route matching, so an app route at `/` cannot shadow them. The module is
public code: any origin may load it (`Access-Control-Allow-Origin: *`, needed for a
cross-origin `<script type="module">`), it carries no credentials. The demo page is
served only when `browser.demo` is on, under a strict Content-Security-Policy.
"""

from __future__ import annotations

import functools
import html
from importlib import resources
from typing import Final

from aiohttp import web

from sidecar.config import Config
from sidecar.routes import RouteTable

_MODULE_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "public, max-age=300",
    "X-Content-Type-Options": "nosniff",
}
_DEMO_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# name → (file, content type, demo only)
_FILES: Final = {
    "claude-stream.js": ("claude-stream.js", "text/javascript", False),
    "claude-stream.d.ts": ("claude-stream.d.ts", "text/plain", False),
    "demo": ("demo.html", "text/html", True),
    "demo.js": ("demo.js", "text/javascript", True),
}


@functools.cache
def static_file(name: str) -> str:
    """The text of a file shipped in `sidecar/browser/static` (read once)."""
    return resources.files("sidecar.browser").joinpath("static", name).read_text("utf-8")


def is_browser_path(config: Config, path: str) -> bool:
    """Whether `path` is under `browser.path` (and the browser files are served)."""
    browser = config.browser
    return browser.enabled and (path == browser.path or path.startswith(browser.path + "/"))


def _prompt_route(routes: RouteTable) -> str:
    for route in routes.routes:
        if route.handler == "prompt":
            return route.path
    return ""


def serve_browser_file(
    request: web.Request, path: str, config: Config, routes: RouteTable, headers: dict[str, str]
) -> web.Response:
    """Answer a request under `browser.path` (`path`, canonical): a file, 404 for another
    name, 405 for a write."""
    name = path[len(config.browser.path) :].lstrip("/")
    entry = _FILES.get(name)
    if entry is None or (entry[2] and not config.browser.demo):
        return web.json_response(
            {"error": {"type": "not_found", "message": "no such browser file"}},
            status=404,
            headers=headers,
        )
    if request.method not in ("GET", "HEAD"):
        return web.json_response(
            {"error": {"type": "invalid_request", "message": "use GET"}},
            status=405,
            headers={**headers, "Allow": "GET, HEAD"},
        )
    file_name, content_type, demo = entry
    text = static_file(file_name)
    out = {**headers, **_MODULE_HEADERS}
    if demo:
        out = {**headers, "Content-Security-Policy": _DEMO_CSP, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff"}  # fmt: skip
        if file_name == "demo.html":
            text = text.replace("{{PROMPT_ROUTE}}", html.escape(_prompt_route(routes), quote=True))
    return web.Response(text=text, content_type=content_type, charset="utf-8", headers=out)
