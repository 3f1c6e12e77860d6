"""The rules of one stream, without I/O: Claude's chunks in, the client's bytes and the outcome out.

A `StreamCore` is fed upstream body chunks as they arrive (split anywhere), finds the
SSE events in them, accounts for usage, asks the route's `Translator` what each event
becomes for the client, and at the end decides the outcome and the final bytes (the
prompt route's `done`, or an error event when the stream failed). It never touches a
socket: the live relay, a resume replay and tests drive the same rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import ClassVar, Final

from sidecar.http_client import ClientError
from sidecar.record import Outcome, StreamRecord
from sidecar.sse import EventScanner, EventTooLarge
from sidecar.usage import DELTA, observe

log = logging.getLogger("sidecar.relay")
STOP: Final = b"message_stop"
_STOP_HEAD: Final = b"event: " + STOP + b"\n"
# Almost every event is a content delta: known by its first line, it needs no name lookup.
_DELTA_HEAD: Final = b"event: " + DELTA + b"\n"
_LEFT: Final = frozenset({"client_cancelled", "client_detached"})  # not failures of the call


class Translator:
    """Turns upstream event blocks into client bytes; the base class passes them through.

    `translate` returns zero or more complete SSE events (each ending in a blank line)
    and never an `id:` line of its own when the stream is resumable: the stream numbers
    the events it sends. Per stream (those with state of their own): slotted.
    """

    __slots__ = ()
    passthrough = True
    # Response headers that name the stream's format (the `ui` route's protocol marker):
    # sent with a stream of this translator's bytes only, never with an error answer.
    headers: ClassVar[Mapping[str, str]] = {}

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        return b""

    def opening(self, id_prefix: bytes) -> bytes:
        """What a resumable stream's first client gets before its first event, with the
        head (`id_prefix`: its ids' `id: <stream id>:`); no event, and not kept in its
        log, so a resume never sends it. Nothing for most formats."""
        return b""

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        """The final event for a stream that fails after its first byte."""
        raise NotImplementedError

    def finish(self, record: StreamRecord) -> bytes:
        """Bytes to send after a complete upstream stream (e.g. the prompt route's `done`)."""
        return b""


class StopStream(Exception):
    """Why a stream ended early (idle timeout, shutdown, a stalled or departed client)."""

    def __init__(self, outcome: Outcome, error_type: str, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.error_type = error_type
        self.message = message


_UNFED: Final = EventScanner()  # never fed: a look from a stream's first byte


def ends_complete(body: bytes) -> bool:
    """Whether Claude's whole body ends with its whole `message_stop` (a cheap look, before
    any scan). Then `end(None)` after `observe(body)` completes the stream, and a passthrough
    one adds no bytes: the end can leave with the body, before it is scanned."""
    return _UNFED.ends_with_event(body, _STOP_HEAD)


class StreamCore:
    """One stream's accounting and translation; `feed` per chunk, `end` once."""

    __slots__ = ("_scanner", "passthrough", "record", "saw_stop", "translator")

    def __init__(self, record: StreamRecord, translator: Translator) -> None:
        self.record = record
        self.translator = translator
        self.passthrough = translator.passthrough
        self.saw_stop = False
        self._scanner = EventScanner()

    def feed(self, chunk: bytes) -> bytes:
        """One upstream chunk: the client's bytes for it (the chunk itself when passing through)."""
        if self.passthrough:
            self.observe(chunk)
            return chunk
        record = self.record
        record.chunks += 1
        if record.first_chunk_at is None:
            record.first_chunk_at = time.perf_counter()
        out = b""
        translate = self.translator.translate
        for block in self._scanner.feed(chunk):
            if block.startswith(_DELTA_HEAD):  # the common event, counted as `observe` does
                record.output_deltas += 1
                if record.first_token_at is None:
                    record.first_token_at = time.perf_counter()
                out += translate(block, DELTA, record)
                continue
            name = observe(record, block)
            if name == STOP:
                self.saw_stop = True
            out += translate(block, name, record)
        return out

    def arrived(self) -> None:
        """Claude's first bytes are read now: the time to first chunk, taken before they are
        relayed (`observe` accounts for them after)."""
        record = self.record
        if record.first_chunk_at is None:
            record.first_chunk_at = time.perf_counter()

    def observe(self, chunk: bytes) -> None:
        """Account for a passthrough chunk already sent (the client never waits for this)."""
        record = self.record
        record.chunks += 1
        if record.first_chunk_at is None:
            record.first_chunk_at = time.perf_counter()
        for block in self._scanner.feed(chunk):
            if block.startswith(_DELTA_HEAD):  # the common event, counted as `observe` does
                record.output_deltas += 1
                if record.first_token_at is None:
                    record.first_token_at = time.perf_counter()
            elif observe(record, block) == STOP:
                self.saw_stop = True

    @property
    def mid_event(self) -> bool:
        """An upstream event is only partly relayed (a heartbeat now would corrupt it)."""
        return self._scanner.in_event

    def end(self, end: BaseException | None) -> bytes:
        """Decide the outcome (unless already decided) and return the final bytes to send.

        `end` is why Claude's body ended: None (complete), a `StopStream` (the sidecar
        ended it), `EventTooLarge` (`feed` or `observe` raised it: an event that never
        ended, which the relay stopped reading), or the error that cut it.
        """
        record = self.record
        if record.outcome is not None:
            # Decided elsewhere (the client left): nothing more is sent; what was relayed
            # ended now, for its generation rate and chunk gaps.
            if record.last_chunk_at is None and record.first_chunk_at is not None:
                record.last_chunk_at = time.perf_counter()
            return b""
        if not (isinstance(end, StopStream) and end.outcome == "idle_timeout"):
            # Claude's body ends now. An idle timeout's end is not when its last bytes came:
            # they came the whole timeout or more before, at a time not kept (no timestamp
            # per chunk), so its chunk gaps and generation rate stay unknown rather than
            # stretched over the silence.
            record.last_chunk_at = time.perf_counter()
        if end is not None and not isinstance(
            end, StopStream | ClientError | OSError | EventTooLarge
        ):
            # Raised inside the relay itself (the parser hands it back): a bug, say so.
            log.error("relay failed", exc_info=end, extra={"request_id": record.request_id})
        if isinstance(end, StopStream):
            return self._fail(end.outcome, end.error_type, end.message)
        if isinstance(end, EventTooLarge):
            # A broken upstream (or a proxy in front of Claude): ended as a cut stream is.
            log.warning(
                "Claude's stream ended: an event exceeded the size limit",
                extra={"request_id": record.request_id, "limit_bytes": end.limit},
            )
            return self._fail(
                "upstream_error", "api_error", "Claude's stream sent an event too large to relay"
            )
        if record.error_type is not None:  # Claude's `event: error` was relayed: the last word
            record.outcome = "upstream_error"
            return b""
        if end is not None:
            return self._fail("upstream_error", "api_error", "connection to Claude was lost")
        if not self.saw_stop:
            return self._fail("upstream_error", "api_error", "Claude's stream ended early")
        record.outcome = "completed"
        return b"" if self.passthrough else self.translator.finish(record)

    def _fail(self, outcome: Outcome, error_type: str, message: str) -> bytes:
        record = self.record
        record.outcome = outcome
        if record.error_type is None and outcome not in _LEFT:
            record.error_type = error_type
        event = self.translator.error_event(error_type, message, outcome)
        if self.passthrough and self._scanner.in_event:
            event = b"\n\n" + event  # end Claude's cut event first, or it swallows this one
        return event
