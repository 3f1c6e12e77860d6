"""A stream core that also hands Claude's body chunks to a tap (the response cache records them).

A subclass rather than a branch in `StreamCore`: streams nobody records pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from opentelemetry.trace import SpanContext

from sidecar.record import StreamRecord
from sidecar.stream.core import StreamCore, Translator


class CallTap(Protocol):
    """What a Claude call tells its recorder: its span, body chunks, a whole answer, its end.

    The recorder also says how many other callers read the call (`followers`: while any
    do, the call outlives its own client) and is told whom to tell when the last one
    leaves (`on_idle`)."""

    followers: int
    on_idle: Callable[[], None] | None

    def started(self, span: SpanContext) -> None:
        """The Claude call's span: the spans of the requests following it link to it."""

    def chunk(self, data: bytes) -> None:
        """One upstream body chunk, as it arrived (never waits)."""

    def message(self, body: bytes) -> None:
        """A complete non-streaming answer."""

    def finish(self, record: StreamRecord) -> None:
        """The call is over; `record.outcome` says how it ended."""


class TappedCore(StreamCore):
    """`StreamCore` that copies every upstream chunk to `tap` before accounting for it."""

    __slots__ = ("tap",)

    def __init__(self, record: StreamRecord, translator: Translator, tap: CallTap) -> None:
        super().__init__(record, translator)
        self.tap = tap

    def feed(self, chunk: bytes) -> bytes:
        if not self.passthrough:  # a passthrough chunk is observed, and `observe` taps it
            self.tap.chunk(chunk)
        return super().feed(chunk)

    def observe(self, chunk: bytes) -> None:
        self.tap.chunk(chunk)
        super().observe(chunk)


def make_core(record: StreamRecord, translator: Translator, tap: CallTap | None) -> StreamCore:
    """The core for one live stream: tapped when something records it."""
    return StreamCore(record, translator) if tap is None else TappedCore(record, translator, tap)
