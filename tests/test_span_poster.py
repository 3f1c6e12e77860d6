"""Batches of encoded spans are joined into one request and posted with the SDK's exporter,
on the poster's thread or the caller's; a batch that cannot be written, a refused post
and an exporter that raises are each logged as the SDK logs them, and posting goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from sidecar.telemetry.otlp_spans import HttpSpanExporter
from sidecar.telemetry.span_encoder import Run
from sidecar.telemetry.span_poster import SpanPoster
from tests.support.otlp import RESOURCE, SCOPE, Receiver, context, receiving, sdk_bytes

LOG = logging.getLogger("sidecar.telemetry.test_poster")


def span(n: int) -> ReadableSpan:
    return ReadableSpan(
        f"span {n}", context(0xABC, n + 1), None, RESOURCE, {"n": n},
        kind=SpanKind.CLIENT, start_time=10 + n, end_time=20 + n, instrumentation_scope=SCOPE,
    )  # fmt: skip


def batch(exporter: HttpSpanExporter, spans: Sequence[ReadableSpan]) -> list[Run]:
    """The spans as the loop's processor queues them: encoded entries, one run."""
    return [(RESOURCE, SCOPE, [exporter.encoder.entry(one) for one in spans])]


def poster_for(receiver: Receiver) -> SpanPoster:
    return SpanPoster(HttpSpanExporter(endpoint=receiver.url), LOG)


async def test_a_batch_is_posted_on_the_posters_thread_as_the_sdk_encodes_it() -> None:
    spans = [span(0), span(1)]
    async with receiving() as receiver:
        poster = poster_for(receiver)
        posting = poster.submit(batch(poster.exporter, spans), len(spans))
        assert posting is not None
        assert await asyncio.wrap_future(posting) is SpanExportResult.SUCCESS
        await asyncio.to_thread(poster.close, time.monotonic() + 5)
    assert receiver.bodies == [sdk_bytes(spans)]


async def test_post_here_posts_from_the_calling_thread() -> None:
    spans = [span(2)]
    async with receiving() as receiver:
        poster = poster_for(receiver)
        await asyncio.to_thread(poster.post_here, batch(poster.exporter, spans), 1)
        assert receiver.bodies == [sdk_bytes(spans)]
        await asyncio.to_thread(poster.close, time.monotonic() + 5)


async def test_a_batch_that_cannot_be_written_is_logged_and_not_posted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiving() as receiver:
        poster = poster_for(receiver)
        runs = batch(poster.exporter, [span(0)])

        def refused(runs: Any) -> bytes:
            raise ValueError("Value out of range: -1")

        monkeypatch.setattr(poster.exporter.encoder, "request", refused)
        assert poster.submit(runs, 1) is None
        await asyncio.to_thread(poster.post_here, runs, 1)
        await asyncio.to_thread(poster.close, time.monotonic() + 5)
    assert receiver.bodies == []
    assert caplog.messages.count("Failed to encode span batch: Value out of range: -1") == 2


async def test_a_refused_post_fails_and_the_next_batch_goes_out() -> None:
    async with receiving() as receiver:
        poster = poster_for(receiver)
        receiver.status = 400  # not retried by the SDK's client
        posting = poster.submit(batch(poster.exporter, [span(0)]), 1)
        assert posting is not None
        assert await asyncio.wrap_future(posting) is SpanExportResult.FAILURE
        receiver.status = 200
        posting = poster.submit(batch(poster.exporter, [span(1)]), 1)
        assert posting is not None
        assert await asyncio.wrap_future(posting) is SpanExportResult.SUCCESS
        await asyncio.to_thread(poster.close, time.monotonic() + 5)
    assert len(receiver.bodies) == 2


async def test_an_exporter_that_raises_is_logged_as_the_sdks_processor_logs_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiving() as receiver:
        poster = poster_for(receiver)

        def broken(request: bytes, count: int) -> SpanExportResult:
            raise ConnectionError("gone")

        monkeypatch.setattr(poster.exporter, "send", broken)
        posting = poster.submit(batch(poster.exporter, [span(0)]), 1)
        assert posting is not None
        assert await asyncio.wrap_future(posting) is SpanExportResult.FAILURE
        await asyncio.to_thread(poster.close, time.monotonic() + 5)
    assert "Exception while exporting Span." in caplog.messages


async def test_once_closed_the_poster_takes_no_more_batches() -> None:
    async with receiving() as receiver:
        poster = poster_for(receiver)
        runs = batch(poster.exporter, [span(0)])
        await asyncio.to_thread(poster.close, time.monotonic() + 5)
        with pytest.raises(RuntimeError):
            poster.submit(runs, 1)
    assert receiver.bodies == []
