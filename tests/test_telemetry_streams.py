"""A finished stream's shared attribute sets export what sets built per stream do: the same
metric points, value for value, with one entry per kind of stream; the numbers of its log
line derived from its record (durations, rate, cost), with no rate where nothing was generated;
and the time to first token of every stream that got one, however it ended, on every route."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.trace import SpanKind

from sidecar.record import StreamRecord
from sidecar.server import SidecarServer
from sidecar.telemetry import streams
from tests.support.cache import asking, cached, post
from tests.support.otel import Otel, make_otel
from tests.support.sdk import user
from tests.support.sidecars import SidecarFactory
from tests.support.stream_records import VARIED, finish_all, finished_record
from tests.support.waiting import eventually, holds


def _exported(otel: Otel) -> dict[str, list[tuple[Any, ...]]]:
    """Every metric point: attributes and values (bucket counts, sums, min/max)."""
    exported: dict[str, list[tuple[Any, ...]]] = {}
    for name, metric in otel.metrics().items():
        exported[name] = sorted(
            (
                sorted((point.attributes or {}).items()),
                getattr(point, "value", None),
                getattr(point, "count", None),
                getattr(point, "sum", None),
                tuple(getattr(point, "bucket_counts", ())),
                getattr(point, "min", None),
                getattr(point, "max", None),
            )
            for point in metric.data.data_points
        )
    return exported


@pytest.mark.parametrize("latest", [False, True])
def test_shared_attribute_sets_export_what_sets_built_per_stream_do(
    monkeypatch: pytest.MonkeyPatch, latest: bool
) -> None:
    """Streams alike share their points' attribute sets; every point is as if each stream
    had built its own (the same calls, interleaved and repeated, recorded both ways)."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    if latest:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    calls = [(index, VARIED[index % len(VARIED)]) for index in range(3 * len(VARIED))]
    shared, fresh = make_otel(), make_otel()
    finish_all(shared.telemetry, [finished_record(index, **fields) for index, fields in calls])
    for index, fields in calls:  # the path without memos: sets built for this stream alone
        record = finished_record(index, **fields)
        telemetry = fresh.telemetry
        record.model_label = telemetry.models(record.request_model)
        record.response_model_label = (
            telemetry.models(record.response_model) if record.response_model else None
        )
        record.error_label = telemetry.errors(record.error_type)
        streams.record_metrics(telemetry.instruments, record, record.ended or 0.0)
    exported, expected = _exported(shared), _exported(fresh)
    for name in ("sidecar.cost.usd", "sidecar.streams.active", "sidecar.queue.wait"):
        exported.pop(name, None)  # recorded only on the full path
    assert exported == expected
    assert len(exported) >= 6  # the comparison is not vacuous
    # One entry per kind of stream: a non-streaming call's points carry the same sets.
    assert shared.telemetry.memo_sizes()["stream_sets"] == len(VARIED) - 1


# --------------------------------------------------------------------------- log line numbers


def test_a_finished_calls_log_numbers_are_derived_from_its_record() -> None:
    record = StreamRecord(request_id="r", route="/v1", started=10.0, response_model="m")
    record.first_token_at, record.last_chunk_at = 10.25, 12.25  # 2 s generating
    record.output_tokens, record.input_tokens, record.cache_read_input_tokens = 50, 7, 3
    record.queue_wait, record.retries, record.outcome = 0.0125, 1, "completed"
    fields = streams.log_fields("stream_complete", {"request_id": "r"}, record, 12.5, 0.123456789)
    assert fields["event"] == "stream_complete"
    assert fields["request_id"] == "r"
    assert fields["input_tokens"] == 10  # uncached + cache reads + cache writes
    assert fields["ttft_ms"] == 250.0
    assert fields["duration_ms"] == 2500.0
    assert fields["tokens_per_second"] == 24.5  # the 49 tokens after the first, over 2 s
    assert fields["queue_wait_ms"] == 12.5
    assert fields["cost_usd"] == 0.12345679  # rounded to 8 places


@pytest.mark.parametrize(
    ("first_token", "last_chunk"),
    [(None, None), (None, 10.5), (10.5, None), (10.5, 10.5)],
    ids=["nothing_came", "no_content_delta", "no_chunk_after", "zero_generating_time"],
)
def test_a_call_without_generating_time_has_no_rate_and_no_division_by_zero(
    first_token: float | None, last_chunk: float | None
) -> None:
    record = StreamRecord(request_id="r", route="/v1", started=10.0, output_tokens=5)
    record.first_token_at, record.last_chunk_at = first_token, last_chunk
    fields = streams.log_fields("stream_error", {}, record, 10.0, None)
    assert fields["tokens_per_second"] is None
    assert fields["ttft_ms"] == (500.0 if first_token is not None else None)
    assert fields["duration_ms"] == 0.0  # ended as it started
    assert fields["cost_usd"] is None  # no price known


def test_the_log_rate_is_the_reciprocal_of_the_time_per_output_token() -> None:
    """`tokens_per_second` and `gen_ai.server.time_per_output_token` are one definition:
    (last − first token) / (n − 1) and its reciprocal, not n over the same time."""
    otel = make_otel()
    record = finished_record(0, output_tokens=5, response_model="claude-sonnet-5-5")
    record.first_token_at, record.last_chunk_at = record.started + 0.5, record.started + 1.5
    record.ended = record.started + 1.5
    fields = streams.log_fields("stream_complete", {}, record, record.ended, None)
    finish_all(otel.telemetry, [record])
    (point,) = otel.metrics()["gen_ai.server.time_per_output_token"].data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert point.sum == 0.25  # 1 s over the 4 tokens after the first
    assert fields["tokens_per_second"] == 4.0 == 1 / point.sum


def test_a_single_token_has_no_rate_as_it_has_no_time_per_output_token() -> None:
    record = StreamRecord(request_id="r", route="/v1", started=10.0, response_model="m")
    record.first_token_at, record.last_chunk_at, record.output_tokens = 10.5, 11.0, 1
    assert (
        streams.log_fields("stream_complete", {}, record, 11.0, None)["tokens_per_second"] is None
    )


def test_a_call_claude_reported_no_usage_for_logs_no_tokens_cost_or_rate() -> None:
    """No `message_start` (refused, cut or silent before it): usage unknown, not 0 tokens;
    the content deltas relayed regardless (each at least a token, for the quota) do not
    make it reported."""
    record = StreamRecord(request_id="r", route="/v1", started=10.0, output_tokens=4)
    record.first_token_at, record.last_chunk_at = 10.5, 11.5
    fields = streams.log_fields("stream_error", {}, record, 11.5, 0.25)
    unknown = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "tokens_per_second", "cost_usd")  # fmt: skip
    assert {name: fields[name] for name in unknown} == dict.fromkeys(unknown)
    assert fields["ttft_ms"] == 500.0  # the times stay: they were measured


# --------------------------------------------------------------------------- time to first token

TTFT = "gen_ai.server.time_to_first_token"


@dataclass(frozen=True)
class Route:
    """A route kind as a client calls it, and what marks a content token in its stream."""

    name: str
    path: str
    token: bytes  # in the client's bytes once a content token reached it
    resumable: bool

    def request(self, http: aiohttp.ClientSession, url: str, text: str) -> Any:
        headers = {"Sidecar-Resume": "on"} if self.resumable and self.name == "anthropic" else {}
        if self.name == "anthropic":
            body: dict[str, Any] = {"model": "claude-sonnet-5-5", "max_tokens": 200,
                                    "stream": True, "messages": user(text)}  # fmt: skip
        elif self.name == "prompt":
            body = {"prompt": text}
        else:
            body = {"id": "chat-1", "trigger": "submit-message", "messages": [
                {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}]}  # fmt: skip
        return http.post(url + self.path, json=body, headers=headers)


ROUTES = [
    Route("anthropic", "/v1/messages", b"content_block_delta", resumable=False),
    Route("anthropic", "/v1/messages", b"content_block_delta", resumable=True),
    Route("prompt", "/api/stream-response", b'"token"', resumable=False),
    Route("prompt", "/api/stream-response", b'"token"', resumable=True),
    Route("ui", "/api/chat", b'"text-delta"', resumable=False),
    Route("ui", "/api/chat", b'"text-delta"', resumable=True),
]
ROUTE_IDS = [f"{r.name}-{'resumable' if r.resumable else 'plain'}" for r in ROUTES]
STALL = "hello [[fake fault=stall_midstream after=3]]"


@contextlib.asynccontextmanager
async def _sidecar(
    sidecar_for: SidecarFactory, route: Route, otel: Otel, idle_timeout: bool = False
) -> AsyncIterator[SidecarServer]:
    """A sidecar serving `route` (resumable or not); with `idle_timeout`, a Claude that is
    silent for 0.5 s ends the stream (else the default timeout, which no test reaches)."""
    config: dict[str, Any] = {"resume": {"enabled": route.resumable}}
    if idle_timeout:
        config["claude"] = {"idle_timeout_seconds": 0.5, "heartbeat_seconds": 0.1}
    async with sidecar_for(config, telemetry=otel.telemetry) as sidecar:
        yield sidecar


async def _until_token(response: aiohttp.ClientResponse, route: Route) -> None:
    """Read the stream until its first content token reached the client."""
    seen = b""
    async for chunk in response.content.iter_any():
        seen += chunk
        if route.token in seen:
            return
    raise AssertionError(f"no content token in {seen!r}")


async def _ended(otel: Otel) -> tuple[str, list[Any]]:
    """The call's outcome and its time-to-first-token points, once its CLIENT span ended."""
    await otel.exporter.wait_for(lambda: bool(otel.spans(SpanKind.CLIENT)))
    outcome = (otel.client_span().attributes or {})["sidecar.stream.outcome"]
    return str(outcome), otel.points(TTFT)


def _one_point(points: list[Any], failed: bool) -> None:
    (point,) = points
    assert point.count == 1
    assert point.sum > 0
    assert ("error.type" in point.attributes) is failed


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Otel:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    return make_otel()


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_completed_stream_records_its_time_to_first_token(
    sidecar_for: SidecarFactory, otel: Otel, route: Route
) -> None:
    async with _sidecar(sidecar_for, route, otel) as sidecar, aiohttp.ClientSession() as http:
        async with route.request(http, sidecar.url, "hello") as response:
            assert response.status == 200
            await response.read()
        outcome, points = await _ended(otel)
    assert outcome == "completed"
    _one_point(points, failed=False)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_stream_claude_broke_after_its_first_token_records_it(
    sidecar_for: SidecarFactory, otel: Otel, route: Route
) -> None:
    text = "hello [[fake fault=midstream_error after=3]]"
    async with _sidecar(sidecar_for, route, otel) as sidecar, aiohttp.ClientSession() as http:
        async with route.request(http, sidecar.url, text) as response:
            assert route.token in await response.read()
        outcome, points = await _ended(otel)
    assert outcome == "upstream_error"
    _one_point(points, failed=True)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_stream_its_client_left_after_its_first_token_records_it(
    sidecar_for: SidecarFactory, otel: Otel, route: Route
) -> None:
    async with _sidecar(sidecar_for, route, otel) as sidecar, aiohttp.ClientSession() as http:
        async with route.request(http, sidecar.url, STALL) as response:
            await _until_token(response, route)
            response.close()
        outcome, points = await _ended(otel)
    # No detach grace in these tests: a resumable stream left alone ends at once too.
    assert outcome in ("client_cancelled", "client_detached")
    _one_point(points, failed=False)


@pytest.mark.parametrize("route", [r for r in ROUTES if r.resumable],
                         ids=[i for i in ROUTE_IDS if i.endswith("resumable")])  # fmt: skip
async def test_a_stream_cancelled_after_its_first_token_records_it(
    sidecar_for: SidecarFactory, otel: Otel, route: Route
) -> None:
    async with _sidecar(sidecar_for, route, otel) as sidecar, aiohttp.ClientSession() as http:
        async with route.request(http, sidecar.url, STALL) as response:
            await _until_token(response, route)
            (stream_id,) = sidecar.runtime.resume.hub.stream_ids()
            async with http.delete(f"{sidecar.url}{route.path}/{stream_id}") as cancelled:
                assert cancelled.status == 204
            await response.read()
        outcome, points = await _ended(otel)
    assert outcome == "client_cancelled"
    _one_point(points, failed=False)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_stream_ended_by_shutdown_after_its_first_token_records_it(
    sidecar_for: SidecarFactory, otel: Otel, route: Route
) -> None:
    async with _sidecar(sidecar_for, route, otel) as sidecar, aiohttp.ClientSession() as http:
        async with route.request(http, sidecar.url, STALL) as response:
            await _until_token(response, route)
            await sidecar.shutdown(grace=0.1)
            await response.read()
        outcome, points = await _ended(otel)
    assert outcome == "shutting_down"
    _one_point(points, failed=True)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_stream_ended_by_the_idle_timeout_after_its_first_token_records_it(
    sidecar_for: SidecarFactory, otel: Otel, route: Route
) -> None:
    async with (
        _sidecar(sidecar_for, route, otel, idle_timeout=True) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        async with route.request(http, sidecar.url, STALL) as response:
            assert route.token in await response.read()
        outcome, points = await _ended(otel)
    assert outcome == "idle_timeout"
    _one_point(points, failed=True)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    ("fault", "expected"),
    [("midstream_error", "upstream_error"), ("stall_midstream", "idle_timeout")],
)
async def test_a_stream_that_ended_before_any_token_records_none(
    sidecar_for: SidecarFactory, otel: Otel, route: Route, fault: str, expected: str
) -> None:
    text = f"hello [[fake fault={fault} after=0]]"
    async with (
        _sidecar(sidecar_for, route, otel, idle_timeout=True) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        async with route.request(http, sidecar.url, text) as response:
            assert route.token not in await response.read()
        outcome, points = await _ended(otel)
    assert outcome == expected
    assert points == []


async def test_a_coalesced_call_its_first_caller_left_records_its_time_to_first_token_once(
    sidecar_for: SidecarFactory, otel: Otel
) -> None:
    """The call goes on for the request that followed it and ends as its first caller's
    (`client_cancelled`): one point, the call's; the follower and a later hit from the
    stored answer call no Claude and record none."""
    body = asking("[[fake tokens=40 tps=40]] shared")
    async with sidecar_for(cached(), telemetry=otel.telemetry) as sidecar:
        cache = sidecar.runtime.cache
        assert cache is not None
        async with aiohttp.ClientSession() as http:
            async with http.post(sidecar.url + "/v1/messages", json=body) as leader:
                await leader.content.readuntil(b"content_block_delta")
                follower = asyncio.create_task(post(sidecar.url, body))
                await eventually(
                    lambda: holds(sum(r.followers for r in cache.inflight.values()) == 2)
                )
        assert (await follower)[:2] == (200, "HIT")
        outcome, _ = await _ended(otel)
        await cache.settled()
        assert (await post(sidecar.url, body))[:2] == (200, "HIT")
    assert outcome == "client_cancelled"
    _one_point(otel.points(TTFT), failed=False)
