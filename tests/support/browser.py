"""Browser test helpers: a page server on another origin, three engines, a faulty proxy.

A page at `http://127.0.0.1:<page port>/run#<json>` imports claude-stream.js from the
sidecar (another origin), runs one scenario and leaves its result in `window.__result`
(and `#result`). Each engine opens that page and reads the result:

- Chromium: Playwright for Python, Debian's `chromium`;
- Firefox: `puppeteer-core` under node (`tests/js/firefox_page.mjs`), Debian's `firefox-esr`;
- WebKit: Selenium's WebKitGTK driver (`WebKitWebDriver`, `MiniBrowser`) under `xvfb-run`
  (`python -m tests.support.webkit`).

A test that acts mid-stream passes `steps`, which the engine's driver runs in order while the
page streams (`Step`): wait for a condition of the page, take the network offline or back
(Chromium and Firefox emulate it; WebKitWebDriver cannot), run page code, record a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from tests.support.apps import serving

if TYPE_CHECKING:
    from playwright.async_api import Browser

ROOT = Path(__file__).resolve().parent.parent.parent
JS_DIR = ROOT / "tests" / "js"
CHROMIUM = "/usr/bin/chromium"
FIREFOX = "/usr/bin/firefox-esr"
WEBKIT_DRIVER = "/usr/bin/WebKitWebDriver"
NPM_CI = "npm ci --prefix tests/js --no-audit --no-fund"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
RESULT_TIMEOUT = 60.0

Engine = Literal["chromium", "firefox", "webkit"]
ENGINES: tuple[Engine, ...] = ("chromium", "firefox", "webkit")
# The engines whose driver takes the page offline (Playwright's `set_offline`, WebDriver
# BiDi's network emulation through puppeteer-core); WebKitWebDriver has no such command.
OFFLINE_ENGINES: frozenset[Engine] = frozenset({"chromium", "firefox"})


class Step(TypedDict, total=False):
    """One driver step (exactly one key): `wait` until a page expression is true, set the
    network `offline` (true/false), `run` a page expression (awaited), `snapshot` a page
    expression's value into the result's `snapshots`."""

    wait: str
    offline: bool
    run: str
    snapshot: str


# The scenario runner, as a module script of the page. Its config comes in the URL fragment.
RUN_JS = """
const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const out = document.getElementById("out");
const result = { events: [], tokenTimes: [] };
window.__events = result.events;  // read live by tests that act mid-stream
// For an engine whose driver cannot take the page offline (WebKit): the test's proxy
// refuses new connections (`/control/network?up=0`, a route of the test's page server)
// and the page reads as offline (`navigator.onLine`, the `offline`/`online` events).
window.__setNetwork = async (up) => {
  await fetch("/control/network?up=" + (up ? 1 : 0));
  if (up) delete navigator.onLine;
  else Object.defineProperty(navigator, "onLine", { configurable: true, get: () => false });
  dispatchEvent(new Event(up ? "online" : "offline"));
};
try {
  const { streamClaude } = await import(cfg.module);
  const options = cfg.options || {};
  if (cfg.throwingCallbacks) {  // a page whose onToken has a bug; onEvent records
    result.seenByOnEvent = [];
    options.onToken = () => { throw new Error("a bug in the page"); };
    options.onEvent = (e) => result.seenByOnEvent.push(e.type);
  }
  const stream = streamClaude(cfg.url, options);
  if (cfg.abortAfterMs) setTimeout(() => stream.abort(), cfg.abortAfterMs);
  let tokens = 0;
  for await (const e of stream) {
    if (e.type === "error") {
      const { type, status, retryAfter, message } = e.error;
      result.events.push({ type: "error", error: { type, status, retryAfter, message } });
    } else {
      result.events.push(e);
    }
    if (e.type === "token") {
      out.append(e.text);
      tokens += 1;
      result.tokenTimes.push(performance.now());
      if (cfg.abortAfter && tokens === cfg.abortAfter) stream.abort();
    }
  }
  result.text = stream.text;
  result.domText = out.textContent;
  result.state = stream.state;
  result.streamId = stream.streamId;
  window.__finished = await stream.finished.catch((e) => ({ rejected: e.type }));
} catch (error) {
  result.thrown = String(error && error.stack || error);
}
window.__result = result;
document.getElementById("result").textContent = JSON.stringify(result);
"""
RUN_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>run</title></head><body>'
    '<pre id="out"></pre><pre id="result"></pre>'
    '<script type="module" src="/run.js"></script></body></html>'
)


def skip_unless_engine(engine: Engine) -> None:
    """Skip (never fail silently) when an engine is not installed, naming the install step."""
    if engine == "chromium" and not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    if engine == "firefox":
        if not Path(FIREFOX).exists():
            pytest.skip(f"{FIREFOX} is missing: apt-get install firefox-esr")
        if shutil.which("node") is None:
            pytest.skip("node is missing: apt-get install nodejs npm")
        if not (JS_DIR / "node_modules" / "puppeteer-core").is_dir():
            pytest.skip(f"puppeteer-core is not installed: {NPM_CI}")
    if engine == "webkit":
        if not Path(WEBKIT_DRIVER).exists() or webkit_browser() is None:
            pytest.skip("WebKitWebDriver/MiniBrowser missing: apt-get install webkit2gtk-driver")
        if shutil.which("xvfb-run") is None:
            pytest.skip("xvfb-run is missing: apt-get install xvfb xauth")


def webkit_browser() -> str | None:
    """MiniBrowser's path, from the packages that ship it."""
    for package in ("libwebkit2gtk-4.1-0", "webkit2gtk-driver"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listed = subprocess.run(
                ["dpkg", "-L", package], capture_output=True, text=True, check=False, timeout=10
            ).stdout
            for line in listed.splitlines():
                if line.endswith("/MiniBrowser") and Path(line).is_file():
                    return line
    return None


@contextlib.asynccontextmanager
async def page_server(
    extra: Callable[[web.Application], None] | None = None,
) -> AsyncIterator[str]:
    """Serves the run page on its own origin (`http://127.0.0.1:<port>`); yields that origin."""

    async def run_page(request: web.Request) -> web.Response:
        return web.Response(text=RUN_PAGE, content_type="text/html")

    async def run_js(request: web.Request) -> web.Response:
        return web.Response(text=RUN_JS, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/run", run_page)
    app.router.add_get("/run.js", run_js)
    if extra is not None:
        extra(app)
    async with serving(app) as origin:
        yield origin


def run_url(origin: str, config: dict[str, Any]) -> str:
    """The run page's URL for one scenario (`module`, `url`, `options`, `abortAfter` tokens
    or `abortAfterMs`, `throwingCallbacks`)."""
    return f"{origin}/run#{quote(json.dumps(config))}"


@contextlib.asynccontextmanager
async def launched_chromium() -> AsyncIterator[Browser]:
    """The system Chromium under Playwright, closed on the way out."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def run_in_chromium(url: str, steps: Sequence[Step] = ()) -> dict[str, Any]:
    async with launched_chromium() as browser:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(url)
        snapshots: list[Any] = []
        for step in steps:
            if "wait" in step:
                await page.wait_for_function(step["wait"], timeout=RESULT_TIMEOUT * 1000)
            elif "offline" in step:
                await context.set_offline(step["offline"])
            elif "run" in step:
                await page.evaluate(f"async () => {{ await ({step['run']}); }}")
            else:
                snapshots.append(await page.evaluate(step["snapshot"]))
        await page.wait_for_function("window.__result !== undefined", timeout=RESULT_TIMEOUT * 1000)
        result: dict[str, Any] = await page.evaluate("window.__result")
        if steps:
            result["snapshots"] = snapshots
        return result


async def _run_child(args: list[str], timeout: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    lines = stdout.decode().strip().splitlines()
    assert lines, stderr.decode(errors="replace")[-2000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def run_in_firefox(url: str, steps: Sequence[Step] = ()) -> dict[str, Any]:
    script = str(JS_DIR / "firefox_page.mjs")
    node = shutil.which("node") or "node"
    args = [node, script, url, FIREFOX, json.dumps(list(steps))]
    return await _run_child(args, RESULT_TIMEOUT * (1 + len(steps)) + 30)


async def run_in_webkit(url: str, steps: Sequence[Step] = ()) -> dict[str, Any]:
    if any("offline" in step for step in steps):
        raise ValueError("WebKitWebDriver cannot take a page offline: use window.__setNetwork")
    browser = webkit_browser() or ""
    args = ["xvfb-run", "-a", sys.executable, "-m", "tests.support.webkit", url, browser,
            json.dumps(list(steps))]  # fmt: skip
    return await _run_child(args, RESULT_TIMEOUT * (1 + len(steps)) + 30)


class Runner(Protocol):
    """Opens a run page in one engine, runs `steps`, returns the page's result."""

    def __call__(self, url: str, steps: Sequence[Step] = ()) -> Awaitable[dict[str, Any]]: ...


RUNNERS: dict[Engine, Runner] = {
    "chromium": run_in_chromium,
    "firefox": run_in_firefox,
    "webkit": run_in_webkit,
}


class FaultyProxy:
    """A TCP proxy to the sidecar that breaks the first event stream it carries.

    `mode="cut"` closes the client connection once `after_bytes` of the stream have passed;
    `mode="stall"` stops forwarding there and holds the connection open (a silent network).
    `mode="hold"` holds the stream's response head until `release` is set (a slow network
    between the sidecar and the page), then passes it all. Later streams (a resume, a
    cancel) pass untouched. `faults` counts the faults applied; `left` the connections
    whose client closed its side (a request it gave up on). While `refusing` is set, new
    connections are closed at once (the network is down).
    """

    def __init__(
        self, target_port: int, mode: Literal["cut", "stall", "hold"], after_bytes: int = 0
    ) -> None:
        self.release = asyncio.Event()
        self.refusing = False
        self.target_port = target_port
        self.mode = mode
        self.after_bytes = after_bytes
        self.faults = 0
        self.left = 0
        self._armed = True
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers += [client_w, up_w]
        upward = asyncio.ensure_future(self._pipe(client_r, up_w))
        try:
            await self._downward(up_r, client_w)
        finally:
            upward.cancel()
            client_w.transport.abort()
            up_w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        self.left += 1  # the client closed (or reset) its side

    async def _downward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        left: int | None = None  # body bytes of the armed stream still to pass
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if left is None and self._armed and b"text/event-stream" in data:
                    # Headers and some events always pass: a connection closed before any
                    # response would be retried by the browser, which is not a cut stream.
                    self._armed = False
                    if self.mode == "hold":
                        self.faults += 1
                        await self.release.wait()
                        writer.write(data)
                        await writer.drain()
                        continue
                    left = self.after_bytes + data.index(b"\r\n\r\n") + 4
                if left is not None and len(data) >= left:
                    writer.write(data[:left])
                    await writer.drain()
                    self.faults += 1
                    if self.mode == "stall":
                        await asyncio.Event().wait()  # until the test ends it
                    return  # cut: the caller aborts both connections
                if left is not None:
                    left -= len(data)
                writer.write(data)
                await writer.drain()


def proxy_controls(proxies: list[FaultyProxy]) -> Callable[[web.Application], None]:
    """Page server routes by which a page acts on the test's proxy (`proxies[0]`, set once
    the sidecar it fronts is up): `/control/network?up=0|1` refuses new connections or
    passes them again (`window.__setNetwork`), `/control/release` releases a held head."""

    def routes(app: web.Application) -> None:
        async def network(request: web.Request) -> web.Response:
            proxies[0].refusing = request.query.get("up") != "1"
            return web.Response(status=204)

        async def release(request: web.Request) -> web.Response:
            proxies[0].release.set()
            return web.Response(status=204)

        app.router.add_get("/control/network", network)
        app.router.add_get("/control/release", release)

    return routes


class ResumeEmulator:
    """A stand-in server speaking the resume protocol for the prompt route's events.

    `POST`/`GET <PATH>` starts stream `s1` (header `Sidecar-Stream-Id`, ids `s1:<n>`); a
    request with `Last-Event-ID` (header or `?last_event_id=`) resumes after n; an unknown
    (or, with `expired`, any) id is gone: 204 to a GET, a JSON 404 `resume_expired` to a
    POST, as the sidecar answers (`expired_status` forces one of them); the first
    `failed_resumes` resumes get 503 with `Retry-After: 1`; `DELETE <PATH>/s1` cancels. After `fault_after`
    events the first connection is cut (`fault="cut"`), goes silent (`"stall"`), ends with
    `shutting_down` without an id (`"shutdown"`: the replica serving it stops, the stream
    goes on elsewhere) or with a numbered `shutting_down` as its final event
    (`"final_shutdown"`: the generation was stopped). It checks the client side of the
    protocol (claude-stream.js) against a known server, independent of the sidecar's own
    implementation.
    """

    PATH = "/api/stream-response"
    STREAM = "s1"

    def __init__(
        self,
        fault: Literal["cut", "stall", "shutdown", "final_shutdown"],
        words: int = 30,
        fault_after: int = 8,
        *,
        failed_resumes: int = 0,
        expired: bool = False,
        expired_status: Literal[204, 404] | None = None,
    ) -> None:
        self.fault = fault
        self.failed_resumes = failed_resumes  # resumes answered 503 first (a replica restarting)
        self.expired = expired  # every resume answered as gone (the stream expired)
        self.expired_status = expired_status
        self.words = [("" if i == 1 else " ") + f"w{i}" for i in range(1, words + 1)]
        self.fault_after = fault_after
        self.resumed_from: list[str] = []  # the Last-Event-ID of each resume
        self.cancelled = 0
        self.cancel_auth: str | None = None  # the credential header the cancel carried
        self.started = 0
        self.app = web.Application()
        self.app.router.add_route("*", self.PATH, self._stream)
        self.app.router.add_route("*", self.PATH + "/{stream}", self._cancel)

    @property
    def full_text(self) -> str:
        return "".join(self.words)

    def _cors(self, request: web.Request) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
            "Access-Control-Expose-Headers": "sidecar-stream-id, retry-after",
            "Vary": "Origin",
        }

    def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={
            **self._cors(request),
            "Access-Control-Allow-Methods": "GET, POST, DELETE",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", ""),
        })  # fmt: skip

    async def _cancel(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            return self._preflight(request)
        if request.method != "DELETE" or request.match_info["stream"] != self.STREAM:
            return web.Response(status=404, headers=self._cors(request))
        self.cancelled += 1
        self.cancel_auth = request.headers.get("x-client-auth")
        return web.Response(status=204, headers=self._cors(request))

    def _gone(self, request: web.Request) -> web.Response:
        """The stream is unknown or expired: 204 to a GET, a JSON 404 to a POST."""
        status = self.expired_status or (204 if request.method == "GET" else 404)
        if status == 204:
            return web.Response(status=204, headers=self._cors(request))
        error = {"error": {"type": "resume_expired", "message": "no live stream with this id"}}
        return web.json_response(error, status=404, headers=self._cors(request))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return self._preflight(request)
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        start = 0
        if last is not None:
            stream, _, number = last.rpartition(":")
            if stream != self.STREAM or not number.isdigit():
                return self._gone(request)
            self.resumed_from.append(last)
            if self.expired:
                return self._gone(request)
            if self.failed_resumes:
                self.failed_resumes -= 1
                # As the sidecar's resume store answers when it fails.
                return web.Response(status=503, headers={**self._cors(request), "Retry-After": "1"})
            start = int(number)
        else:
            self.started += 1
        response = web.StreamResponse(headers={
            **self._cors(request), "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache", "Sidecar-Stream-Id": self.STREAM,
        })  # fmt: skip
        await response.prepare(request)
        first = last is None
        for n in range(start + 1, len(self.words) + 1):
            if first and n > self.fault_after:
                if self.fault == "stall":
                    await asyncio.sleep(3600)
                if self.fault in ("shutdown", "final_shutdown"):
                    numbered = f"id: {self.STREAM}:{n}\n" if self.fault == "final_shutdown" else ""
                    error = {"error": {"type": "shutting_down",
                                       "message": "the sidecar is shutting down"}}  # fmt: skip
                    await response.write(f"{numbered}data: {json.dumps(error)}\n\n".encode())
                    return response
                assert request.transport is not None
                request.transport.abort()
                return response
            token = json.dumps({"token": self.words[n - 1]})
            await response.write(f"id: {self.STREAM}:{n}\ndata: {token}\n\n".encode())
            await asyncio.sleep(0.02)
        done = {"done": True, "usage": {"output_tokens": len(self.words)},
                "stop_reason": "end_turn"}  # fmt: skip
        n = len(self.words) + 1
        await response.write(f"id: {self.STREAM}:{n}\ndata: {json.dumps(done)}\n\n".encode())
        return response


@contextlib.asynccontextmanager
async def running_emulator(emulator: ResumeEmulator) -> AsyncIterator[str]:
    """Serve `emulator` on a free port; yields its base URL."""
    async with serving(emulator.app, shutdown_timeout=0.1) as url:
        yield url


class RoutingProxy:
    """An HTTP proxy standing for the load balancer in front of several sidecars.

    A request without `Last-Event-ID` (a new stream, a preflight) goes to `first`; the
    n-th resume to `resumes[n - 1]` (the last one again after). The first stream's body is
    cut after `cut_after_bytes` (the connection drops), so the client resumes.
    `forwarded[i]` counts the body bytes of request i sent to the client, `routed[i]` its
    target port; request 0 is the first stream, preflights are not counted.
    """

    HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                            "host", "upgrade", "te", "trailer"})  # fmt: skip

    def __init__(self, first: int, resumes: list[int], cut_after_bytes: int) -> None:
        self.first = first
        self.resumes = resumes
        self.cut_after_bytes = cut_after_bytes
        self.forwarded: list[int] = []
        self.routed: list[int] = []
        self.resumed = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{path:.*}", self._forward)

    def _target(self, request: web.Request) -> int:
        if "Last-Event-ID" not in request.headers and "last_event_id" not in request.query:
            return self.first
        self.resumed += 1
        return self.resumes[min(self.resumed, len(self.resumes)) - 1]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        port = self._target(request)
        counted = request.method != "OPTIONS"
        index = len(self.forwarded)
        if counted:
            self.forwarded.append(0)
            self.routed.append(port)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        url = f"http://127.0.0.1:{port}{request.rel_url}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as http:
            async with http.request(
                request.method, url, headers=headers, data=await request.read(),
                allow_redirects=False,
            ) as upstream:  # fmt: skip
                out = {k: v for k, v in upstream.headers.items()
                       if k.lower() not in self.HOP_BY_HOP}  # fmt: skip
                response = web.StreamResponse(status=upstream.status, headers=out)
                await response.prepare(request)
                cut = counted and index == 0
                async for chunk in upstream.content.iter_any():
                    if cut and self.forwarded[0] + len(chunk) > self.cut_after_bytes:
                        await response.write(chunk[: self.cut_after_bytes - self.forwarded[0]])
                        self.forwarded[0] = self.cut_after_bytes
                        assert request.transport is not None
                        request.transport.abort()  # the client's connection drops mid-stream
                        return response
                    await response.write(chunk)
                    if counted:
                        self.forwarded[index] += len(chunk)
                await response.write_eof()
                return response


@contextlib.asynccontextmanager
async def routing_proxy(
    first: int, resumes: list[int], cut_after_bytes: int = 400
) -> AsyncIterator[tuple[RoutingProxy, str]]:
    """Serve a `RoutingProxy` on a free port; yields it and its base URL."""
    proxy = RoutingProxy(first, resumes, cut_after_bytes)
    async with serving(proxy.app, shutdown_timeout=0.1) as url:
        yield proxy, url
