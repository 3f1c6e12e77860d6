"""What a call, a relayed event and an open stream cost, under fixed bounds and no stopwatch.

The sidecar runs in the test's process with every per-call feature on (API-key auth,
CORS, screening, memory quotas, metrics, recorded spans, JSON access and stream logs);
the fake Claude and the client are child processes talking to it over sockets. The
figures are function calls (cProfile: exact for a code path) and live memory
(tracemalloc), each the difference of two runs through public behaviour (2M calls
minus M, 2N events minus N, 2K open streams minus K), so they hold however the
stream path is built inside.

The bounds sit about 10 % over what was measured when they were set (noted beside
each). A change that adds work per call or per event on purpose (a new metric, a
resume buffer) moves the figure: measure with `uv run python bench/costs.py` and
move the bound with the reason in the commit. One more JSON log line per call is
~60 calls, one more histogram point ~40, a `json.loads` per event ~6.

At the end, the pipeline's own check of what a client names its request.
"""

from __future__ import annotations

import asyncio
import hashlib
import re

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cache.recording import Recording
from sidecar.call.run import ClaudeRequest
from sidecar.call.stream import HeldCall, Resumable
from sidecar.handlers.anthropic import NumberedPassthrough, Passthrough
from sidecar.handlers.prompt import PromptTranslator
from sidecar.handlers.ui_stream import UiTranslator
from sidecar.http_client.connection import Connection
from sidecar.http_client.response import Response
from sidecar.identity import Identity
from sidecar.pipeline import request_id_of
from sidecar.quotas import QuotaLease
from sidecar.record import StreamRecord
from sidecar.relay import LiveStream
from sidecar.sse import EventScanner
from sidecar.stream.adapter import ClientChannel
from sidecar.stream.core import StreamCore
from sidecar.stream.hub import Generation, Subscriber
from sidecar.stream.store import StreamLog
from sidecar.stream.tap import TappedCore
from tests.support.apps import running_app
from tests.support.costs import (
    ROUTES,
    cyclic_garbage_per_call,
    dump,
    measured_sidecar,
    per_call,
    per_event,
    per_open_stream,
)
from tests.support.otel import Otel, make_otel
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import expecting_continue
from tests.support.waiting import eventually

CALLS_PER_CALL = 1120  # measured 942-1,035
CALLS_PER_EVENT = 54  # measured 44-49 (≈ 30 of them the asyncio loop's own per read)
# The prompt route: the same relay, plus each delta re-framed as `{"token": ...}` (its JSON
# string copied, not decoded, its resume id written in the same step) and kept in the
# resume buffer. Its memory per event is that buffer, bounded by `resume.max_buffer_bytes`
# (the stream store's tests).
PROMPT_CALLS_PER_EVENT = 58  # measured 48-53
BYTES_PER_OPEN_STREAM = 20_500  # measured 18,300-18,600 (most of it aiohttp's and the transports')
BLOCKS_PER_OPEN_STREAM = 226  # measured 205
# Memory left behind once calls and streams have ended: none beyond noise (the loop
# drops cancelled timers in batches, caches fill), measured within ±130 B per call and
# ±100 B per event. Keeping one log record per call is ~1 KB; one event's bytes ~190 B.
HELD_BYTES_PER_CALL = 512
HELD_BYTES_PER_EVENT = 128
PEAK_BYTES_PER_EVENT = 128  # nothing buffered per event while a stream runs
# Objects a finished call leaves in reference cycles, for the cycle collector: none (a
# generation and its producer pointing at each other once left ~17.5 per call, the whole
# stream's objects, freed only by a collection).
CYCLIC_GARBAGE_PER_CALL = 0.5


# The sidecar is started in each test's body, not in a fixture: see `sidecar_all_on`.


@pytest.mark.timeout(180)
async def test_a_call_costs_a_bounded_number_of_function_calls_and_holds_nothing() -> None:
    async with measured_sidecar() as sidecar:
        cost = await per_call(sidecar, 200)
    assert cost["calls"] <= CALLS_PER_CALL, dump(cost)
    assert cost["bytes"] <= HELD_BYTES_PER_CALL, dump(cost)
    assert cost["calls"] > 100, dump(cost)  # the measure sees the sidecar at all


@pytest.mark.timeout(180)
async def test_a_relayed_event_costs_a_bounded_number_of_calls_and_no_memory() -> None:
    async with measured_sidecar() as sidecar:
        cost = await per_event(sidecar, 200, 500)
    assert 0 < cost["calls"] <= CALLS_PER_EVENT, dump(cost)
    assert cost["bytes"] <= HELD_BYTES_PER_EVENT, dump(cost)
    assert cost["peak"] <= PEAK_BYTES_PER_EVENT, dump(cost)


@pytest.mark.timeout(180)
async def test_a_prompt_route_event_costs_a_bounded_number_of_calls() -> None:
    async with measured_sidecar() as sidecar:
        cost = await per_event(sidecar, 200, 500, route="prompt")
    assert 0 < cost["calls"] <= PROMPT_CALLS_PER_EVENT, dump(cost)


@pytest.mark.timeout(180)
async def test_an_open_stream_holds_bounded_memory() -> None:
    async with measured_sidecar() as sidecar:
        cost = await per_open_stream(sidecar, 40)
    assert 0 < cost["bytes"] <= BYTES_PER_OPEN_STREAM, dump(cost)
    assert 0 < cost["blocks"] <= BLOCKS_PER_OPEN_STREAM, dump(cost)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("route", ROUTES)
async def test_a_finished_call_is_freed_as_it_ends_not_by_the_cycle_collector(
    route: str,
) -> None:
    async with measured_sidecar() as sidecar:
        garbage = await cyclic_garbage_per_call(sidecar, 50, route)
    assert garbage <= CYCLIC_GARBAGE_PER_CALL, garbage


# What a call or an open stream holds, one of each per call (or per stream, or per
# connection to Claude): every one slotted, so none carries an instance dict.
PER_CALL_OBJECTS = [
    StreamRecord, QuotaLease, Identity, ClaudeRequest, HeldCall, Resumable, Connection,
    Response, EventScanner, StreamCore, TappedCore, Passthrough, NumberedPassthrough,
    PromptTranslator, UiTranslator, LiveStream, ClientChannel, Generation, Subscriber,
    StreamLog, Recording,
]  # fmt: skip


@pytest.mark.parametrize("kind", PER_CALL_OBJECTS, ids=lambda kind: kind.__name__)
def test_per_call_objects_are_slotted(kind: type) -> None:
    assert kind.__dictoffset__ == 0, f"{kind.__name__} instances carry a __dict__"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42.a_b:c@d/e+f=g", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("abc\n", False),  # `$` would have let a trailing newline through
        ("a b", False),
        ("é", False),
    ],
)
def test_a_clients_request_id_is_kept_only_whole_and_well_formed(given: str, kept: bool) -> None:
    request = make_mocked_request("GET", "/", headers={"X-Request-Id": given})
    request_id = request_id_of(request, "X-Request-Id")
    assert (request_id == given) is kept
    assert re.fullmatch(r"[A-Za-z0-9._:@/+=-]{1,128}", request_id)


@pytest.mark.parametrize(
    ("path", "interim"),
    [("/v1/messages", False), ("/api/stream-response", False), ("/app/upload", True)],
    ids=["anthropic", "prompt", "app"],
)
async def test_an_upload_a_claude_route_refuses_by_its_length_gets_413_without_100_continue(
    sidecar_for: SidecarFactory, path: str, interim: bool
) -> None:
    """`Expect: 100-continue` with a `Content-Length` over `server.max_body_bytes`: a Claude
    route answers 413 at once and closes (the client need not upload what is refused; it
    may send it or not, so the connection cannot be reused); the app route, whose bodies
    are streamed and not limited, still says `100 Continue`."""
    async with running_app() as (app_url, _):
        routes = [{"path": "/api/stream-response", "handler": "prompt"},
                  {"path": "/v1/", "handler": "anthropic"}, {"path": "/app/", "handler": "app"}]  # fmt: skip
        config = {"server": {"max_body_bytes": 1024}, "app": {"url": app_url}, "routes": routes}
        async with sidecar_for(config) as sidecar:
            first, reader, writer = await expecting_continue(sidecar.port, path)
            if interim:
                assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.close()
                return
            length = re.search(rb"Content-Length: (\d+)", first)
            assert length is not None, first
            body = await asyncio.wait_for(reader.readexactly(int(length[1])), 10)
            writer.close()
    assert first.startswith(b"HTTP/1.1 413 "), first
    assert b"Connection: close" in first
    assert b"exceeds 1024 bytes" in body  # in the route's error format


async def test_a_rejection_is_counted_with_the_status_its_route_sent(
    sidecar_for: SidecarFactory,
) -> None:
    """A full queue is a 529 on Anthropic routes and a 503 on the prompt route; the
    rejection counter carries the status each client got, not Anthropic's 529 for both."""
    data = {"claude": {"max_concurrent_streams": 1, "queue": {"max_waiting": 0}}}
    async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + "/api/stream-response"
        async with http.get(url, params={"prompt": "[[fake fault=stall]] hold"}) as held:
            assert held.status == 200
            async with http.get(url, params={"prompt": "hi"}) as prompt:
                assert prompt.status == 503
            hi = [{"role": "user", "content": "hi"}]
            body = {"model": "claude-sonnet-5-5", "max_tokens": 8, "messages": hi}
            async with http.post(sidecar.url + "/v1/messages", json=body) as anthropic:
                assert anthropic.status == 529
        async with http.get(sidecar.admin_url + "/metrics") as response:
            scrape = await response.text()
    statuses = {
        (sample.labels["http_route"], sample.labels["http_response_status_code"]): sample.value
        for family in text_string_to_metric_families(scrape)
        if family.name == "sidecar_rejections"
        for sample in family.samples
        if sample.name == "sidecar_rejections_total"
        and sample.labels["sidecar_rejection_reason"] == "queue_full"
    }
    assert statuses == {("/api/stream-response", "503"): 1.0, ("/v1/", "529"): 1.0}


async def test_every_error_the_sidecar_answers_on_an_anthropic_route_names_its_request_id(
    sidecar_for: SidecarFactory,
) -> None:
    """Claude's errors carry `request-id`, where the SDKs read an error's `request_id`: the
    sidecar's own (a refusal by auth, by the queue) carry it too, the body's id; the
    prompt route's errors, which no SDK reads, are left as they are."""
    data = {
        "auth": {
            "mode": "required",
            "api_keys": [{"name": "ci", "sha256": hashlib.sha256(b"secret").hexdigest()}],
        },
        "claude": {"max_concurrent_streams": 1, "queue": {"max_waiting": 0}},
    }
    hi = [{"role": "user", "content": "hi"}]
    body = {"model": "claude-sonnet-5-5", "max_tokens": 8, "messages": hi}
    key = {"x-api-key": "secret"}
    answers = []
    async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/messages", json=body) as unauthorized:
            answers.append(
                (unauthorized.status, unauthorized.headers.copy(), await unauthorized.json())
            )
        url = sidecar.url + "/api/stream-response"
        async with http.get(
            url, params={"prompt": "[[fake fault=stall]] hold"}, headers=key
        ) as held:
            assert held.status == 200
            async with http.post(sidecar.url + "/v1/messages", json=body, headers=key) as full:
                answers.append((full.status, full.headers.copy(), await full.json()))
            async with http.get(url, params={"prompt": "hi"}, headers=key) as prompt:
                assert prompt.status == 503
                assert "request-id" not in prompt.headers
    assert [status for status, _, _ in answers] == [401, 529]
    for _, headers, error in answers:
        assert headers["request-id"] == error["request_id"] == headers["x-request-id"]


async def _served_behind(
    sidecar_for: SidecarFactory, trusted: list[str], headers: dict[str, str]
) -> Otel:
    """A routed and an unrouted request with `headers`, from a peer (127.0.0.1) that is a
    trusted proxy if `trusted` holds it; returns once both SERVER spans ended."""
    otel = make_otel()
    async with (
        sidecar_for({"server": {"trusted_proxies": trusted}}, telemetry=otel.telemetry) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/api/stream-response?prompt=hi", "/nowhere"):
            async with http.get(sidecar.url + path, headers=headers) as response:
                await response.read()

    async def both_ended() -> bool:
        return len(otel.spans(SpanKind.SERVER)) == 2

    await eventually(both_ended)
    return otel


@pytest.mark.parametrize(
    ("trusted", "proto", "scheme"),
    [(["127.0.0.0/8"], "https", "https"), (["127.0.0.0/8"], "HTTPS, http", "https"),
     (["127.0.0.0/8"], "ftp", "http"), ([], "https", "http")],
    ids=["trusted", "trusted-list", "trusted-unknown", "untrusted"],
)  # fmt: skip
async def test_url_scheme_is_the_clients_as_a_trusted_proxy_reports_it(
    sidecar_for: SidecarFactory, trusted: list[str], proto: str, scheme: str
) -> None:
    """The HTTP conventions' `url.scheme` is the original client's scheme when known
    (`X-Forwarded-Proto`): behind a trusted proxy ending TLS, `https` on the SERVER span
    and on `http.server.request.duration` (and the span's default `server.port` with it),
    matched route or not; anyone else's claim is not believed, and only `http` / `https`
    become a label."""
    headers = {"X-Forwarded-Proto": proto, "Host": "api.example"}
    otel = await _served_behind(sidecar_for, trusted, headers)
    port = {"https": 443, "http": 80}[scheme]
    for span in otel.spans(SpanKind.SERVER):
        assert span.attributes is not None
        assert (span.attributes["url.scheme"], span.attributes["server.port"]) == (scheme, port)
    durations = otel.points("http.server.request.duration")
    assert {p.attributes["url.scheme"] for p in durations} == {scheme}
    assert {p.attributes.get("http.route") for p in durations} == {"/api/stream-response", None}


@pytest.mark.parametrize(
    ("trusted", "forwarded", "address", "port"),
    [(["127.0.0.0/8"], {"X-Forwarded-Host": "app.example:8443, inner:1"}, "app.example", 8443),
     (["127.0.0.0/8"], {"Forwarded": 'for=1.2.3.4;host="fw.example";proto=https, host=x'},
      "fw.example", 80),
     (["127.0.0.0/8"], {"Forwarded": "host=[2001:db8::1]:81", "X-Forwarded-Host": "x.example"},
      "2001:db8::1", 81),
     (["127.0.0.0/8"], {"Forwarded": "for=1.2.3.4", "X-Forwarded-Host": "x.example"},
      "x.example", 80),
     (["127.0.0.0/8"], {"X-Forwarded-Host": "bad host<script>"}, "api.example", 80),
     (["127.0.0.0/8"], {"X-Forwarded-Host": "a" * 300}, "api.example", 80),
     (["127.0.0.0/8"], {"Forwarded": "host=\"a b\"", "X-Forwarded-Host": "x.example"},
      "x.example", 80),
     (["10.0.0.0/8"], {"X-Forwarded-Host": "app.example", "Forwarded": "host=fw.example"},
      "api.example", 80),
     ([], {"X-Forwarded-Host": "app.example", "Forwarded": "host=fw.example"},
      "api.example", 80)],
    ids=["x-forwarded-host", "forwarded", "forwarded-first", "forwarded-no-host", "charset",
         "length", "forwarded-invalid", "untrusted-peer", "no-trusted-proxies"],
)  # fmt: skip
async def test_server_address_is_the_host_the_client_addressed_as_a_trusted_proxy_reports_it(
    sidecar_for: SidecarFactory,
    trusted: list[str],
    forwarded: dict[str, str],
    address: str,
    port: int,
) -> None:
    """The HTTP conventions' `server.address` / `server.port` of a SERVER span behind a
    proxy: `Forwarded: host=` (its first element), else `X-Forwarded-Host` (its first
    entry), from a peer in `server.trusted_proxies` only; a value that is no host (a
    space, markup, past 261 characters) or anyone else's is not believed: the `Host`."""
    otel = await _served_behind(sidecar_for, trusted, {"Host": "api.example", **forwarded})
    for span in otel.spans(SpanKind.SERVER):
        assert span.attributes is not None
        assert (span.attributes["server.address"], span.attributes["server.port"]) == (
            address,
            port,
        )
