"""App proxy edge cases over real sockets: spoofed identity spellings, WebSocket close codes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.support.apps import serving
from tests.support.sidecars import SidecarFactory


async def echo_headers(request: web.Request) -> web.Response:
    return web.json_response({"headers": list(request.headers.items())})


async def closing_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.receive()
    await ws.close(code=4001, message=b"not allowed")
    return ws


CLOSED_BY_CLIENT: asyncio.Queue[tuple[int | None, str]] = asyncio.Queue()


async def recording_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    message = await ws.receive()
    await CLOSED_BY_CLIENT.put((message.data, message.extra))
    return ws


async def no_content(request: web.Request) -> web.Response:
    return web.Response(status=int(request.query.get("status", "204")))


async def permissive_cors(request: web.Request) -> web.Response:
    origin = request.headers.get("Origin", "*")
    headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}
    return web.Response(text="private", headers=headers)


async def forbidden_ws(request: web.Request) -> web.Response:
    return web.json_response({"error": "log in first"}, status=403)


async def head_me(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 100, content_type="text/plain")


@contextlib.asynccontextmanager
async def running_app() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/echo", echo_headers)
    app.router.add_get("/ws-close", closing_ws)
    app.router.add_get("/ws-record", recording_ws)
    app.router.add_get("/empty", no_content)
    app.router.add_get("/head", head_me)
    app.router.add_get("/cors", permissive_cors)
    app.router.add_get("/ws-forbidden", forbidden_ws)
    async with serving(app) as url:
        yield url


async def test_identity_header_spelled_with_underscores_is_stripped(
    sidecar_for: SidecarFactory,
) -> None:
    # WSGI/CGI servers map `X_Sidecar_User` and `X-Sidecar-User` to the same HTTP_X_SIDECAR_USER.
    async with running_app() as url, sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            sent = {"X_Sidecar_User": "mallory", "x_sidecar-tenant": "evil", "X-Kept_1": "yes"}
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                assert response.status == 200
                seen = {k.lower(): v for k, v in (await response.json())["headers"]}
    assert "x_sidecar_user" not in seen
    assert "x_sidecar-tenant" not in seen
    assert seen["x-kept_1"] == "yes"


async def test_websocket_close_code_from_the_app_reaches_the_client(
    sidecar_for: SidecarFactory,
) -> None:
    async with running_app() as url, sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(sidecar.url + "/ws-close")
            await ws.send_str("hello")
            message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 4001
            assert message.extra == "not allowed"
            ws = await http.ws_connect(sidecar.url + "/ws-record")
            await ws.close(code=4002, message=b"bye")
            assert await CLOSED_BY_CLIENT.get() == (4002, "bye")


async def test_bodyless_statuses_and_head(sidecar_for: SidecarFactory) -> None:
    async with running_app() as url, sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            for status in (204, 304):
                async with http.get(sidecar.url + f"/empty?status={status}") as response:
                    assert response.status == status
                    assert await response.read() == b""
            async with http.head(sidecar.url + "/head") as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == "100"
            async with http.get(sidecar.url + "/head") as response:
                assert await response.read() == b"x" * 100


async def test_trusted_proxy_scheme_and_host_reach_the_app(sidecar_for: SidecarFactory) -> None:
    # TLS ends at the ingress: the app must hear https (or it redirects to http forever).
    sent = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com"}
    async with running_app() as url:
        trusted = {"app": {"url": url}, "server": {"trusted_proxies": ["127.0.0.0/8"]}}
        async with sidecar_for(trusted) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = {k.lower(): v for k, v in (await response.json())["headers"]}
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-host"] == "app.example.com"
        async with sidecar_for({"app": {"url": url}}) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = {k.lower(): v for k, v in (await response.json())["headers"]}
        assert seen["x-forwarded-proto"] == "http"  # anyone else's claim is replaced
        assert seen["x-forwarded-host"].startswith("127.0.0.1:")


async def test_origin_policy_is_the_sidecars_even_when_the_app_reflects_origins(
    sidecar_for: SidecarFactory,
) -> None:
    allowed = "https://app.example.com"
    async with running_app() as url:
        config = {"app": {"url": url}, "cors": {"allow_origins": [allowed]}}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            evil = {"Origin": "https://evil.example"}
            async with http.get(sidecar.url + "/cors", headers=evil) as response:
                assert response.status == 200  # the app route lets the request through
                assert "Access-Control-Allow-Origin" not in response.headers
                assert "Access-Control-Allow-Credentials" not in response.headers
            async with http.get(sidecar.url + "/cors", headers={"Origin": allowed}) as response:
                assert response.headers["Access-Control-Allow-Origin"] == allowed
                assert response.headers.getall("Access-Control-Allow-Origin") == [allowed]


async def test_websocket_the_app_refuses_keeps_the_apps_status(
    sidecar_for: SidecarFactory,
) -> None:
    async with running_app() as url, sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(sidecar.url + "/ws-forbidden")
            assert refused.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
                await http.ws_connect(sidecar.url + "/no-such-socket")
            assert missing.value.status == 404


async def test_other_forwarding_headers_are_only_believed_from_trusted_proxies(
    sidecar_for: SidecarFactory,
) -> None:
    sent = {
        "Forwarded": "for=203.0.113.66;proto=https",
        "X-Real-IP": "203.0.113.66",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-Prefix": "/evil",
        "X-Kept": "yes",
    }
    async with running_app() as url:
        async with sidecar_for({"app": {"url": url}}) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = {k.lower(): v for k, v in (await response.json())["headers"]}
        for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix"):
            assert name not in seen
        assert seen["x-kept"] == "yes"
        trusted = {"app": {"url": url}, "server": {"trusted_proxies": ["127.0.0.0/8"]}}
        async with sidecar_for(trusted) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = {k.lower(): v for k, v in (await response.json())["headers"]}
        assert seen["x-real-ip"] == "203.0.113.66"
        assert seen["x-forwarded-prefix"] == "/evil"  # the ingress said so
