"""OTLP for the span encoder's and exporters' tests: spans of every shape, the SDK's bytes of
them, and an OTLP/HTTP receiver on loopback (what an exporter posted, as received)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from tests.support.sockets import free_port


@dataclass
class Receiver:
    """An OTLP/HTTP receiver: the paths, bodies (decompressed) and headers it was sent."""

    url: str  # its traces URL (`<base>/v1/traces`)
    status: int = 200
    paths: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The URL an exporter given one endpoint for every signal is given."""
        return self.url.removesuffix("/v1/traces")


@contextlib.asynccontextmanager
async def receiving(tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    """A receiver answering `POST /v1/traces` (and `/v1/metrics`) with its `status`, until
    the block ends; over TLS with `tls`."""
    port = free_port()
    receiver = Receiver(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1/traces")

    async def receive(request: web.Request) -> web.Response:
        receiver.paths.append(request.path)
        receiver.bodies.append(await request.read())  # aiohttp decompresses it
        receiver.headers.append(dict(request.headers))
        return web.Response(status=receiver.status, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    app.router.add_post("/v1/metrics", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


# Spans of every shape an encoder meets (`shapes`), and what the SDK's encoder makes of them.
RESOURCE = Resource({"service.name": "s", "n": 1}, "https://schema/r")
TWIN = Resource({"n": 1, "service.name": "s"}, "https://schema/r")  # equal, other order
OTHER = Resource({"service.name": "other", "tags": ("a", "b")})
SCOPE = InstrumentationScope("claude-sidecar", "1.2", "https://schema/s", {"scope.a": "x"})
BARE = InstrumentationScope("bare")
EVERY_VALUE: dict[str, Any] = {
    "str": "v", "empty str": "", "unicode": "é✓", "true": True, "false": False, "int": 7,
    "zero": 0, "negative": -3, "int64 max": 2**63 - 1, "float": 0.25, "float zero": 0.0,
    "huge float": 1e300, "strs": ("a", "bb"), "bools": (True, False), "ints": (1, -2),
    "floats": (0.5, 1.5), "empty": (), "list": ["x"], "bytes": b"raw", "none": None,
    "mapping": {"inner": [1, 2]}, "status": StatusCode.OK, "overflow": 2**64, "after": 5,
}  # fmt: skip


def context(trace_id: int, span_id: int, *, remote: bool = False, flags: int = 1) -> SpanContext:
    return SpanContext(trace_id, span_id, remote, TraceFlags(flags))


def shapes() -> list[ReadableSpan]:
    """Spans of every shape an exporter meets, across resources and scopes, interleaved."""
    events = BoundedList.from_seq(1, [Event("dropped", {}, 5), Event("kept", {"k": 1}, 6)])
    links = BoundedList.from_seq(
        2,
        [
            Link(context(1, 2)),
            Link(context(3, 4, remote=True), {"link.a": "x", "n": 2}),
            Link(context(5, 6, flags=0)),
        ],
    )
    limited = BoundedAttributes(maxlen=2, attributes={"a": 1, "b": "two", "c": 3.0})
    state = TraceState([("vendor", "v1"), ("other", "o")])
    return [
        ReadableSpan(
            "every value", context(0xABC, 0xDEF, flags=0x03), context(0xABC, 0x123, remote=True),
            RESOURCE, EVERY_VALUE, kind=SpanKind.CLIENT, status=Status(StatusCode.ERROR, "boom"),
            start_time=10, end_time=20, instrumentation_scope=SCOPE,
        ),
        ReadableSpan(
            "events and links", SpanContext(0xABC, 0x456, False, TraceFlags(1), state),
            context(0xABC, 0xDEF), TWIN, limited, events, links, SpanKind.SERVER,
            status=Status(StatusCode.OK), start_time=1, end_time=2, instrumentation_scope=SCOPE,
        ),
        ReadableSpan(
            "no parent, no scope", context(2**128 - 1, 2**64 - 1), None, OTHER, {},
            kind=SpanKind.PRODUCER, start_time=3, end_time=4,
        ),
        ReadableSpan(
            "same labels, other types", context(7, 8), None, RESOURCE,
            {"int": True, "true": 1, "zero": 0.0, "str": "v", "false": 0, "strs": ("a", "bb"),
             "bools": (1, 0), "empty": (), "ints": ("1", "-2")},
            kind=SpanKind.CONSUMER, status=Status(StatusCode.UNSET, None),
            start_time=5, end_time=6, instrumentation_scope=BARE,
        ),
        ReadableSpan(
            "no status", context(9, 10), context(9, 11, remote=True), OTHER, None,
            status=None,  # type: ignore[arg-type]  # the SDK's encoder allows it
            start_time=7, end_time=8, instrumentation_scope=SCOPE,
        ),
        ReadableSpan(
            "back to the first group", context(0xABC, 0x789), context(0xABC, 0xDEF), RESOURCE,
            EVERY_VALUE, kind=SpanKind.INTERNAL, start_time=9, end_time=9,
            instrumentation_scope=SCOPE,
        ),
    ]  # fmt: skip


def sdk_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    data: bytes = encode_spans(spans).SerializePartialToString()
    return data


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    return [(record.name, record.levelno, record.getMessage()) for record in caplog.records]
