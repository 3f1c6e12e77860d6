"""The one request pipeline every request on the traffic listener passes, top to bottom.

request id → route (none matches: a plain 404) → server span, continuing the caller's
trace → CORS (preflights are answered here; Claude routes refuse other origins before
any work) → auth → the route's handler (Claude routes validate, screen, admit and
stream; the app route proxies) → span end and access line, however it ended. Any step
may answer early by raising `Rejection`, and an unexpected error before the response
started becomes a 500: both are rendered here, once, in the route family's format.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web
from opentelemetry.trace import Span

from sidecar.browser import is_browser_path, serve_browser_file
from sidecar.client_address import client_ip, is_trusted_proxy
from sidecar.config import Network
from sidecar.errors import Family, Rejection, reject, render_json, simple_error_body
from sidecar.handlers.app_websocket import asks_websocket
from sidecar.header_lists import RepeatedField, header_value, sole_value
from sidecar.identity import ANONYMOUS, Identity
from sidecar.listener import close_after
from sidecar.routes import Route
from sidecar.runtime import Runtime, RuntimeHolder
from sidecar.scope import CallerScope, scope_of
from sidecar.stream.adapter import answer_ended
from sidecar.telemetry.semconv import NO_ROUTE, protocol_version

if TYPE_CHECKING:
    from sidecar.call.waiting import EarlyHead

log = logging.getLogger("sidecar.pipeline")
UNMATCHED = NO_ROUTE  # the route label of a path no route matches (bounded, unlike the path)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(slots=True)
class RequestContext:
    """What the pipeline learned about a request before its handler runs."""

    request: web.Request
    runtime: Runtime
    route: Route
    request_id: str
    started: float
    client_ip: str
    span: Span  # the SERVER span; a Claude call's CLIENT span is its child
    headers: dict[str, str]  # request id, CORS, HSTS: on every response of this request
    identity: Identity = ANONYMOUS
    family: Family = "app"
    path: str = "/"  # canonical (`sidecar.paths`): routed by it, forwarded as it
    # The status whose head went out (0: none yet); after it only the stream itself can
    # carry an error, and telemetry records it whatever happens next.
    sent_status: int = 0
    # Why the sidecar cut an answer whose head had gone out, the upstream's fault (Claude or
    # the app broke off or fell silent mid-body: `upstream_lost`, `upstream_timeout`,
    # `app_bad_response`, `app_timeout`); "" otherwise. Recorded as that error, not as a
    # client that left.
    cut: str = ""
    # The cache's MISS or BYPASS (`X-Cache`): sent only on the answer of the Claude call it
    # let through, never on a refusal made before or instead of that call.
    cache_status: str | None = None
    # A streaming call's head sent while it waited for Claude's (`sidecar.call.waiting`).
    early: EarlyHead | None = None
    _scope: CallerScope | None = None

    def scope(self) -> CallerScope:
        """The caller and its tenant as keys, as their trust source vouches for them
        (`sidecar.scope`): the cache's scope and a resumable stream's owner. Computed once,
        when first asked for (after authentication: the identity is final then)."""
        if self._scope is None:
            self._scope = scope_of(self.identity, self.client_ip)
        return self._scope


Handler = Callable[[RequestContext], Awaitable[web.StreamResponse]]


def _random_ids() -> Iterator[str]:
    """`req_` + 24 hex digits from the OS's randomness, read for 256 ids at a time."""
    while True:
        block = os.urandom(12 * 256)
        for start in range(0, len(block), 12):
            yield "req_" + block[start : start + 12].hex()


_ids = _random_ids()


def _reseed_ids() -> None:
    """A forked child reads its own randomness: it must not repeat its parent's ids."""
    global _ids
    _ids = _random_ids()


os.register_at_fork(after_in_child=_reseed_ids)


def request_id_of(request: web.Request, header: str) -> str:
    """The client's request id if well-formed (and sent once, or repeated as is), else a
    new random one. It is the request's one id: in logs, spans, the answer and the app's
    copy of the request (`sidecar.handlers.app_proxy`)."""
    try:
        given = sole_value(request.headers, header)
    except RepeatedField:
        given = None
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return next(_ids)


def _client_scheme(request: web.Request, trusted: Sequence[Network]) -> str:
    """The scheme the client used: a trusted proxy ending TLS says so in X-Forwarded-Proto.

    It is the request's `url.scheme` (spans, `http.server.request.duration`), which the HTTP
    conventions define as the original client's when known, and its same-origin check's."""
    forwarded = header_value(request.headers, "X-Forwarded-Proto")
    if forwarded and is_trusted_proxy(request.remote or "", trusted):
        proto = forwarded.split(",")[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return request.scheme


# A host a proxy forwards (`Forwarded: host=`, `X-Forwarded-Host`): a name of RFC 3986's
# unreserved characters (and `%` escapes) or a bracketed IPv6 address, an optional port,
# at most 261 characters; anything else is not believed.
_FORWARDED_HOST: Final = re.compile(
    r"(?:[A-Za-z0-9._~%-]{1,255}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)


def _client_host(request: web.Request, trusted: Sequence[Network]) -> str:
    """The host the client addressed: a trusted proxy says so in `Forwarded: host=` (its
    first element: the proxy nearest the client) or else `X-Forwarded-Host` (its first
    entry), else the request's `Host`. It is the span's `server.address` / `server.port`,
    which the HTTP conventions take from those headers behind a proxy. A forwarded value
    that is no host (see `_FORWARDED_HOST`), or anyone else's, is not believed."""
    host = request.headers.get("Host", "")
    headers = request.headers
    if ("Forwarded" not in headers and "X-Forwarded-Host" not in headers) or not (
        is_trusted_proxy(request.remote or "", trusted)
    ):
        return host
    forwarded = header_value(headers, "Forwarded")
    if forwarded:
        for pair in forwarded.split(",", 1)[0].split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "host":
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                if _FORWARDED_HOST.fullmatch(value):
                    return value
                break
    given = header_value(headers, "X-Forwarded-Host")
    if given:
        value = given.split(",", 1)[0].strip()
        if _FORWARDED_HOST.fullmatch(value):
            return value
    return host


def client_origin(request: web.Request, trusted: Sequence[Network]) -> str:
    """`scheme://host` as the client addressed the sidecar (a trusted proxy's forwarded
    scheme and host believed, as for the span): where a URL given back to it must point."""
    host = _client_host(request, trusted)
    return f"{_client_scheme(request, trusted)}://{host or request.host}"


@functools.lru_cache(maxsize=16)
def hsts(max_age: int) -> str:
    """The Strict-Transport-Security value, formatted once per configured max-age."""
    return f"max-age={max_age}; includeSubDomains"


def render_rejection(ctx: RequestContext, rejection: Rejection) -> web.Response:
    """A rejection as a JSON response in the route family's format.

    On an Anthropic route it carries `request-id`, as Claude's own errors do: the SDKs
    read an error's `request_id` from that header, not from the body."""
    status = rejection.status
    headers = {**ctx.headers, **rejection.headers}
    if ctx.family == "anthropic":
        headers["request-id"] = ctx.request_id
    elif status == 529:
        status = 503  # 529 is Anthropic's own; plain HTTP clients know 503
    body = render_json(rejection, ctx.family, ctx.request_id)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _answer_expectation(request: web.Request, route: Route | None, limit: int) -> None:
    """`Expect`: `100 Continue` is sent when the route first reads the body
    (`sidecar.expectation`), so a request refused before that (auth, path, CORS, method)
    gets its final answer instead and uploads nothing. A Claude route refuses a body over
    `max_body_bytes` (which the app route does not apply) by its length alone: 413 before
    the client uploads it, and, as the client may send the body or not, the connection
    ends with that answer."""
    length = request.content_length
    if length is not None and length > limit and route is not None and route.family != "app":
        close_after(request)


def _outcome(
    request: web.Request, response: web.StreamResponse | None, sent_status: int
) -> tuple[int, bool]:
    """The status telemetry records for a request, and whether its client was gone before
    the answer ended (`sidecar.client_gone`).

    A head that went out is recorded as sent, whatever happened after: a stream the client
    left keeps its 200 (its outcome says how it ended). With nothing sent, a client that
    left is nginx's 499 (Client Closed Request); a handler that failed with its client
    still there, the 500 aiohttp answers. A WebSocket is never `client_gone`.
    """
    transport = request.transport
    gone = transport is None or transport.is_closing()
    if sent_status == 101:  # a WebSocket: its handshake was the answer, and
        return 101, False  # `sidecar.websocket.outcome` says how it ended
    if response is not None:
        # A response the handler prepared ended with its last chunk, unless cut first.
        return response.status, gone and response.prepared and not answer_ended(request, response)
    if sent_status:
        # No response came back (the handler was cancelled), but its end may have gone
        # out first: a client that had it all and closed while the call still settled
        # its quota (a Redis round trip) left after its answer ended.
        return sent_status, gone and not answer_ended(request, None)
    return (499, True) if gone else (500, False)


class Pipeline:
    """The aiohttp handler (`handle`) for every path of the traffic listener."""

    def __init__(self, handlers: Mapping[str, Handler], runtimes: RuntimeHolder) -> None:
        self._handlers = handlers
        self._runtimes = runtimes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        runtime = self._runtimes.current  # swapped by reload; in-flight keep theirs
        if self._runtimes.draining:
            close_after(request)  # a kept-alive client's next request goes elsewhere
        lifecycle = runtime.lifecycle
        lifecycle.enter()
        try:
            # One coroutine for the whole request (no inner one awaited): every open
            # stream holds one frame less.
            started = time.perf_counter()
            config = runtime.config
            telemetry = runtime.telemetry
            request_id = request_id_of(request, config.server.request_id_header)
            headers = {config.server.request_id_header: request_id}
            if config.server.tls.enabled and config.server.tls.hsts:
                headers["Strict-Transport-Security"] = hsts(config.server.tls.hsts_max_age_seconds)
            resolved = runtime.routes.resolve(request.rel_url.raw_path)
            if request.headers.get("Expect"):
                _answer_expectation(request, resolved.route, config.server.max_body_bytes)
            version = protocol_version(request.version)
            trusted = config.server.trusted_proxies
            scheme = _client_scheme(request, trusted) if trusted else request.scheme
            host = _client_host(request, trusted) if trusted else request.headers.get("Host", "")
            if resolved.refused is None and is_browser_path(config, resolved.path):
                served = serve_browser_file(request, resolved.path, config, runtime.routes, headers)
                telemetry.access(
                    method=request.method, scheme=scheme, route=config.browser.path,
                    path=resolved.path, status=served.status, duration=time.perf_counter() - started,
                    request_id=request_id, span=None, version=version,
                )  # fmt: skip
                return served
            route = resolved.route
            address = client_ip(
                request.remote or "", header_value(request.headers, "X-Forwarded-For"), trusted
            )
            if route is None:
                refused = resolved.refused
                rejection = (
                    reject(refused.reason, refused.message)
                    if refused
                    else reject("no_route", f"no route for {resolved.path}")
                )
                status, reason = rejection.status, rejection.reason
                body = simple_error_body(rejection.short_type, rejection.message)
                headers["Vary"] = "Origin"
                # Every request gets a trace, the caller's continued: this one's span
                # has no `http.route` (its name is the method alone) and ends with the refusal.
                span = telemetry.start_server_span(
                    telemetry.extract(request.headers), method=request.method,
                    route=UNMATCHED, path=resolved.path, scheme=scheme, version=version,
                    host=host,
                    user_agent=request.headers.get("User-Agent"), client_address=address,
                )  # fmt: skip
                telemetry.rejected(reason, UNMATCHED, status, request_id, span)
                telemetry.end_server_span(span, status)
                telemetry.access(
                    method=request.method, scheme=scheme, route=UNMATCHED,
                    path=resolved.path, status=status, duration=time.perf_counter() - started,
                    request_id=request_id, span=span, version=version,
                )  # fmt: skip
                return web.Response(
                    status=status, body=body, content_type="application/json", headers=headers
                )
            parent = telemetry.extract(request.headers)
            span = telemetry.start_server_span(
                parent, method=request.method, route=route.path, path=resolved.path,
                scheme=scheme, version=version, host=host,
                user_agent=request.headers.get("User-Agent"), client_address=address,
            )  # fmt: skip
            origin = request.headers.get("Origin")
            headers.update(route.cors.response_headers(origin))
            ctx = RequestContext(
                request=request,
                runtime=runtime,
                route=route,
                request_id=request_id,
                started=started,
                client_ip=address,
                span=span,
                headers=headers,
                family=route.family,
                path=resolved.path,
            )
            status = 500
            response: web.StreamResponse | None = None
            try:
                if resolved.refused is not None:
                    raise reject(resolved.refused.reason, resolved.refused.message)
                if (
                    request.method == "OPTIONS"
                    and "Access-Control-Request-Method" in request.headers
                ):
                    response = self._preflight(ctx, origin)
                else:
                    cors = route.cors
                    if (
                        origin is not None
                        and (ctx.family != "app" or asks_websocket(request))
                        and not cors.allows(origin)  # allowed: no scheme or host to read
                        and cors.refuses(origin, request.host, scheme)
                    ):
                        # The browser would hide the answer anyway: do not spend Claude or quota on it.
                        # (The app route only sets headers: cross-site form posts such as OAuth
                        # `form_post` callbacks must still reach the app. Not a WebSocket: no
                        # browser hides its messages from the page that opened it.)
                        raise reject("cors_origin_denied", "origin not allowed")
                    identity = runtime.auth.identify(
                        route.policy.auth, request.headers, request.query, request.method
                    )
                    ctx.identity = identity if isinstance(identity, Identity) else await identity
                    response = await self._handlers[route.handler](ctx)
            except Rejection as rejection:
                if rejection.reason == "method_not_allowed" and request.method == "OPTIONS":
                    # A plain OPTIONS (no preflight) asks what the path takes: the handler's
                    # own `Allow`, as a 204, rather than a 405 that lists OPTIONS.
                    response = web.Response(
                        status=204, headers={**ctx.headers, **rejection.headers}
                    )
                else:
                    early = ctx.early
                    if early is not None and early.open:  # the stream started while waiting
                        response = await early.fail(rejection.error_type, rejection.message)
                    else:
                        response = render_rejection(ctx, rejection)
                    # Counted with the status sent: the prompt and ui routes answer a 529
                    # (queue full, wait timed out) as 503.
                    telemetry.rejected(
                        rejection.reason, route.path, response.status, request_id, span
                    )
            except Exception:
                early = ctx.early
                if ctx.sent_status and (early is None or not early.open):
                    raise
                log.exception("unhandled error", extra={"request_id": request_id})
                if early is not None and early.open:
                    response = await early.fail("api_error", "internal error")
                else:
                    response = render_rejection(ctx, reject("internal_error", "internal error"))
            finally:
                if ctx.early is not None:  # (it holds the context: the cycle is broken here)
                    ctx.early.stop()
                    ctx.early = None
                status, client_gone = _outcome(request, response, ctx.sent_status)
                cut = ctx.cut
                if cut:  # the sidecar ended the connection, for the upstream's fault
                    client_gone = False
                telemetry.end_server_span(span, status, client_gone=client_gone, cut=cut)
                telemetry.access(
                    method=request.method,
                    scheme=scheme,
                    route=route.path,
                    path=resolved.path,
                    status=status,
                    duration=time.perf_counter() - started,
                    request_id=request_id,
                    span=span,
                    version=version,
                    client_gone=client_gone,
                    cut=cut,
                )
            return response
        finally:
            lifecycle.leave()

    def _preflight(self, ctx: RequestContext, origin: str | None) -> web.Response:
        answer = ctx.route.cors.preflight(
            origin,
            ctx.request.headers.get("Access-Control-Request-Method"),
            ctx.request.headers.get("Access-Control-Request-Headers"),
        )
        status, cors_headers = answer.status, answer.headers
        if status >= 400:
            # A refused preflight grants nothing, even to an allowed origin asking too much.
            for name in [n for n in ctx.headers if n.lower().startswith("access-control-")]:
                del ctx.headers[name]
            raise reject(
                "cors_preflight_denied", answer.refused or "preflight refused", headers=cors_headers
            )
        return web.Response(status=status, headers={**ctx.headers, **cors_headers})
