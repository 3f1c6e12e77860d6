"""Reverse proxy to the app: any method, bodies streamed both ways, SSE unbuffered, WebSockets.

Hop-by-hop headers are dropped both ways, `X-Forwarded-*` and `traceparent` are
added, and the verified identity replaces whatever identity headers the client sent.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sidecar.client_address import is_trusted_proxy
from sidecar.config import AppConfig
from sidecar.errors import Rejection, reject
from sidecar.handlers.app_websocket import asks_websocket, relay_websocket
from sidecar.handlers.lingering import LingeringServerWebSocket
from sidecar.handlers.request_body import (
    BodyStream,
    body_timeout,
    ensure_client_present,
    malformed_body,
)
from sidecar.handlers.send_watch import SendWatch
from sidecar.header_lists import header_value
from sidecar.methods import asks_override, query_asks_override, reads
from sidecar.pipeline import RequestContext
from sidecar.policy import strip_and_set_identity
from sidecar.policy.cors import merge_vary
from sidecar.policy.identity_headers import (
    header_credential,
    keep_read_credential,
    strip_credentials,
    strip_forwarding_claims,
)
from sidecar.stream.adapter import (
    ForwardedResponse,
    websocket_handshake_headers,
    websocket_transport,
)

HOP_BY_HOP: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
    }
)  # fmt: skip
_WS_HANDSHAKE: Final = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip
# The app's `101` headers the client's `101` does not carry: the sidecar's side of the
# handshake answers those, and a `101` has no body.
_NOT_ON_A_101: Final = _WS_HANDSHAKE | {"content-length"}


@functools.lru_cache(maxsize=8)
def app_base(url: str) -> tuple[str, str | None]:
    """`app.url` without its userinfo, and the `Authorization` header that userinfo means
    (Basic, as a URL's credentials are sent; None without). The sidecar's credential for
    the app is sent in place of any the client gave, in one header (a URL's credentials
    and a client's header cannot both be sent)."""
    parsed = URL(url, encoded=True)
    if parsed.user is None:
        return url, None
    return str(parsed.with_user(None)), aiohttp.encode_basic_auth(
        parsed.user, parsed.password or ""
    )


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, including any the Connection header names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    drop = HOP_BY_HOP | named
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def _upstream_headers(ctx: RequestContext) -> CIMultiDict[str]:
    request = ctx.request
    headers = end_to_end(request.headers)
    app = ctx.runtime.config.app
    assert app is not None  # config validation: an app route needs the app section
    strip_and_set_identity(headers, ctx.identity, app.identity_headers)
    if _withholds_credentials(ctx):
        strip_credentials(headers)
    elif ctx.route.policy.auth.mode != "none":
        keep_read_credential(headers)  # forwarded: only what the sidecar checked
    peer = request.remote or ""
    trusted = is_trusted_proxy(peer, ctx.runtime.config.server.trusted_proxies)
    # The app believes its proxy: what a client says about its address or the URL it asked
    # for (X-Real-IP, True-Client-IP, X-Original-URL, Forwarded ...) never reaches it as such.
    strip_forwarding_claims(headers, trusted=trusted)
    # The sidecar answers `Expect: 100-continue` itself; the app gets the body either way.
    headers.popall("Expect", None)
    prior = header_value(request.headers, "X-Forwarded-For") if trusted else None
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    # Behind a trusted proxy (an ingress ending TLS) its scheme and host are the client's;
    # from anyone else they are replaced by what this hop saw.
    given = request.headers
    proto = header_value(given, "X-Forwarded-Proto") if trusted else None
    host = header_value(given, "X-Forwarded-Host") if trusted else None
    headers["X-Forwarded-Proto"] = proto or request.scheme
    headers["X-Forwarded-Host"] = host or request.host
    # An absolute-form request line (`GET http://other.example/x`) names the host, and a
    # server goes by it, not by `Host` (RFC 9112 3.2.2): the app gets the one host the
    # sidecar read, in `Host` as in `X-Forwarded-Host`, never a second one to build its
    # links or cache keys from. Always set: a `Host` the client named in `Connection`, or
    # none (HTTP/1.0), would leave the HTTP client to write the app's own address there,
    # which apps trusting a local `Host` read as a request from inside.
    headers["Host"] = request.host
    credential = app_base(app.url)[1]
    # Never in a TRACE: its answer echoes the request to the client (RFC 9110 9.3.8: a
    # client sends no stored credential in one), and this one is the sidecar's.
    if credential is not None and request.method != "TRACE":
        headers["Authorization"] = credential
    # The request's one id, as logged and answered: never the client's other copies, or a
    # malformed one the sidecar replaced.
    request_id_header = ctx.runtime.config.server.request_id_header
    headers.popall(request_id_header, None)
    headers[request_id_header] = ctx.request_id
    for name in ctx.runtime.telemetry.trace_headers:  # the client's: replaced by this hop's
        headers.popall(name, None)
    carrier: dict[str, str] = {}
    ctx.runtime.telemetry.inject(ctx.span, carrier)
    headers.update(carrier)
    return headers


def _withholds_credentials(ctx: RequestContext) -> bool:
    """The credential the sidecar checked on this route is kept from the app."""
    app = ctx.runtime.config.app
    return app is not None and not app.forward_credentials and ctx.route.policy.auth.mode != "none"


def _target(ctx: RequestContext) -> URL:
    """The app's URL for this request: its canonical path and query, used verbatim.

    `encoded=True`: nothing resolves or re-quotes the path after routing checked it.
    """
    app = ctx.runtime.config.app
    assert app is not None
    url = ctx.request.rel_url
    jwt = ctx.route.policy.auth.jwt
    if (
        _withholds_credentials(ctx)
        and jwt is not None and jwt.query_param and jwt.query_param in url.query
        and reads(ctx.request.method) and not header_credential(ctx.request.headers)
    ):  # fmt: skip
        # The token the sidecar checked (only a GET or HEAD without a header credential is read
        # from the query): kept from the app, as from Claude. Any other is the app's.
        url = url.without_query_params(jwt.query_param)
    query = url.raw_query_string
    return URL(f"{app_base(app.url)[0]}{ctx.path}{'?' + query if query else ''}", encoded=True)


async def handle_app(ctx: RequestContext) -> web.StreamResponse:
    """Proxy one request (or WebSocket) to the app."""
    session = ctx.runtime.app_session
    assert session is not None
    request = ctx.request
    if asks_override(request.headers):  # see `sidecar.methods`
        raise reject(
            "method_override",
            "X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override are not accepted: "
            "send the method itself",
        )
    if query_asks_override(request.rel_url.raw_query_string):
        raise reject(
            "method_override", "a _method query parameter is not accepted: send the method itself"
        )
    policy = ctx.route.policy  # app routes count requests per minute only (no tokens, no slots)
    ctx.headers.update(
        await ctx.runtime.quotas.count_request(
            policy.quotas, policy.quota_scope, ctx.identity, ctx.client_ip, tokens=False
        )
    )
    if asks_websocket(request):
        return await _websocket(ctx, session)
    headers = _upstream_headers(ctx)
    app = ctx.runtime.config.app
    assert app is not None
    # Passed on as received (still encoded, same length), cut if the client goes quiet.
    body = BodyStream(request, ctx.runtime.config.server.body_idle_timeout_seconds)
    ensure_client_present(request)
    try:
        async with asyncio.timeout(None) as head:
            if request.body_exists:
                body.on_end = functools.partial(_await_head, head, app.read_timeout_seconds)
                # An app that stops reading the body is cut as a client that stops
                # reading its answer is (nginx's `proxy_send_timeout`).
                body.sending, body.send_timeout = head, app.send_timeout_seconds
            else:
                _await_head(head, app.connect_timeout_seconds + app.read_timeout_seconds)
            upstream = await session.request(
                request.method,
                _target(ctx),
                headers=headers,
                data=body.chunks() if request.body_exists else None,
                allow_redirects=False,
            )
    except Exception as exc:
        # A failed upload surfaces as whatever the client library wraps it in.
        raise _upstream_failure(body, exc) from None
    finally:
        # An app may answer before the body ends (and go on reading it): from here on the
        # read timeout bounds the response, and the deadline is gone.
        body.on_end = body.sending = None
    async with upstream:
        return await _relay(ctx, upstream, app)


def _await_head(deadline: asyncio.Timeout, seconds: float) -> None:
    """The app's final status line is due within `seconds` from now.

    aiohttp's read timeout (`sock_read`) covers the wait for a response head, but it
    stops on an informational answer (`103 Early Hints`, an unasked `100 Continue`) and
    is not restarted for the final one: an app that sent one and fell silent would hold
    the request (and the client) forever. This deadline, armed once the request is
    sent, bounds that wait as the read timeout does every other.
    """
    deadline.reschedule(asyncio.get_running_loop().time() + seconds)


def _upstream_failure(body: BodyStream, exc: BaseException) -> Rejection:
    """What a failed call to the app was, from the client's side first."""
    if body.stalled:
        return body_timeout()
    if body.broken:
        return malformed_body()
    if isinstance(exc, TimeoutError):
        if body.passing_on:
            return reject(
                "app_timeout",
                "the app did not take the request body in time",
                headers={"Connection": "close"},  # the rest of the body is not read
            )
        return reject("app_timeout", "the app did not answer in time")
    if isinstance(exc, aiohttp.ClientResponseError):  # the head did not parse
        return reject("app_bad_response", "the app's answer is not valid HTTP")
    if isinstance(exc, aiohttp.ClientError):
        return reject("app_unreachable", f"the app is unreachable ({type(exc).__name__})")
    raise exc


async def _relay(
    ctx: RequestContext, upstream: aiohttp.ClientResponse, app: AppConfig
) -> web.StreamResponse:
    _check_sendable(upstream)
    headers = _client_headers(ctx, upstream.headers)
    if upstream.content_type == "text/event-stream" and "X-Accel-Buffering" not in headers:
        # An event stream is relayed per chunk here; a buffering proxy in front (nginx's
        # ingress) must not gather it either, unless the app said otherwise.
        headers["X-Accel-Buffering"] = "no"
    response = ForwardedResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if upstream.content_length is not None and "Content-Length" in headers:
        response.content_length = upstream.content_length
    await response.prepare(ctx.request)
    ctx.sent_status = response.status
    transport = ctx.request.transport
    if transport is None:  # the client left as the head went out
        return response
    watch = SendWatch(transport, app.send_timeout_seconds)
    try:
        async for chunk in upstream.content.iter_any():
            watch.arm()
            await response.write(chunk)  # flushed per chunk: SSE from the app is never held
            watch.disarm()
        watch.arm()
        await response.write_eof()  # waits, as a write does, for the client to take it
        watch.disarm()
    except (aiohttp.ClientPayloadError, TimeoutError, aiohttp.ClientConnectionError) as exc:
        # The app broke off mid-body: end the client's connection too, so it sees a short body.
        transport.close()
        if not isinstance(exc, ConnectionResetError):  # aiohttp's, writing to a client that left
            ctx.cut = "app_timeout" if isinstance(exc, TimeoutError) else "app_bad_response"
    except ConnectionResetError:
        pass  # the client left, or was cut as stalled: nothing more to send
    finally:
        watch.disarm()
    return response


# What a response head may not carry on to a client, though aiohttp's client parser lets
# it through: control characters other than tab (aiohttp's server refuses to write them).
_UNSENDABLE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _pass_on_handshake_headers(
    ctx: RequestContext, answer: CIMultiDictProxy[str], client: web.WebSocketResponse
) -> None:
    """The app's `101` headers (a `Set-Cookie`, its own fields) on the client's `101`, as
    on any other answer it gives: without hop-by-hop ones, the handshake's own (the
    sidecar's side of it answers those) and `Access-Control-*`, with the sidecar's
    (`X-Request-Id`, `Vary`). A head with a control character is the app's 502."""
    headers = _client_headers(ctx, answer, _NOT_ON_A_101)
    if any(_UNSENDABLE.search(value) for value in headers.values()):
        raise reject("app_bad_response", "the app's answer has a control character in its head")
    client.headers.extend(headers)


def _client_headers(
    ctx: RequestContext, answer: CIMultiDictProxy[str], drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The app's answer headers as the client gets them: end to end only, none named in
    `drop` (lower case), no `Access-Control-*` (which origins may read answers is the
    sidecar's `cors` policy, not the app's: an app reflecting any Origin, with
    credentials, must not reopen what the policy refused), and the sidecar's own
    (`ctx.headers`) over them, `Vary` merged."""
    headers = end_to_end(answer)
    for name in [
        n for n in headers if n.lower() in drop or n.lower().startswith("access-control-")
    ]:
        headers.popall(name, None)
    vary = merge_vary(", ".join(headers.getall("Vary", ())))
    headers.update(ctx.headers)
    headers["Vary"] = vary
    return headers


def _check_sendable(upstream: aiohttp.ClientResponse) -> None:
    """Raise a 502 for an answer that cannot be passed on as a valid HTTP response.

    Its status must be a final one (200-599: the client's `Upgrade` never reaches the app,
    so a `101` is unasked for; RFC 9110 15 makes anything outside 100-599 invalid), its
    reason phrase and header values must hold no control character, and its
    `Transfer-Encoding` may name no coding but `chunked`: the client parser undoes only
    the chunking, so a `gzip` transfer coding would reach the client still compressed with
    nothing saying so (the request side's 501, RFC 9112 6.1).
    """
    status = upstream.status
    if not 200 <= status <= 599:
        raise reject("app_bad_response", f"the app answered with an invalid status ({status})")
    if any(
        coding.strip().lower() not in ("chunked", "")
        for value in upstream.headers.getall("Transfer-Encoding", ())
        for coding in value.split(",")
    ):
        raise reject(
            "app_bad_response", "the app's answer has a transfer coding other than chunked"
        )
    if _UNSENDABLE.search(upstream.reason or "") or any(
        _UNSENDABLE.search(value) for value in upstream.headers.values()
    ):
        raise reject("app_bad_response", "the app's answer has a control character in its head")


async def _websocket(ctx: RequestContext, session: aiohttp.ClientSession) -> web.StreamResponse:
    request = ctx.request
    if request.method != "GET":
        # RFC 6455 4.1: the opening handshake is a GET. Any other method would reach the
        # app as the GET the sidecar dials, not as what its route's policy saw.
        raise reject(
            "websocket_handshake_invalid",
            "a WebSocket handshake must be a GET request",
        )
    headers = _upstream_headers(ctx)
    for name in list(headers):
        if name.lower() in _WS_HANDSHAKE:
            del headers[name]
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    # The client's own handshake first (key, version, Connection): a bad one is the
    # client's 400, and the app is never dialled for it. Version 13 only (RFC 6455): the
    # server accepts drafts 7 and 8 too, but the app is dialled in 13. A key past ASCII
    # is refused first: aiohttp's check raises ValueError on it instead of its 400.
    if (
        request.headers.get("Sec-WebSocket-Version") != "13"
        or not request.headers.get("Sec-WebSocket-Key", "").isascii()
        or not web.WebSocketResponse(protocols=protocols).can_prepare(request).ok
    ):
        raise reject(
            "websocket_handshake_invalid",
            "not a valid WebSocket handshake (Connection: Upgrade, Sec-WebSocket-Key and"
            " Sec-WebSocket-Version: 13 are needed)",
            headers={"Sec-WebSocket-Version": "13"},  # RFC 6455 4.4: the version it speaks
        )
    ensure_client_present(request)
    app = ctx.runtime.config.app
    assert app is not None
    try:
        async with asyncio.timeout(None) as head:
            _await_head(head, app.connect_timeout_seconds + app.read_timeout_seconds)
            upstream = await session.ws_connect(
                _target(ctx),
                headers=headers,
                protocols=protocols,
                autoping=True,
                heartbeat=app.websocket_ping_seconds,
                max_msg_size=app.websocket_max_message_bytes,
            )
    except TimeoutError:
        raise reject(
            "app_timeout", "the app did not answer the WebSocket handshake in time"
        ) from None
    except aiohttp.WSServerHandshakeError as exc:
        if 400 <= exc.status < 600:  # the app answered (401, 403, 404 ...): its status stands
            raise reject(
                "app_refused_websocket",
                f"the app refused the WebSocket (HTTP {exc.status})",
                status=exc.status,
            ) from None
        raise reject(
            "app_unreachable", "the app answered the WebSocket handshake wrongly"
        ) from None
    except aiohttp.ClientError as exc:
        raise reject(
            "app_unreachable", f"the app refused the WebSocket ({type(exc).__name__})"
        ) from None
    client = LingeringServerWebSocket(
        protocols=[upstream.protocol] if upstream.protocol else (),
        autoping=True,
        heartbeat=app.websocket_ping_seconds,
        max_msg_size=app.websocket_max_message_bytes,
    )
    async with upstream:
        _pass_on_handshake_headers(ctx, websocket_handshake_headers(upstream), client)
        await client.prepare(request)
        ctx.sent_status = 101  # Switching Protocols
        client_transport = request.transport
        app_transport = websocket_transport(upstream)
        if client_transport is not None and app_transport is not None:  # neither gone yet
            telemetry, route = ctx.runtime.telemetry, ctx.route.path
            await relay_websocket(
                client, client_transport, upstream, app_transport, app.send_timeout_seconds,
                lambda outcome: telemetry.websocket_ended(
                    outcome, route, ctx.request_id, ctx.span
                ),
                ctx.runtime.websockets,
            )  # fmt: skip
    await client.close()
    return client
