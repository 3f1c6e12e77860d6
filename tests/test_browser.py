"""A real browser (Chromium via Playwright): EventSource and fetch streams across origins.

The page is served from one origin (http://127.0.0.1:P1), the sidecar listens on another
(http://127.0.0.1:P2); http://localhost:P1 serves the same page from a refused origin.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from sidecar import sse
from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from tests.support.apps import serving
from tests.support.browser import (
    CHROMIUM,
    ENGINES,
    RUNNERS,
    Engine,
    FaultyProxy,
    launched_chromium,
    skip_unless_engine,
)
from tests.support.policy import API_KEY, API_KEY_SHA256, AUDIENCE, ISSUER, SECRET, mint
from tests.support.resume import cutting_proxy, sse_request
from tests.support.sidecars import SidecarFactory

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import Browser, Page

PAGE = b"<!doctype html><html><head><title>app</title></head><body>app</body></html>"

# Runs in the page: an EventSource until `done` (or an error), every message recorded.
EVENT_SOURCE_JS = """(url) => new Promise((resolve) => {
  const seen = [];
  const source = new EventSource(url);
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    seen.push({id: event.lastEventId, data});
    if (data.done || data.error) { source.close(); resolve({ok: true, seen}); }
  };
  source.onerror = () => { source.close(); resolve({ok: false, seen}); };
})"""

# Runs in the page: a credentialed POST read chunk by chunk from a ReadableStream.
FETCH_STREAM_JS = """async ([url, token]) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"authorization": "Bearer " + token, "content-type": "application/json"},
      body: JSON.stringify({prompt: "hello from the browser"}),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "", chunks = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      chunks += 1;
      text += decoder.decode(value, {stream: true});
    }
    return {ok: true, status: response.status, chunks, text,
            requestId: response.headers.get("x-request-id")};
  } catch (error) {
    return {ok: false, error: String(error)};
  }
}"""


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    async with serving(app) as origin:
        yield int(origin.rsplit(":", 1)[1])


@pytest.fixture
async def page_port() -> AsyncIterator[int]:
    async with page_server() as port:
        yield port


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launched_chromium() as launched:
        yield launched


def config_for(page_port: int) -> dict[str, Any]:
    """Public prompt route, a JWT-protected one, CORS for the 127.0.0.1 page origin only."""
    return {
        "cors": {"allow_origins": [f"http://127.0.0.1:{page_port}"], "allow_credentials": True},
        "auth": {"mode": "required", "jwt": {"secret": SECRET, "issuer": ISSUER,
                                             "audience": AUDIENCE, "query_param": "access_token"}},
        "routes": [
            {"path": "/api/stream-response", "handler": "prompt", "auth": {"mode": "none"}},
            {"path": "/api/private", "handler": "prompt"},
        ],
    }  # fmt: skip


@contextlib.asynccontextmanager
async def opened(browser: Browser, url: str) -> AsyncIterator[Page]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(url)
        yield page
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def sidecar_and_page(
    sidecar_for: SidecarFactory, browser: Browser, page_port: int, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[SidecarServer, Page]]:
    """A sidecar configured by `config_for`, and the app's page open in the browser at `host`."""
    async with sidecar_for(config_for(page_port)) as sidecar:
        async with opened(browser, f"http://{host}:{page_port}/") as page:
            yield sidecar, page


def tokens_in_order(seen: list[dict[str, Any]]) -> list[str]:
    return [event["data"]["token"] for event in seen if "token" in event["data"]]


async def test_event_source_streams_tokens_then_done(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser, page_port: int
) -> None:
    async with sidecar_and_page(sidecar_for, browser, page_port) as (sidecar, page):
        url = sidecar.url + "/api/stream-response?prompt=hello%20browser"
        result = await page.evaluate(EVENT_SOURCE_JS, url)
    assert result["ok"] is True
    seen = result["seen"]
    # One message event per token, each with its own id `<stream id>:<n>`, then `done` with usage.
    stream_id = seen[0]["id"].rpartition(":")[0]
    assert [event["id"] for event in seen] == [f"{stream_id}:{i}" for i in range(1, 14)]
    assert len(tokens_in_order(seen)) == 12
    assert seen[-1]["data"]["done"] is True
    assert seen[-1]["data"]["usage"]["output_tokens"] == 12
    assert fake.state.counters["requests"] == 1


async def test_event_source_with_access_token_in_the_query(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser, page_port: int
) -> None:
    async with sidecar_and_page(sidecar_for, browser, page_port) as (sidecar, page):
        base = sidecar.url + "/api/private?prompt=hi"
        refused = await page.evaluate(EVENT_SOURCE_JS, base)
        assert fake.state.counters["requests"] == 0
        expired = await page.evaluate(EVENT_SOURCE_JS, base + "&access_token=" + mint(exp=1))
        allowed = await page.evaluate(EVENT_SOURCE_JS, base + "&access_token=" + mint())
    assert refused == {"ok": False, "seen": []}
    assert expired == {"ok": False, "seen": []}
    assert allowed["ok"] is True
    assert allowed["seen"][-1]["data"]["done"] is True
    assert len(tokens_in_order(allowed["seen"])) == 12
    assert fake.state.counters["requests"] == 1
    assert mint() not in str(fake.state.requests[0].body)  # the credential stays at the sidecar


async def test_fetch_with_authorization_passes_preflight_and_streams(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser, page_port: int
) -> None:
    async with sidecar_and_page(sidecar_for, browser, page_port) as (sidecar, page):
        result = await page.evaluate(FETCH_STREAM_JS, [sidecar.url + "/api/private", mint()])
    assert result["ok"] is True, result
    assert result["status"] == 200
    assert result["chunks"] >= 1
    assert result["requestId"]  # exposed to page code by Access-Control-Expose-Headers
    # The events (the opening id-only block `id: <stream id>:0` is none: it has no data).
    events = [block for block in result["text"].split("\n\n") if "data:" in block]
    assert len(events) == 13
    assert '"done":true' in events[-1].replace(" ", "")
    assert fake.state.counters["requests"] == 1


async def test_refused_origin_gets_a_cors_error_and_claude_is_never_called(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser, page_port: int
) -> None:
    # Same page, other origin: `localhost` is not `127.0.0.1` to the browser.
    async with sidecar_and_page(sidecar_for, browser, page_port, "localhost") as (server, page):
        fetched = await page.evaluate(FETCH_STREAM_JS, [server.url + "/api/private", mint()])
        streamed = await page.evaluate(
            EVENT_SOURCE_JS, server.url + "/api/stream-response?prompt=hi"
        )
    assert fetched["ok"] is False
    assert "Failed to fetch" in fetched["error"]
    assert streamed == {"ok": False, "seen": []}
    assert fake.state.counters["requests"] == 0


# Runs in the page: an EventSource that is NOT closed on error, so the browser reconnects by
# itself (with Last-Event-ID); every message and error is recorded until `done`.
RESUMING_EVENT_SOURCE_JS = """(url) => new Promise((resolve) => {
  const seen = [];
  let errors = 0;
  const source = new EventSource(url);
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    seen.push({id: event.lastEventId, data});
    if (data.done || data.error) { source.close(); resolve({ok: !data.error, seen, errors}); }
  };
  source.onerror = () => { errors += 1; if (errors > 5) { source.close(); resolve({ok: false, seen, errors}); } };
})"""


async def test_an_event_source_cut_mid_stream_resumes_by_itself_and_shows_the_text_once(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser, page_port: int
) -> None:
    config = {**config_for(page_port), "resume": {"detach_grace_seconds": 15}}
    prompt = "?prompt=%5B%5Bfake%20tokens%3D40%20tps%3D40%5D%5D%20hello%20browser"
    async with sidecar_for(config) as sidecar, cutting_proxy(sidecar.port, after=10) as proxy:
        async with opened(browser, f"http://127.0.0.1:{page_port}/") as page:
            url = f"http://127.0.0.1:{proxy.port}/api/stream-response{prompt}"
            result = await page.evaluate(RESUMING_EVENT_SOURCE_JS, url)
        whole = await sse_request(sidecar.port, target="/api/stream-response" + prompt)
    assert proxy.cut == 1  # the first connection was cut after 10 events...
    assert proxy.connections == 2  # ...and the browser came back once, by itself
    assert result["ok"] is True
    assert result["errors"] == 1
    seen = result["seen"]
    ids = [event["id"] for event in seen]
    assert len(ids) == len(set(ids)) == 41  # 40 tokens and done: none lost, none twice
    assert "".join(tokens_in_order(seen)) == whole.text
    assert seen[-1]["data"]["done"] is True
    assert fake.state.counters["requests"] == 2  # the stream once, the comparison once


async def test_an_event_source_cut_before_its_first_event_resumes_with_one_claude_call(
    fake: FakeServer, sidecar_for: SidecarFactory, browser: Browser, page_port: int
) -> None:
    """Cut after the head and before the first token (a long time to first token), the
    browser's own reconnect carries the opening id-only block's `<stream id>:0` as
    `Last-Event-ID`: a resume from event 1, not a second generation."""
    resume = {"detach_grace_seconds": 15, "announce_stream_id": True}
    config = {**config_for(page_port), "resume": resume}
    prompt = "?prompt=%5B%5Bfake%20tokens%3D12%20ttft_ms%3D1500%5D%5D%20slow%20start"
    # The response's first chunk: the opening id (a 24-character stream id) and a comment.
    # It passes; the connection is cut as the next bytes (the first token's) come, ~1.5 s
    # later: the browser has long read the head and the opening.
    first = b"id: %b:0\n\n%b" % (b"x" * 24, sse.PING)
    opening = len(b"%x\r\n%b\r\n" % (len(first), first))
    async with (
        sidecar_for(config) as sidecar,
        FaultyProxy(sidecar.port, "cut", after_bytes=opening + 1) as proxy,
    ):
        async with opened(browser, f"http://127.0.0.1:{page_port}/") as page:
            url = f"http://127.0.0.1:{proxy.port}/api/stream-response{prompt}"
            result = await page.evaluate(RESUMING_EVENT_SOURCE_JS, url)
    assert proxy.faults == 1  # the first connection was cut before any event...
    assert result["ok"] is True
    assert result["errors"] == 1  # ...and the browser came back once, by itself
    seen = result["seen"]
    stream_id = seen[0]["id"].rpartition(":")[0]
    assert [event["id"] for event in seen] == [f"{stream_id}:{n}" for n in range(1, 14)]
    assert len(tokens_in_order(seen)) == 12  # every token, once
    assert seen[-1]["data"]["done"] is True
    assert fake.state.counters["requests"] == 1  # Claude was called (and charged) once


# --------------------------------------------------------------------------- the official JS SDK

JS_MODULES = Path(__file__).resolve().parent / "js" / "node_modules"
SDK_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script type="importmap">{"imports": {
  "@opentelemetry/api": "/node_modules/@opentelemetry/api/dist/index.mjs",
  "standardwebhooks": "/stub/standardwebhooks.mjs"}}</script>
</head><body><script type="module">
import Anthropic from "/node_modules/@anthropic-ai/sdk/index.mjs";
const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const client = new Anthropic({ apiKey: cfg.key, baseURL: cfg.base, maxRetries: 0,
                               dangerouslyAllowBrowser: true });
const result = {};
try {
  const stream = client.messages.stream({ model: "claude-sonnet-5-5", max_tokens: 64,
    messages: [{ role: "user", content: cfg.prompt }] });
  result.deltas = [];
  stream.on("text", (text) => result.deltas.push(text));
  const message = await stream.finalMessage();
  result.text = message.content[0].text;
  result.stop = message.stop_reason;
} catch (error) {
  result.error = { name: error.constructor.name, status: error.status,
                   retryAfter: error.headers && error.headers.get("retry-after"),
                   requestId: error.requestID || null };
}
window.__result = result;
</script></body></html>"""


WEBHOOK_STUB = "export class Webhook { constructor() { throw new Error('not in a browser'); } }"


@contextlib.asynccontextmanager
async def sdk_page_server() -> AsyncIterator[str]:
    """The SDK's own ES modules from tests/js/node_modules, and a page that uses them."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=SDK_PAGE, content_type="text/html")

    async def module(request: web.Request) -> web.Response:
        path = (JS_MODULES / request.match_info["path"]).resolve()
        if not path.is_relative_to(JS_MODULES) or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type="text/javascript")

    async def stub(request: web.Request) -> web.Response:
        # A CommonJS package the SDK imports for webhook verification only (unused here).
        return web.Response(text=WEBHOOK_STUB, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/node_modules/{path:.+}", module)
    app.router.add_get("/stub/standardwebhooks.mjs", stub)
    async with serving(app) as origin:
        yield origin


@pytest.mark.parametrize("engine", ENGINES)
async def test_official_js_sdk_streams_from_a_browser_with_default_cors(
    fake: FakeServer, sidecar_for: SidecarFactory, engine: Engine
) -> None:
    # The SDK sets `User-Agent` on every call; Firefox and Safari send it (Chromium drops
    # it), so their preflights ask for it: the default allowed headers name it.
    skip_unless_engine(engine)
    if not (JS_MODULES / "@anthropic-ai" / "sdk").is_dir():
        pytest.skip("the JS SDK is not installed: npm ci --prefix tests/js")
    async with sdk_page_server() as origin:
        # Only the origin is configured: allowed and exposed headers are the defaults.
        config = {
            "cors": {"allow_origins": [origin]},
            "auth": {"mode": "required", "api_keys": [
                {"name": "web", "sha256": API_KEY_SHA256, "user": "web"}]},
            "quotas": {"requests_per_minute": 1},
        }  # fmt: skip
        async with sidecar_for(config) as sidecar:
            sent = {"key": API_KEY, "base": sidecar.url, "prompt": "hello from the SDK"}
            page = f"{origin}/#{quote(json.dumps(sent))}"
            streamed = await RUNNERS[engine](page)
            limited = await RUNNERS[engine](page)
    assert "error" not in streamed, streamed
    assert len(streamed["deltas"]) == 12
    assert "".join(streamed["deltas"]) == streamed["text"]
    assert streamed["stop"] == "end_turn"
    # The sidecar's own 429 reaches the SDK with its headers readable by page code.
    assert limited["error"]["name"] == "RateLimitError"
    assert limited["error"]["status"] == 429
    assert int(limited["error"]["retryAfter"]) > 0
    assert fake.state.counters["requests"] == 1
