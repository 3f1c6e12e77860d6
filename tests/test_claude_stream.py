"""claude-stream.js, the browser client module, in Chromium, Firefox and WebKit.

Each test opens a page on one origin that imports the module from the sidecar (another
origin) and streams from the prompt route; faults come from the fake Claude's knobs and
from a proxy that cuts or stalls the stream. Resume tests need the server to make streams
resumable (`Sidecar-Stream-Id`); against a server that does not, they skip and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

import sidecar.browser
from sidecar import sse
from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from tests.support.browser import (
    ENGINES,
    JS_DIR,
    NPM_CI,
    OFFLINE_ENGINES,
    RUNNERS,
    Engine,
    FaultyProxy,
    ResumeEmulator,
    Step,
    launched_chromium,
    page_server,
    proxy_controls,
    routing_proxy,
    run_url,
    running_emulator,
    skip_unless_engine,
)
from tests.support.policy import AUDIENCE, ISSUER, SECRET, mint
from tests.support.redis_server import RedisServer
from tests.support.resume import replica
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds

PROMPT = "/api/stream-response"
NOT_RESUMABLE = "the sidecar does not make streams resumable (no Sidecar-Stream-Id header)"
pytestmark = pytest.mark.timeout(240)


# The test sidecars cancel a stream as soon as its client leaves (no detach grace):
# a resume after a cut needs the generation to wait for the reconnect.
GRACE = {"detach_grace_seconds": 10}


def config_for(origin: str, **extra: Any) -> dict[str, Any]:
    return {"cors": {"allow_origins": [origin]}, **extra}


@contextlib.asynccontextmanager
async def page_and_sidecar(
    sidecar_for: SidecarFactory, **config: Any
) -> AsyncIterator[tuple[str, SidecarServer]]:
    """The run page's origin and a sidecar that allows it by CORS (plus `config`)."""
    async with page_server() as origin, sidecar_for(config_for(origin, **config)) as sidecar:
        yield origin, sidecar


async def reference(base: str, prompt: str) -> tuple[str, bool]:
    """The uninterrupted text for `prompt`, and whether the server's streams are resumable."""
    async with aiohttp.ClientSession() as http:
        async with http.post(base + PROMPT, json={"prompt": prompt}) as response:
            assert response.status == 200
            resumable = "Sidecar-Stream-Id" in response.headers
            body = await response.text()
    text = ""
    for line in body.splitlines():
        if line.startswith("data: "):
            text += json.loads(line[6:]).get("token", "")
    return text, resumable


def asking(
    method: str, path: str, prompt: str = "hello", **options: Any
) -> tuple[str, dict[str, Any]]:
    """The module's URL and options asking `prompt` at `path`: a POST's JSON body, or a
    GET's `?prompt=` (its `EventSource` sends no body)."""
    settings: dict[str, Any] = {"method": method, **options}
    if method == "POST":
        settings["body"] = {"prompt": prompt}
        return path, settings
    return path + "?" + urllib.parse.urlencode({"prompt": prompt}), settings


def kinds(result: dict[str, Any]) -> list[str]:
    return [event["type"] for event in result["events"]]


async def run(engine: Engine, origin: str, sidecar: str, **config: Any) -> dict[str, Any]:
    module = sidecar + "/_sidecar/claude-stream.js"
    result = await RUNNERS[engine](run_url(origin, {"module": module, **config}))
    assert "thrown" not in result, result["thrown"]
    return result


async def post(
    engine: Engine, origin: str, sidecar: str, prompt: str, **config: Any
) -> dict[str, Any]:
    """The page's result for POSTing `prompt` straight to the sidecar's stream route."""
    return await run(
        engine,
        origin,
        sidecar,
        url=sidecar + PROMPT,
        options={"body": {"prompt": prompt}},
        **config,
    )


async def run_through_fault(
    engine: Engine,
    sidecar_for: SidecarFactory,
    prompt: str,
    fault: Literal["cut", "stall"],
    *,
    resumable: bool,
    config: dict[str, Any],
    options: dict[str, Any],
) -> tuple[dict[str, Any], str, FaultyProxy]:
    """Streams `prompt` in the page through a proxy that cuts or stalls it after 400 bytes.

    Skips unless the server's streams are as `resumable` as the test needs. Returns the
    page's result, the uninterrupted text and the proxy (which counts its faults).
    """
    async with page_and_sidecar(sidecar_for, **config) as (origin, sidecar):
        expected, is_resumable = await reference(sidecar.url, prompt)
        if resumable and not is_resumable:
            pytest.skip(NOT_RESUMABLE)
        if not resumable and is_resumable:
            pytest.skip("the sidecar resumes streams: covered by the resume tests")
        async with FaultyProxy(sidecar.port, fault, after_bytes=400) as proxy:
            result = await run(
                engine, origin, sidecar.url, url=f"http://127.0.0.1:{proxy.port}{PROMPT}",
                options={"body": {"prompt": prompt}, **options},
            )  # fmt: skip
    return result, expected, proxy


@pytest.mark.parametrize("engine", ENGINES)
async def test_post_streams_tokens_incrementally_then_done(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine(engine)
    prompt = "hello module [[fake tokens=12 tps=20]]"
    async with page_and_sidecar(sidecar_for) as (origin, sidecar):
        expected, _ = await reference(sidecar.url, prompt)
        result = await post(engine, origin, sidecar.url, prompt)
    assert kinds(result) == ["open", *["token"] * 12, "done"], result["events"][-1]
    assert result["state"] == "done"
    assert result["text"] == result["domText"] == expected
    done = result["events"][-1]
    assert done["usage"]["output_tokens"] == 12
    assert done["stopReason"] == "end_turn"
    times = result["tokenTimes"]
    # Paced at 20 tokens/s, the DOM grew over time, not in one update at the end.
    assert times[-1] - times[0] > 200


@pytest.mark.parametrize("engine", ENGINES)
async def test_get_streams_through_event_source(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine(engine)
    async with page_and_sidecar(sidecar_for) as (origin, sidecar):
        expected, _ = await reference(sidecar.url, "hello event source")
        result = await run(
            engine, origin, sidecar.url,
            url=sidecar.url + PROMPT + "?prompt=hello%20event%20source",
            options={"method": "GET"},
        )  # fmt: skip
    assert kinds(result) == ["open", *["token"] * 12, "done"]
    assert result["text"] == expected
    assert fake.state.counters["requests"] == 2  # the reference and the page: no re-run


async def test_a_throwing_callback_breaks_neither_the_stream_nor_the_other_callbacks(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine("chromium")
    async with page_and_sidecar(sidecar_for) as (origin, sidecar):
        result = await post(
            "chromium", origin, sidecar.url, "hello [[fake tokens=5 tps=0]]",
            throwingCallbacks=True,
        )  # fmt: skip
    assert kinds(result) == ["open", *["token"] * 5, "done"]
    assert result["seenByOnEvent"] == kinds(result)  # onEvent saw the tokens onToken threw on


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_errors_carry_type_status_and_retry_after(
    engine: Engine, method: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """In GET mode too: its stream is read by `fetch`, which sees a refusal's status, JSON
    and `retry-after` (an `EventSource` hides them)."""
    skip_unless_engine(engine)
    prompt = "limited [[fake fault=rate_limit retry_after=20]]"
    async with page_and_sidecar(sidecar_for, claude={"max_retries": 0}) as (origin, sidecar):
        results = []
        for text in (prompt, "cut [[fake fault=midstream_error after=3]]"):
            target, options = asking(method, sidecar.url + PROMPT, text)
            results.append(await run(engine, origin, sidecar.url, url=target, options=options))
        limited, midstream = results
    assert kinds(limited) == ["error"]
    error = limited["events"][0]["error"]
    assert (error["type"], error["status"], error["retryAfter"]) == ("rate_limited", 429, 20)
    assert limited["state"] == "error"
    assert kinds(midstream) == ["open", "token", "token", "token", "error"]
    assert midstream["events"][-1]["error"]["type"] == "overloaded"
    assert midstream["text"]  # the partial answer stays


async def test_another_routes_stream_is_an_unsupported_stream_at_once(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Pointed at the anthropic or the ui route, the module fails on the first event with
    `unsupported_stream`: no wait for a `done` that never comes, no resume of a stream
    that was never cut."""
    skip_unless_engine("chromium")
    anthropic = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
                 "messages": [{"role": "user", "content": "hello"}]}  # fmt: skip
    chat = {
        "id": "chat-1",
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    async with page_and_sidecar(sidecar_for) as (origin, sidecar):
        results = [
            await run(
                "chromium", origin, sidecar.url, url=sidecar.url + path, options={"body": body}
            )
            for path, body in (("/v1/messages", anthropic), ("/api/chat", chat))
        ]
    for result in results:
        assert kinds(result) == ["open", "error"], result
        assert result["events"][-1]["error"]["type"] == "unsupported_stream"


@pytest.mark.parametrize("engine", ENGINES)
async def test_abort_cancels_the_generation_at_claude(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine(engine)
    prompt = "long answer [[fake tokens=200 tps=10]]"
    async with page_and_sidecar(sidecar_for) as (origin, sidecar):
        result = await post(engine, origin, sidecar.url, prompt, abortAfter=3)
        for _ in range(100):
            if fake.state.counters["streams_cancelled"]:
                break
            await asyncio.sleep(0.1)
    assert kinds(result) == ["open", "token", "token", "token", "aborted"]
    assert result["state"] == "aborted"
    assert fake.state.counters["streams_cancelled"] == 1  # Claude stopped generating
    assert fake.state.counters["streams_completed"] == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_abort_while_claude_has_not_answered_yet_cancels_it(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Stop before the first token: the response is readable at once in every engine (a
    Firefox `fetch()` waits for body bytes, so the stream opens with a comment), so the
    module has the stream's id and cancels the generation instead of detaching from it."""
    skip_unless_engine(engine)
    prompt = "slow to start [[fake tokens=20 ttft_ms=8000]]"
    async with page_and_sidecar(sidecar_for, resume=GRACE) as (origin, sidecar):
        result = await post(engine, origin, sidecar.url, prompt, abortAfterMs=500)
        # At once, not after the detach grace (10 s): the cancel reached Claude.
        await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1), 5)
    assert kinds(result) == ["open", "aborted"]  # the head was read before the abort
    assert result["streamId"]
    assert fake.state.counters["streams_completed"] == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_cut_connection_resumes_without_duplicating_text(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine(engine)
    result, expected, proxy = await run_through_fault(
        engine, sidecar_for, "resume me [[fake tokens=40 tps=25]]", "cut", resumable=True,
        config={"resume": GRACE}, options={"retryBaseMs": 100},
    )  # fmt: skip
    assert proxy.faults == 1
    assert "reconnecting" in kinds(result)
    assert result["state"] == "done"
    assert result["text"] == result["domText"] == expected  # every token once
    assert fake.state.counters["requests"] == 2  # the resume never called Claude again


@pytest.mark.parametrize("engine", ENGINES)
async def test_watchdog_trips_on_a_stall_and_resumes(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine(engine)
    result, expected, _ = await run_through_fault(
        engine, sidecar_for, "stall me [[fake tokens=40 tps=25]]", "stall", resumable=True,
        config={"resume": GRACE}, options={"idleTimeoutMs": 1500, "retryBaseMs": 100},
    )  # fmt: skip
    reconnects = [e for e in result["events"] if e["type"] == "reconnecting"]
    assert reconnects[0]["reason"] == "idle"
    assert result["state"] == "done"
    assert result["text"] == expected


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_stall_before_the_first_event_resumes_under_custom_cors_lists(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Lists written for the app's own headers still let the module resume: before the
    first event the stream id is only in `Sidecar-Stream-Id`, and the resume sends
    `Last-Event-ID` (the resume protocol's headers are always granted)."""
    skip_unless_engine(engine)
    prompt = "resume me early [[fake tokens=12 tps=25 ttft_ms=400]]"
    async with page_server() as origin:
        cors = {"allow_origins": [origin], "allow_headers": ["content-type", "x-app-tenant"],
                "expose_headers": ["x-request-id"]}  # fmt: skip
        async with sidecar_for({"cors": cors, "resume": GRACE}) as sidecar:
            expected, _ = await reference(sidecar.url, prompt)
            # The network goes silent after the response's head and its first chunk (the
            # opening id `<24-character stream id>:0` and a comment), before the first
            # event: the watchdog trips.
            first = b"id: %b:0\n\n%b" % (b"x" * 24, sse.PING)
            opening = len(b"%x\r\n%b\r\n" % (len(first), first))
            async with FaultyProxy(sidecar.port, "stall", after_bytes=opening) as proxy:
                result = await run(
                    engine, origin, sidecar.url, url=f"http://127.0.0.1:{proxy.port}{PROMPT}",
                    options={"body": {"prompt": prompt}, "retryBaseMs": 50,
                             "idleTimeoutMs": 1500, "headers": {"x-app-tenant": "t1"}},
                )  # fmt: skip
    assert proxy.faults == 1, result["events"]
    assert kinds(result)[:2] == ["open", "reconnecting"], result["events"]
    assert "resumed" in kinds(result)
    assert result["state"] == "done"
    assert result["text"] == expected  # every token once
    assert fake.state.counters["requests"] == 2  # the resume never called Claude again


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_cut_before_the_first_event_resumes_from_the_heads_stream_id(
    engine: Engine, method: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The connection drops after the response's head and before the first event (a long
    time to first token). The stream id is then only in `Sidecar-Stream-Id`: both modes
    read the head (a GET too: it is read by `fetch`, not by an `EventSource`, which cannot
    see headers), and resume with the cursor `<stream id>:0`, a read from event 1, instead
    of failing or asking Claude again."""
    skip_unless_engine(engine)
    prompt = "cut early [[fake tokens=12 tps=25 ttft_ms=1500]]"
    async with page_and_sidecar(sidecar_for, resume=GRACE) as (origin, sidecar):
        expected, _ = await reference(sidecar.url, prompt)
        # The head and the opening `: ping` pass; the cut comes with the next byte, the first
        # token's, ~1.5 s later: the page has long read the head.
        opening = len(b"%x\r\n%b\r\n" % (len(sse.PING), sse.PING))
        async with FaultyProxy(sidecar.port, "cut", after_bytes=opening + 1) as proxy:
            target, options = asking(
                method, f"http://127.0.0.1:{proxy.port}{PROMPT}", prompt, retryBaseMs=50
            )
            result = await run(engine, origin, sidecar.url, url=target, options=options)
    assert proxy.faults == 1
    assert kinds(result)[:2] == ["open", "reconnecting"], result["events"]
    assert "resumed" in kinds(result)
    assert result["state"] == "done"
    assert result["text"] == result["domText"] == expected  # every token once
    assert fake.state.counters["requests"] == 2  # the reference and the page: no re-run


async def test_without_resume_a_cut_reports_the_loss_and_keeps_the_text(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine("chromium")
    result, expected, proxy = await run_through_fault(
        "chromium", sidecar_for, "cut me [[fake tokens=40 tps=25]]", "cut", resumable=False,
        config={}, options={},
    )  # fmt: skip
    assert proxy.faults == 1
    assert kinds(result)[-1] == "error"
    assert result["events"][-1]["error"]["type"] == "connection_lost"
    assert result["text"]
    assert expected.startswith(result["text"])
    assert result["text"] != expected
    assert fake.state.counters["requests"] == 2  # no blind re-run that would pay again


async def test_without_resume_the_watchdog_ends_a_stalled_stream(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine("chromium")
    result, expected, proxy = await run_through_fault(
        "chromium", sidecar_for, "stall me [[fake tokens=40 tps=25]]", "stall", resumable=False,
        config={"resume": GRACE}, options={"idleTimeoutMs": 1500},
    )  # fmt: skip
    assert proxy.faults == 1
    error = result["events"][-1]["error"]
    assert error["type"] == "timeout"
    assert "1.5 s" in error["message"]
    assert result["text"]
    assert expected.startswith(result["text"])


async def test_a_disallowed_origin_is_blocked(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine("chromium")
    async with page_and_sidecar(sidecar_for) as (origin, sidecar):
        refused = origin.replace("127.0.0.1", "localhost")  # same page, another origin
        result = await post("chromium", refused, sidecar.url, "hi")
    assert kinds(result) == ["error"]
    assert result["events"][0]["error"]["type"] == "connection_error"
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("method", "fault"), [("POST", "cut"), ("GET", "cut"), ("POST", "stall")])
async def test_module_resumes_by_the_resume_protocol(
    engine: Engine, method: str, fault: Literal["cut", "stall"], sidecar_for: SidecarFactory
) -> None:
    """The client half of the protocol, against an emulator: resume after a cut or a stall."""
    skip_unless_engine(engine)
    emulator = ResumeEmulator(fault)
    async with page_server() as origin, sidecar_for() as sidecar, running_emulator(emulator) as url:
        target, options = asking(
            method, url + ResumeEmulator.PATH, idleTimeoutMs=1500, retryBaseMs=50
        )
        result = await run(engine, origin, sidecar.url, url=target, options=options)
    reconnects = [e for e in result["events"] if e["type"] == "reconnecting"]
    assert len(reconnects) == 1
    if fault == "stall":
        assert reconnects[0]["reason"] == "idle"  # the watchdog, not the network, noticed
    assert "resumed" in kinds(result)
    assert result["state"] == "done"
    assert result["text"] == result["domText"] == emulator.full_text  # each word once
    assert emulator.started == 1
    # Resumed after the last event the page received (a cut may lose some in flight).
    (resumed,) = emulator.resumed_from
    assert 1 <= int(resumed.removeprefix("s1:")) <= emulator.fault_after
    assert result["streamId"] == "s1"


async def test_a_get_resume_keeps_its_id_when_the_url_has_a_fragment(
    sidecar_for: SidecarFactory,
) -> None:
    """GET mode's resume adds `last_event_id` to the URL's query, not after its `#…`
    (a fragment is never sent: the resume would start a second generation instead)."""
    skip_unless_engine("chromium")
    emulator = ResumeEmulator("cut")
    async with page_server() as origin, sidecar_for() as sidecar, running_emulator(emulator) as url:
        target, options = asking("GET", url + ResumeEmulator.PATH, retryBaseMs=50)
        result = await run("chromium", origin, sidecar.url, url=target + "#chat?x=1",
                           options=options)  # fmt: skip
    assert emulator.started == 1
    assert len(emulator.resumed_from) == 1
    assert result["state"] == "done"
    assert result["text"] == emulator.full_text


@pytest.mark.parametrize(
    ("engine", "method"), [*((engine, "POST") for engine in ENGINES), ("chromium", "GET")]
)
async def test_abort_sends_the_cancel_by_the_resume_protocol(
    engine: Engine, method: str, sidecar_for: SidecarFactory
) -> None:
    skip_unless_engine(engine)
    emulator = ResumeEmulator("stall", fault_after=20)
    options: dict[str, Any] = {"method": method, "headers": {"x-client-auth": "t1"}}
    if method == "POST":
        options["body"] = {"prompt": "hello"}
    async with page_server() as origin, sidecar_for() as sidecar, running_emulator(emulator) as url:
        result = await run(
            engine, origin, sidecar.url, url=url + ResumeEmulator.PATH, options=options,
            abortAfter=3,
        )  # fmt: skip
        for _ in range(100):
            if emulator.cancelled:
                break
            await asyncio.sleep(0.05)
    # abort() comes after the third token; tokens already in the same network read may
    # still be handed out before it, none after it.
    seen = kinds(result)
    assert seen[0] == "open"
    assert seen[-1] == "aborted"
    assert set(seen[1:-1]) == {"token"}
    assert len(seen) >= 5
    assert emulator.cancelled == 1  # DELETE <route>/<stream id>: the generation is cancelled
    assert emulator.cancel_auth == "t1"  # with the stream's credentials, in GET mode too
    assert emulator.resumed_from == []


def test_sse_parser_follows_the_rules_at_every_split() -> None:
    """The module's parser under node: line ends, comments, ids (an id-only block too),
    multi-line data, any split."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is missing: apt-get install nodejs npm")
    module = Path(sidecar.browser.__file__).parent / "static" / "claude-stream.js"
    text = (
        "id: s1:0\n\n"  # the prompt route's opening id-only block: no message
        ": ping\r\n\r\n"
        'id: s1:1\r\ndata: {"token":"a"}\r\n\r\n'
        "data: line one\ndata: line two\n\n"  # no id: keeps the last one, not its own
        "event: custom\rid: s1:2\rdata:no-space\r\r"
        "id: bad\0id\ndata: x\n\n"  # an id with NUL is ignored
        "retry: 10\nfield-only\ndata\n\n"
        "data: unterminated"
    )
    script = str(JS_DIR / "sse_parser.mjs")
    run = subprocess.run(
        [node, script, str(module), json.dumps(text)], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    *splits, helpers = [json.loads(line) for line in run.stdout.splitlines()]
    expected = [
        {"id": "s1:1", "ownId": True, "event": "message", "data": '{"token":"a"}'},
        {"id": "s1:1", "ownId": False, "event": "message", "data": "line one\nline two"},
        {"id": "s1:2", "ownId": True, "event": "custom", "data": "no-space"},
        {"id": "s1:2", "ownId": False, "event": "message", "data": "x"},
        {"id": "s1:2", "ownId": False, "event": "message", "data": ""},
    ]
    assert len(splits) == len(text) + 1
    for cut, messages in enumerate(splits):
        assert messages == expected, f"split at {cut}"
    assert helpers == {"numbers": [7, 7, None, None, 2, None], "streams": ["s1", None, "s:1"]}


@pytest.mark.parametrize(("method", "gone_status"), [("POST", 204), ("POST", 404), ("GET", 204)])
async def test_a_resume_answered_503_is_retried_and_a_gone_stream_ends_it(
    method: str, gone_status: Literal[204, 404], sidecar_for: SidecarFactory
) -> None:
    """503: a replica restarting, retried. 204 (a GET's answer) or the JSON 404
    `resume_expired` (a POST's): the stream is gone, `resume_unavailable` at once. In GET
    mode too: its resumes are fetched, so the status is seen (`EventSource` hides it)."""
    skip_unless_engine("chromium")
    busy = ResumeEmulator("cut", failed_resumes=1)
    gone = ResumeEmulator("cut", expired=True, expired_status=gone_status)
    target, options = asking(method, ResumeEmulator.PATH, retryBaseMs=50)
    async with page_server() as origin, sidecar_for() as sidecar:
        async with running_emulator(busy) as url:
            retried = await run("chromium", origin, sidecar.url, url=url + target,
                                options=options)  # fmt: skip
        async with running_emulator(gone) as url:
            expired = await run("chromium", origin, sidecar.url, url=url + target,
                                options=options)  # fmt: skip
    reconnects = [e for e in retried["events"] if e["type"] == "reconnecting"]
    assert [e["attempt"] for e in reconnects] == [1, 2]
    assert reconnects[1]["delayMs"] >= 1000  # the 503's Retry-After, not the 50 ms backoff
    assert retried["state"] == "done"
    assert retried["text"] == busy.full_text
    assert len(gone.resumed_from) == 1  # final: no more attempts
    error = expired["events"][-1]["error"]
    assert (error["type"], error["status"]) == ("resume_unavailable", gone_status)
    assert expired["text"]
    assert gone.full_text.startswith(expired["text"])


@pytest.mark.parametrize(
    ("engine", "method"), [*((engine, "POST") for engine in ENGINES), ("chromium", "GET")]
)
async def test_a_replica_stopping_under_a_read_is_a_lost_connection_not_an_error(
    engine: Engine, method: str, sidecar_for: SidecarFactory
) -> None:
    """`shutting_down` without an id: the replica serving the read stops, the stream goes
    on elsewhere. The module resumes from its last event, as after a cut."""
    skip_unless_engine(engine)
    emulator = ResumeEmulator("shutdown")
    target, options = asking(method, ResumeEmulator.PATH, retryBaseMs=50)
    async with page_server() as origin, sidecar_for() as sidecar, running_emulator(emulator) as url:
        result = await run(engine, origin, sidecar.url, url=url + target, options=options)
    reconnects = [e for e in result["events"] if e["type"] == "reconnecting"]
    assert [(e["attempt"], e["reason"]) for e in reconnects] == [(1, "shutting_down")]
    assert "error" not in kinds(result)
    assert result["state"] == "done"
    assert result["text"] == result["domText"] == emulator.full_text  # each word once
    assert emulator.resumed_from == [f"s1:{emulator.fault_after}"]  # from its last event


async def test_a_numbered_shutting_down_is_the_streams_end(sidecar_for: SidecarFactory) -> None:
    """With an id, `shutting_down` is the stream's own final event (its generation was
    stopped): nothing is left to read anywhere, so it is the stream's error."""
    skip_unless_engine("chromium")
    emulator = ResumeEmulator("final_shutdown")
    async with page_server() as origin, sidecar_for() as sidecar, running_emulator(emulator) as url:
        result = await run("chromium", origin, sidecar.url, url=url + emulator.PATH,
                           options={"body": {"prompt": "hello"}, "retryBaseMs": 50})  # fmt: skip
    assert kinds(result) == ["open", *["token"] * emulator.fault_after, "error"]
    assert result["events"][-1]["error"]["type"] == "shutting_down"
    assert result["state"] == "error"
    assert emulator.resumed_from == []


@pytest.mark.parametrize(
    ("engine", "method"), [*((engine, "POST") for engine in ENGINES), ("chromium", "GET")]
)
async def test_a_stream_the_sidecar_no_longer_has_is_resume_unavailable(
    engine: Engine, method: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A resume of a stream the sidecar does not have is its JSON 404 `resume_expired` (a
    POST) or a 204 (a GET): the module reports the documented `resume_unavailable`, with
    the status."""
    skip_unless_engine(engine)
    prompt = "resume me elsewhere [[fake tokens=40 tps=25]]"
    async with (
        page_server() as origin,
        sidecar_for(config_for(origin, resume=GRACE)) as producer,
        sidecar_for(config_for(origin)) as stranger,  # its own memory store: never saw it
        routing_proxy(producer.port, [stranger.port]) as (proxy, url),
    ):
        expected, resumable = await reference(producer.url, prompt)
        if not resumable:
            pytest.skip(NOT_RESUMABLE)
        target, options = asking(method, url + PROMPT, prompt, retryBaseMs=50)
        result = await run(engine, origin, producer.url, url=target, options=options)
    assert proxy.routed == [producer.port, stranger.port]  # the cut stream, one resume
    assert kinds(result)[-2:] == ["reconnecting", "error"]
    error = result["events"][-1]["error"]
    assert (error["type"], error["status"]) == (
        "resume_unavailable",
        404 if method == "POST" else 204,
    )
    assert result["state"] == "error"
    assert result["text"]
    assert expected.startswith(result["text"])  # what arrived stays


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_read_on_a_replica_sent_sigterm_resumes_on_another(
    engine: Engine, fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two replicas sharing Redis behind a load balancer. The stream starts on A and is cut;
    the resume lands on B, which reads it from Redis; B is sent SIGTERM mid-read and ends
    the read with `shutting_down` (no id); the module resumes again, on A, and ends with
    the whole text, each token once, Claude called once for it."""
    skip_unless_engine(engine)
    prompt = "across replicas [[fake tokens=120 tps=12]]"
    async with page_server() as origin:
        cors = {"allow_origins": [origin]}
        async with (
            replica(tmp_path, "a", fake, redis_server, cors=cors) as (_, port_a, _),
            replica(tmp_path, "b", fake, redis_server, cors=cors) as (process_b, port_b, b_yaml),
            routing_proxy(port_a, [port_b, port_a]) as (proxy, url),
        ):
            a = f"http://127.0.0.1:{port_a}"
            expected, resumable = await reference(a, prompt)
            if not resumable:
                pytest.skip(NOT_RESUMABLE)
            page = asyncio.create_task(run(engine, origin, a, url=url + PROMPT,
                options={"body": {"prompt": prompt}, "retryBaseMs": 100}))  # fmt: skip
            # B is serving the resumed read: stop it (grace 1 s, then its readers end).
            await eventually(
                lambda: holds(len(proxy.forwarded) > 1 and proxy.forwarded[1] > 0), timeout=60
            )
            process_b.send_signal(signal.SIGTERM)
            result = await page
            assert await asyncio.to_thread(process_b.wait, 10) == 0
    assert proxy.routed == [port_a, port_b, port_a]
    reasons = [e["reason"] for e in result["events"] if e["type"] == "reconnecting"]
    assert reasons[-1] == "shutting_down", b_yaml.with_suffix(".log").read_text()[-4000:]
    assert reasons[0] in ("closed", "network")  # the cut
    assert len(reasons) == 2
    assert "error" not in kinds(result)
    assert result["state"] == "done"
    assert kinds(result).count("token") == 120
    assert result["text"] == result["domText"] == expected  # the whole text, no duplicates
    assert fake.state.counters["requests"] == 2  # the reference and the page's stream


@contextlib.asynccontextmanager
async def controlled(
    sidecar_for: SidecarFactory, mode: Literal["stall", "hold"], after_bytes: int = 0
) -> AsyncIterator[tuple[str, SidecarServer, FaultyProxy]]:
    """The run page's origin (its page may act on the proxy, `proxy_controls`), a sidecar
    with resume (detach grace 10 s) allowing it, and a `FaultyProxy` in front of it."""
    proxies: list[FaultyProxy] = []
    async with (
        page_server(proxy_controls(proxies)) as origin,
        sidecar_for(config_for(origin, resume=GRACE)) as sidecar,
        FaultyProxy(sidecar.port, mode, after_bytes=after_bytes) as proxy,
    ):
        proxies.append(proxy)
        yield origin, sidecar, proxy


def network(engine: Engine, up: bool) -> Step:
    """The step taking the page's network down or up: the driver's offline emulation, or
    (WebKit) the proxy refusing connections and the page reading as offline."""
    if engine in OFFLINE_ENGINES:
        return {"offline": not up}
    return {"run": f"window.__setNetwork({'true' if up else 'false'})"}


@pytest.mark.parametrize("engine", ENGINES)
async def test_going_offline_waits_for_the_network_instead_of_spending_retries(
    engine: Engine, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A phone in a tunnel: the connection goes silent while the browser is offline, and
    every reconnect would fail at once, spending the retries in a second although the
    server still holds the stream. The module waits for `online` instead (a
    `reconnecting` with reason `offline`, no attempt spent), then resumes: the text is
    whole, once, and Claude was called once. Chromium and Firefox go offline by their
    drivers; WebKitWebDriver cannot, so there the proxy refuses connections and the page
    reads as offline (`navigator.onLine`, the `offline` and `online` events)."""
    skip_unless_engine(engine)
    prompt = "offline [[fake tokens=20 tps=5]]"
    async with controlled(sidecar_for, "stall", after_bytes=400) as (origin, sidecar, proxy):
        expected, resumable = await reference(sidecar.url, prompt)
        if not resumable:
            pytest.skip(NOT_RESUMABLE)
        url = run_url(origin, {
            "module": sidecar.url + "/_sidecar/claude-stream.js",
            "url": f"http://127.0.0.1:{proxy.port}{PROMPT}",
            "options": {"body": {"prompt": prompt}, "idleTimeoutMs": 1500,
                        "retryBaseMs": 50, "maxRetries": 2},
        })  # fmt: skip
        # Offline from the response's head on: the open stream still flows (the emulation
        # stops new requests only) until the proxy stalls it.
        result = await RUNNERS[engine](url, [
            {"wait": "window.__events.some(e => e.type === 'open')"},
            network(engine, up=False),
            {"wait": "window.__events.some(e => e.type === 'error' || e.type === 'done'"
                     " || (e.type === 'reconnecting' && e.reason === 'offline'))"},
            {"snapshot": "window.__events"},
            network(engine, up=True),
        ])  # fmt: skip
    (during,) = result["snapshots"]
    assert proxy.faults == 1
    assert [e["type"] for e in during if e["type"] in ("error", "done")] == []
    assert {"type": "reconnecting", "attempt": 0, "delayMs": None, "reason": "offline"} in during
    assert result["state"] == "done"
    assert result["text"] == result["domText"] == expected  # every token once
    assert fake.state.counters["requests"] == 2  # the reference and the page: no re-run


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_abort_before_the_response_head_arrives_cancels_the_generation(
    engine: Engine, method: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Stop pressed while the response's head is still on the way (a slow network): the
    module has no stream id yet. Closing the request would only detach the resumable
    generation, which would run on for the detach grace (10 s here); the module waits for
    the head and cancels the stream it names: nothing further is shown, no resume."""
    skip_unless_engine(engine)
    prompt = "stopped early [[fake tokens=20 ttft_ms=8000]]"
    async with controlled(sidecar_for, "hold") as (origin, sidecar, proxy):
        target, options = asking(method, f"http://127.0.0.1:{proxy.port}{PROMPT}", prompt)
        url = run_url(origin, {
            "module": sidecar.url + "/_sidecar/claude-stream.js", "url": target,
            "options": options, "abortAfterMs": 300,
        })  # fmt: skip
        result = await RUNNERS[engine](url, [
            {"wait": "window.__events.length > 0"},
            {"snapshot": "window.__events.slice()"},
            {"run": "fetch('/control/release')"},  # the held head goes on to the page
        ])  # fmt: skip
        # At once, not after the detach grace: the cancel reached Claude.
        await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1), 5)
    assert proxy.faults == 1  # the head was held
    assert result["snapshots"] == [[{"type": "stopping"}]]  # said at once
    assert result["events"] == [{"type": "stopping"}, {"type": "aborted", "cancelled": True}]
    assert result["state"] == "aborted"
    assert result["text"] == result["domText"] == ""
    assert fake.state.counters["streams_completed"] == 0


async def test_abort_before_a_head_that_never_comes_gives_up_after_the_stop_timeout(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Stop pressed while the response's head is held, and the head never comes: the
    module waits for it `stopTimeoutMs` only, then closes the request itself and ends as
    `aborted` with `cancelled: false` (the server was not told), instead of waiting for
    ever."""
    skip_unless_engine("chromium")
    prompt = "never answered [[fake tokens=20 ttft_ms=8000]]"
    async with page_and_sidecar(sidecar_for, resume=GRACE) as (origin, sidecar):
        async with FaultyProxy(sidecar.port, "hold") as proxy:
            url = run_url(origin, {
                "module": sidecar.url + "/_sidecar/claude-stream.js",
                "url": f"http://127.0.0.1:{proxy.port}{PROMPT}",
                "options": {"body": {"prompt": prompt}, "stopTimeoutMs": 1000},
                "abortAfterMs": 300,
            })  # fmt: skip
            async with launched_chromium() as browser:
                page = await browser.new_page()
                await page.goto(url)
                await eventually(lambda: holds(proxy.faults == 1), 10)  # the head is held
                await page.wait_for_function("window.__result !== undefined", timeout=10_000)
                result: dict[str, Any] = await page.evaluate("window.__result")
                finished: dict[str, Any] = await page.evaluate("window.__finished")
                await eventually(lambda: holds(proxy.left == 1), 5)  # the request was closed
                cancelled = fake.state.counters["streams_cancelled"]  # the server was not told
    assert result["events"] == [{"type": "stopping"}, {"type": "aborted", "cancelled": False}]
    assert result["state"] == "aborted"
    assert finished["aborted"] is True
    assert finished["cancelled"] is False
    assert cancelled == 0


async def test_a_get_streams_query_token_also_authorises_its_cancel(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """An `EventSource` carries its JWT in `?access_token=`, which the sidecar takes on a
    GET only: the DELETE of `abort()` needs it as a header, else it is a 401 and Stop only
    detaches the generation (it runs on for the detach grace). The module sends the URL's
    token as `Authorization: Bearer` on the cancel."""
    skip_unless_engine("chromium")
    jwt = {"secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE, "query_param": "access_token"}
    auth = {"mode": "required", "jwt": jwt}
    prompt = "stop me [[fake tokens=200 tps=10]]"
    async with page_and_sidecar(sidecar_for, auth=auth, resume=GRACE) as (origin, sidecar):
        query = urllib.parse.urlencode({"prompt": prompt, "access_token": mint()})
        result = await run(
            "chromium", origin, sidecar.url, url=f"{sidecar.url}{PROMPT}?{query}",
            options={"method": "GET"}, abortAfter=3,
        )  # fmt: skip
        # At once, not after the detach grace (10 s): the cancel reached Claude.
        await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1), 5)
    assert kinds(result)[-1] == "aborted"
    assert result["streamId"]
    assert fake.state.counters["streams_completed"] == 0


REACT_UMD = JS_DIR / "node_modules" / "react" / "umd" / "react.production.min.js"
REACT_DOM_UMD = JS_DIR / "node_modules" / "react-dom" / "umd" / "react-dom.production.min.js"
HOOK_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>hook</title></head><body>'
    '<div id="root"></div><script src="/react.js"></script><script src="/react-dom.js"></script>'
    '<script type="module" src="/hook.js"></script></body></html>'
)
# A component using the docs' hook with a token that changes (a sign-in, a refresh).
HOOK_APP = """
function App() {
  const [token, setToken] = React.useState("expired");
  const hook = useClaudeStream(window.__url, { headers: { authorization: "Bearer " + token } });
  window.__setToken = setToken;
  window.__token = token;
  window.__start = hook.start;
  return null;
}
ReactDOM.createRoot(document.getElementById("root")).render(React.createElement(App));
"""


def docs_hook(module: str) -> str:
    """The `useClaudeStream` hook as docs/browser.md prints it, importing `module`, for a
    page that loads React's UMD build (no bundler)."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "browser.md").read_text()
    section = docs.split("## React: `useClaudeStream`", 1)[1]
    code = section.split("```jsx\n", 1)[1].split("```", 1)[0]
    code = code.replace(
        'import { useCallback, useEffect, useRef, useState } from "react";',
        "const { useCallback, useEffect, useRef, useState } = React;",
    )
    code = code.replace("https://sidecar.example.com/_sidecar/claude-stream.js", module)
    assert "const { useCallback" in code, "the docs' hook imports React otherwise"
    assert module in code, "the docs' hook imports the module from elsewhere"
    return code.replace("export function", "function")


def hook_routes(hook_js: list[str], app_js: str) -> Callable[[web.Application], None]:
    """The page server's routes for a component using the docs' hook: the page, the hook
    (`hook_js[0]`, set once the sidecar's URL is known) followed by `app_js`, and React."""

    def routes(app: web.Application) -> None:
        async def hook_page(request: web.Request) -> web.Response:
            return web.Response(text=HOOK_PAGE, content_type="text/html")

        async def hook(request: web.Request) -> web.Response:
            return web.Response(text=hook_js[0] + app_js, content_type="text/javascript")

        def umd(path: Path) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
            async def serve(request: web.Request) -> web.FileResponse:
                return web.FileResponse(path)

            return serve

        app.router.add_get("/hook", hook_page)
        app.router.add_get("/hook.js", hook)
        app.router.add_get("/react.js", umd(REACT_UMD))
        app.router.add_get("/react-dom.js", umd(REACT_DOM_UMD))

    return routes


async def test_the_docs_react_hook_uses_the_options_of_the_latest_render(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """`useClaudeStream(url, {headers})` with a token that changes after the first render
    (a sign-in): `start()` must send the current token, not the first render's."""
    skip_unless_engine("chromium")
    if not REACT_UMD.exists():
        pytest.skip(f"react is not installed ({NPM_CI})")
    auth = {"mode": "required", "jwt": {"secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}}
    hook_js: list[str] = []
    routes = hook_routes(hook_js, HOOK_APP)

    async with page_server(routes) as origin:
        config = {**config_for(origin), "auth": auth}
        async with sidecar_for(config) as sidecar:
            hook_js.append(docs_hook(sidecar.url + "/_sidecar/claude-stream.js"))
            async with launched_chromium() as browser:
                page = await browser.new_page()
                await page.add_init_script(f"window.__url = {json.dumps(sidecar.url + PROMPT)};")
                await page.goto(origin + "/hook")
                await page.wait_for_function("window.__setToken !== undefined")
                token = mint()
                await page.evaluate("(token) => window.__setToken(token)", token)
                await page.wait_for_function("(token) => window.__token === token", arg=token)
                outcome: dict[str, Any] = await page.evaluate("""async () => {
                  const stream = window.__start({ prompt: "hello from react" });
                  try { return { ok: true, text: (await stream.finished).text }; }
                  catch (error) { return { ok: false, type: error.type }; }
                }""")  # fmt: skip
    assert outcome["ok"], outcome  # not 401 with the first render's "expired" token
    assert outcome["text"]


# A component using the docs' hook, its state kept where the test reads it.
HOOK_STATE_APP = """
function App() {
  const hook = useClaudeStream(window.__url, { stopTimeoutMs: 1000 });
  window.__hook = { isStreaming: hook.isStreaming, isStopping: hook.isStopping };
  window.__start = hook.start;
  window.__stop = hook.stop;
  return null;
}
ReactDOM.createRoot(document.getElementById("root")).render(React.createElement(App));
"""


async def test_the_docs_react_hook_stopped_before_a_head_that_never_comes_is_idle_again(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The hook's `stop()` while the response's head is held for good: `isStopping` at
    once, then, `stopTimeoutMs` later, neither streaming nor stopping: the page is not
    left busy for ever."""
    skip_unless_engine("chromium")
    if not REACT_UMD.exists():
        pytest.skip(f"react is not installed ({NPM_CI})")
    hook_js: list[str] = []
    routes = hook_routes(hook_js, HOOK_STATE_APP)

    prompt = "never answered [[fake tokens=20 ttft_ms=8000]]"
    async with (
        page_server(routes) as origin,
        sidecar_for(config_for(origin, resume=GRACE)) as sidecar,
        FaultyProxy(sidecar.port, "hold") as proxy,
    ):
        hook_js.append(docs_hook(sidecar.url + "/_sidecar/claude-stream.js"))
        async with launched_chromium() as browser:
            page = await browser.new_page()
            url = f"http://127.0.0.1:{proxy.port}{PROMPT}"
            await page.add_init_script(f"window.__url = {json.dumps(url)};")
            await page.goto(origin + "/hook")
            await page.wait_for_function("window.__start !== undefined")
            await page.evaluate("(prompt) => { window.__start({ prompt }); }", prompt)
            await eventually(lambda: holds(proxy.faults == 1), 10)  # the head is held
            await page.wait_for_function("window.__hook.isStreaming")
            await page.evaluate("window.__stop()")
            await page.wait_for_function("window.__hook.isStopping")
            stopping: dict[str, bool] = await page.evaluate("window.__hook")
            await page.wait_for_function("!window.__hook.isStreaming", timeout=10_000)
            idle: dict[str, bool] = await page.evaluate("window.__hook")
            await eventually(lambda: holds(proxy.left == 1), 5)  # the request was closed
    assert stopping == {"isStreaming": True, "isStopping": True}
    assert idle == {"isStreaming": False, "isStopping": False}


def test_retry_after_is_read_only_when_valid_and_bounded() -> None:
    """An error's `retryAfter` under node: whole seconds or an HTTP-date (RFC 9110), at
    most a day; a negative, fractional, exponent or other garbage value is null."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is missing: apt-get install nodejs npm")
    module = Path(sidecar.browser.__file__).parent / "static" / "claude-stream.js"
    values = ["20", "0", " 7 ", "99999999999", "-5", "1e9", "1.5", "0x10", "Infinity", "nan",
              "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"]  # fmt: skip
    run = subprocess.run(
        [node, str(JS_DIR / "retry_after.mjs"), str(module), json.dumps(values)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        20, 0, 7, 86400, None, None, None, None, None, None, None, 0, 86400,
    ]  # fmt: skip
