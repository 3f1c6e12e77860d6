"""A tapped stream core hands every upstream chunk to its tap, once and in order, and
otherwise does what an untapped core does; a stream nobody records gets the plain core."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from opentelemetry.trace import SpanContext

from sidecar.handlers.anthropic import Passthrough
from sidecar.handlers.prompt import PromptTranslator
from sidecar.record import StreamRecord
from sidecar.stream.core import StopStream, StreamCore
from sidecar.stream.tap import TappedCore, make_core


def event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


STREAM = (
    event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "model": "m", "usage": {"input_tokens": 5, "output_tokens": 1}}})
    + event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "Hi"}})
    + event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 2}})
    + event("message_stop", {"type": "message_stop"})
)  # fmt: skip
CHUNKS = [STREAM[i : i + 37] for i in range(0, len(STREAM), 37)]


class Tap:
    """A recorder that keeps what it is told."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.messages: list[bytes] = []
        self.finished: list[StreamRecord] = []
        self.stops: list[BaseException] = []
        self.spans: list[SpanContext] = []
        self.followers = 0  # nobody follows it: the call is not kept for anyone
        self.on_idle: Callable[[], None] | None = None

    def tick(self, now: float) -> None:
        """The watchdog's looks are not recorded."""

    def started(self, span: SpanContext) -> None:
        self.spans.append(span)

    def chunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def message(self, body: bytes) -> None:
        self.messages.append(body)

    def stopped(self, end: BaseException) -> None:
        self.stops.append(end)

    def finish(self, record: StreamRecord) -> None:
        self.finished.append(record)


def record() -> StreamRecord:
    return StreamRecord(request_id="r", route="/", started=0.0)


def counts(rec: StreamRecord) -> tuple[object, ...]:
    """What a core accounts for, without the timestamps (they differ run to run)."""
    return (rec.chunks, rec.output_deltas, rec.input_tokens, rec.output_tokens,
            rec.stop_reason, rec.response_model, rec.outcome)  # fmt: skip


def test_make_core_taps_only_when_something_records() -> None:
    assert type(make_core(record(), Passthrough(), None)) is StreamCore
    tap = Tap()
    core = make_core(record(), Passthrough(), tap)
    assert isinstance(core, TappedCore)
    assert core.tap is tap


@pytest.mark.parametrize("capture", [False, True])
def test_translated_chunks_reach_the_tap_once_each_and_the_client_gets_the_same_bytes(
    capture: bool,
) -> None:
    """The relay feeds a core that translates (a passthrough core observes instead)."""
    tap = Tap()
    tapped = TappedCore(record(), PromptTranslator(capture=capture), tap)
    plain = StreamCore(record(), PromptTranslator(capture=capture))
    ours = b"".join(tapped.feed(chunk) for chunk in CHUNKS) + tapped.end(None)
    theirs = b"".join(plain.feed(chunk) for chunk in CHUNKS) + plain.end(None)
    assert tap.chunks == CHUNKS
    assert ours == theirs
    assert counts(tapped.record) == counts(plain.record)
    assert tapped.record.output_deltas == 1  # not vacuous
    assert b"Hi" in ours


def test_observed_passthrough_chunks_reach_the_tap_and_are_accounted_for() -> None:
    tap = Tap()
    tapped, plain = TappedCore(record(), Passthrough(), tap), StreamCore(record(), Passthrough())
    for chunk in CHUNKS:
        tapped.observe(chunk)
        plain.observe(chunk)
    assert tap.chunks == CHUNKS
    assert counts(tapped.record) == counts(plain.record)
    assert tap.messages == []  # the call's end is told by its owner, not by the core
    assert tap.finished == []


def test_a_passthrough_core_fed_like_a_translating_one_taps_each_chunk_once() -> None:
    # `StreamCore.feed` observes a passthrough chunk, and observing taps it: one copy.
    tap = Tap()
    tapped = TappedCore(record(), Passthrough(), tap)
    plain = StreamCore(record(), Passthrough())
    assert b"".join(tapped.feed(chunk) for chunk in CHUNKS) == STREAM
    for chunk in CHUNKS:
        plain.feed(chunk)
    assert tap.chunks == CHUNKS
    assert counts(tapped.record) == counts(plain.record)


def test_a_stream_cut_by_the_sidecar_or_a_lost_connection_tells_the_tap_why() -> None:
    # Its followers end the same way; its own client leaving or stalling ends it for
    # that client only, and a complete stream has nothing to tell.
    told = []
    ends: list[BaseException | None] = [
        StopStream("shutting_down", "overloaded_error", "the sidecar is shutting down"),
        StopStream("idle_timeout", "timeout_error", "no data"),
        ConnectionResetError("lost"),
        StopStream("client_cancelled", "cancelled", "the stream was cancelled"),
        StopStream("client_detached", "stream_abandoned", "no client came back"),
        StopStream("client_stalled", "client_stalled", "the client accepted no data"),
        None,
    ]
    for end in ends:
        tap = Tap()
        core = TappedCore(record(), Passthrough(), tap)
        core.observe(CHUNKS[0])
        core.end(end)
        told.append(tap.stops)
    assert told == [[ends[0]], [ends[1]], [ends[2]], [], [], [], []]
