"""A stream core that also hands Claude's body chunks to a tap (the response cache records them).

A subclass rather than a branch in `StreamCore`: streams nobody records pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from opentelemetry.trace import SpanContext

from sidecar.http_client import ClientError
from sidecar.record import Outcome, StreamRecord
from sidecar.stream.core import StopStream, StreamCore, Translator

# The caller's own client left or stalled: the call ends for it, not for its followers.
_ITS_CLIENT: Final = frozenset({"client_cancelled", "client_detached", "client_stalled"})


class CallTap(Protocol):
    """What a Claude call tells its recorder: its span, body chunks, a whole answer, its end.

    The recorder also says how many other callers read the call (`followers`: while any
    do, the call outlives its own client) and is told whom to tell when the last one
    leaves (`on_idle`)."""

    followers: int
    on_idle: Callable[[], None] | None

    def tick(self, now: float) -> None:
        """The call's watchdog looked (`now`, loop time): its readers measure their own
        clients' quiet time by these looks (`Keeper.tick`)."""

    def started(self, span: SpanContext) -> None:
        """The Claude call's span: the spans of the requests following it link to it."""

    def chunk(self, data: bytes) -> None:
        """One upstream body chunk, as it arrived (never waits)."""

    def message(self, body: bytes) -> None:
        """A complete non-streaming answer."""

    def stopped(self, end: BaseException) -> None:
        """Why the call's stream ended before Claude ended it, as `StreamCore.end` was told
        (a stop by the sidecar, the connection to Claude lost); never its own client leaving."""

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

    def end(self, end: BaseException | None) -> bytes:
        if isinstance(end, StopStream):
            if end.outcome not in _ITS_CLIENT:
                self.tap.stopped(end)  # followers replaying the call end the way it did
        elif isinstance(end, ClientError | OSError):
            self.tap.stopped(end)
        return super().end(end)


class Recorded(Translator):
    """The translator of a call its callers read from the recording, not live (a coalesced
    call: `sidecar.call.group`): its core only accounts for Claude's events, whose bytes
    the recording keeps; nobody reads what it would send."""

    __slots__ = ()

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        return b""


RECORDED: Final = Recorded()


def make_core(record: StreamRecord, translator: Translator, tap: CallTap | None) -> StreamCore:
    """The core for one live stream: tapped when something records it."""
    return StreamCore(record, translator) if tap is None else TappedCore(record, translator, tap)
