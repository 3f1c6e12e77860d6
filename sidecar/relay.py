"""The hot path: relay one Claude stream to one client, chunk by chunk, unbuffered.

aiohttp parses Claude's response (status, headers, chunked framing); its body reader
is then switched to push mode (`_PushReader`): the parser hands each body chunk
straight to `LiveStream.on_data`, inside the upstream socket's read callback. There,
the chunk is framed and written to the client transport in one call and scanned for
event boundaries (usage and text deltas) without decoding every event. No task wakes
up, no future is created and no buffer holds the bytes between Claude and the client.

The relay task only waits for the end, and for a slow client: past `HIGH_WATER` bytes
queued for the client, reading from Claude pauses until the client catches up.

A per-stream timer (not a task) ticks a few times per heartbeat/idle interval: it
sends `: ping` comments when the stream is quiet and ends a stalled upstream with
an `idle_timeout` error event. Shutdown ends live streams the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader

from sidecar.record import Outcome, StreamRecord
from sidecar.sse import PING, EventScanner
from sidecar.usage import observe

log = logging.getLogger("sidecar.relay")
HIGH_WATER: Final = 256 * 1024  # bytes queued for a slow client before Claude is paused
STOP: Final = b"message_stop"
FIRST_SEND: Final = 16 * 1024  # at most this much leaves with the headers (never waits to drain)


class Translator:
    """Turns upstream event blocks into client bytes; the base class passes them through."""

    passthrough = True

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        return b""

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        """The final event for a stream that fails after its first byte."""
        raise NotImplementedError

    def finish(self, record: StreamRecord) -> bytes:
        """Bytes to send after a complete upstream stream (e.g. the prompt route's `done`)."""
        return b""


class StopStream(Exception):
    """Why a stream ended early (idle timeout, shutdown)."""

    def __init__(self, outcome: Outcome, error_type: str, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.error_type = error_type
        self.message = message


# The live stream each push-mode reader feeds. Keyed by the reader, so nothing is
# attached to aiohttp's objects; an entry lives exactly as long as its relay.
_SINKS: dict[StreamReader, LiveStream] = {}


class _PushReader(StreamReader):
    """aiohttp's body reader, inside out: what the parser feeds goes to the relay at once.

    Same layout as `StreamReader` (no new slots), so a live reader can switch class.
    The parser calls these from the upstream protocol's `data_received`.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        sink = _SINKS.get(self)
        if sink is None:  # the relay has let go (its stream is over): keep what comes, as usual
            return super().feed_data(data, size)
        sink.on_data(data)
        return False  # nothing held back: the parser need not call again

    def begin_http_chunk_receiving(self) -> None:
        return None  # chunk offsets are kept for readers; nothing reads here

    def end_http_chunk_receiving(self) -> None:
        return None

    def feed_eof(self) -> None:
        sink = _SINKS.pop(self, None)
        super().feed_eof()  # runs aiohttp's end-of-body callbacks: the connection goes back
        if sink is not None:
            sink.on_end(None)

    def set_exception(self, exc: BaseException, *cause: BaseException) -> None:
        super().set_exception(exc, *cause)
        sink = _SINKS.pop(self, None)
        if sink is not None:
            sink.on_end(exc)


class LiveStream:
    """One stream in flight: the push-mode relay, its end, and its watchdog timer."""

    __slots__ = (
        "_chunked", "_end", "_ended", "_first", "_last_ping", "_last_progress", "_loop", "_paused",
        "_response", "_scanner", "_seen", "_tick_every", "_timer", "_transport", "_wakeup", "_writer",
        "heartbeat", "idle_timeout", "record", "saw_stop", "translator", "upstream",
    )  # fmt: skip

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        record: StreamRecord,
        translator: Translator,
        *,
        heartbeat: float,
        idle_timeout: float,
    ) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        self._transport = transport
        self._writer = request.writer
        # aiohttp picks chunked framing in prepare() for HTTP/1.1 without a length.
        self._chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._response = response
        # Until the headers are sent, output collects here: they leave in one send with it.
        self._first: bytearray | None = bytearray()
        self._loop = asyncio.get_running_loop()
        self._scanner = EventScanner()
        self._ended = False
        self._end: BaseException | None = None  # why the upstream body ended (None: EOF)
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self.upstream = upstream
        self.record = record
        self.translator = translator
        self.saw_stop = False
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self._tick_every = min(max(min(heartbeat, idle_timeout) / 4, 0.05), 5.0)
        self._seen = -1
        self._last_progress = self._last_ping = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def paused(self) -> bool:
        """True while Claude is held back because the client's socket is full."""
        return self._paused

    @property
    def unsent_bytes(self) -> int:
        """Bytes written for the client that its socket has not taken yet."""
        return self._transport.get_write_buffer_size()

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        """Frame and write to the client transport in one call (HTTP/1.1 chunked or raw)."""
        if self._first is not None:
            self._first += data
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._transport.write(data)

    # ------------------------------------------------------------------ push side

    def on_data(self, chunk: bytes) -> None:
        """One body chunk from Claude, straight from the parser: relay it and account for it."""
        if self._ended:
            return
        transport = self._transport
        if transport.is_closing():
            self.record.outcome = "client_cancelled"
            self.on_end(None)
            return
        record = self.record
        record.chunks += 1
        if record.first_chunk_at is None:
            record.first_chunk_at = time.perf_counter()
        if self.translator.passthrough:
            self.write(chunk)  # before scanning: the client never waits for accounting
            for block in self._scanner.feed(chunk):
                if observe(record, block) == STOP:
                    self.saw_stop = True
        else:
            out = b""
            translate = self.translator.translate
            for block in self._scanner.feed(chunk):
                name = observe(record, block)
                if name == STOP:
                    self.saw_stop = True
                out += translate(block, name, record)
            if out:
                self.write(out)
        if transport.get_write_buffer_size() > HIGH_WATER:
            self._hold_back()

    def _hold_back(self) -> None:
        """The client is slow: pause Claude; the relay task resumes it once the client drains."""
        if not self._paused:
            self._paused = True
            self.upstream.connection.protocol.pause_reading()  # type: ignore[union-attr]
            self._wake()

    def on_end(self, error: BaseException | None) -> None:
        """Claude's body ended (None: complete) or failed: the relay task finishes up."""
        if not self._ended:
            self._ended = True
            self._end = error
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    # ------------------------------------------------------------------ relay task

    async def run(self) -> None:
        """Relay until the upstream ends, fails or is stopped; sets the record's outcome."""
        record = self.record
        reader = self.upstream.content
        self._arm()
        try:
            # Bytes that came with Claude's headers are already buffered: relay them first. The
            # status line and headers leave with them (usually Claude's `message_start`) in one
            # send; clients see the 200 at once either way.
            self._take_buffered(reader)
            first, self._first = bytes(self._first or b""), None
            if len(first) <= FIRST_SEND:
                await self._response.write(first)  # aiohttp sends headers and bytes at once
            else:  # a backlog: headers now, the rest as any other write, paced by the client
                await self._response.write(b"")
                self.write(first)
                if self._transport.get_write_buffer_size() > HIGH_WATER:
                    self._hold_back()
            # Whatever arrived meanwhile, then the parser pushes the rest (no await between).
            self._take_buffered(reader)
            failed = reader.exception()
            if failed is not None:
                self.on_end(failed)
            elif reader.is_eof():
                self.on_end(None)
            elif not self._ended:
                _SINKS[reader] = self
                reader.__class__ = _PushReader
            while not self._ended:
                self._wakeup = self._loop.create_future()
                await self._wakeup
                # Resuming relays what the parser held back at once, which may pause again.
                while self._paused and not self._ended:
                    if not await self._drained():
                        break  # stopped (shutdown) while the client still lags: end without it
                    self._paused = False
                    self.upstream.connection.protocol.resume_reading()  # type: ignore[union-attr]
            self._finish(self._end)
        except asyncio.CancelledError:
            record.outcome = "client_cancelled"
            raise
        finally:
            _SINKS.pop(reader, None)
            if self._timer is not None:
                self._timer.cancel()
            self.upstream.close()  # releases (and on early exit, drops) the upstream connection

    async def _drained(self) -> bool:
        """Wait for the slow client to catch up (True) or the stream to be ended (False)."""
        drain = self._loop.create_task(self._writer.drain())  # once per pause, not per event
        self._wakeup = self._loop.create_future()
        drain.add_done_callback(self._drain_done)
        await self._wakeup
        if not drain.done():
            return False  # left to finish on its own: cancelling it would break later drains
        drain.result()  # a client gone raises here
        return True

    def _drain_done(self, drain: asyncio.Task[None]) -> None:
        if not drain.cancelled():
            drain.exception()  # retrieved here; the relay raises it if still waiting
        self._wake()

    def _take_buffered(self, reader: StreamReader) -> None:
        """Relay what aiohttp's reader holds (before push mode starts)."""
        if reader.exception() is None and not self._ended:
            data = reader.read_nowait()
            if data:
                self.on_data(data)

    def _finish(self, end: BaseException | None) -> None:
        record = self.record
        if record.outcome == "client_cancelled":
            return
        record.last_chunk_at = time.perf_counter()
        if end is not None and not isinstance(end, StopStream | aiohttp.ClientError | OSError):
            # Raised inside the relay itself (the parser hands it back): a bug, say so.
            log.error("relay failed", exc_info=end, extra={"request_id": record.request_id})
        if isinstance(end, StopStream):
            self._fail(end.outcome, end.error_type, end.message)
        elif record.error_type is not None:  # Claude's `event: error` was relayed: the last word
            record.outcome = "upstream_error"
        elif end is not None:
            self._fail("upstream_error", "api_error", "connection to Claude was lost")
        elif not self.saw_stop:
            self._fail("upstream_error", "api_error", "Claude's stream ended early")
        elif not self.translator.passthrough:
            self.write(self.translator.finish(record))

    def _fail(self, outcome: Outcome, error_type: str, message: str) -> None:
        self.record.outcome = outcome
        if self.record.error_type is None:
            self.record.error_type = error_type
        if not self._transport.is_closing():
            event = self.translator.error_event(error_type, message, outcome)
            if self.translator.passthrough and self._scanner.pending:
                event = b"\n\n" + event  # end Claude's cut event first, or it swallows this one
            self.write(event)

    # ------------------------------------------------------------------ watchdog

    def stop(self, outcome: Outcome, error_type: str, message: str) -> None:
        """End the stream from outside the relay (shutdown, idle timeout)."""
        self.on_end(StopStream(outcome, error_type, message))

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self._tick_every, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        connection = self.upstream.connection
        protocol = connection.protocol if connection is not None else None  # falsy when empty
        broken = protocol.exception() if protocol is not None else None
        if broken is not None:
            # aiohttp's parser drops the body reader without a word on broken chunked framing.
            self._timer = None
            self.on_end(aiohttp.ClientPayloadError(f"Claude's response is malformed: {broken}"))
            return
        if self.record.chunks != self._seen or self._paused:
            # A paused stream is not idle: its idle time starts again once Claude is resumed.
            self._seen = self.record.chunks
            self._last_progress = now
        elif now - self._last_progress >= self.idle_timeout:
            self._timer = None
            self.stop(
                "idle_timeout",
                "timeout_error",
                f"no data from Claude for {self.idle_timeout:g} s",
            )
            return
        quiet = now - max(self._last_progress, self._last_ping)
        if quiet >= self.heartbeat and not self._scanner.pending and not self._paused:
            self._last_ping = now
            if not self._transport.is_closing():
                self.write(PING)
        self._arm()


class StreamRegistry:
    """The live streams of this process, so shutdown can end each with a final event."""

    def __init__(self) -> None:
        self._streams: set[LiveStream] = set()

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[LiveStream]:
        """The live streams (a snapshot: streams may end while the caller iterates)."""
        return iter(list(self._streams))

    def add(self, stream: LiveStream) -> None:
        self._streams.add(stream)

    def discard(self, stream: LiveStream) -> None:
        self._streams.discard(stream)

    def stop_all(self, message: str = "the sidecar is shutting down") -> int:
        """Stop every live stream with a `shutting_down` error event; returns how many."""
        streams = list(self._streams)
        for stream in streams:
            stream.stop("shutting_down", "overloaded_error", message)
        return len(streams)
