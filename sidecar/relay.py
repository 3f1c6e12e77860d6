"""The hot path: relay one Claude stream to one client, chunk by chunk, unbuffered.

Each upstream read is framed and written straight to the client transport (one
write, no per-chunk drain, no re-chunking); the same bytes are scanned for event
boundaries so usage and text deltas are seen without decoding every event.
Slow clients are handled by draining only when the transport buffer is high.

A per-stream timer (not a task) ticks a few times per heartbeat/idle interval: it
sends `: ping` comments when the stream is quiet and ends a stalled upstream with
an `idle_timeout` error event. Shutdown ends live streams the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import aiohttp
from aiohttp import web

from sidecar.record import Outcome, StreamRecord
from sidecar.sse import PING, EventScanner
from sidecar.usage import observe

HIGH_WATER: Final = 256 * 1024  # bytes queued for a slow client before we wait for it
STOP: Final = b"message_stop"


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
    """Raised into the upstream reader to end a stream early (idle timeout, shutdown)."""

    def __init__(self, outcome: Outcome, error_type: str, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.error_type = error_type
        self.message = message


class LiveStream:
    """One stream in flight: the relay loop plus its watchdog timer."""

    __slots__ = (
        "_chunked", "_last_ping", "_last_progress", "_loop", "_scanner", "_seen", "_tick_every",
        "_timer", "_transport", "_writer", "heartbeat", "idle_timeout", "record", "translator",
        "upstream",
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
        self._loop = asyncio.get_running_loop()
        self._scanner = EventScanner()
        self.upstream = upstream
        self.record = record
        self.translator = translator
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self._tick_every = min(max(min(heartbeat, idle_timeout) / 4, 0.05), 5.0)
        self._seen = -1
        self._last_progress = self._last_ping = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        """Frame and write to the client transport in one call (HTTP/1.1 chunked or raw)."""
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._transport.write(data)

    # ------------------------------------------------------------------ relay

    async def run(self) -> None:
        """Relay until the upstream ends, fails or is stopped; sets the record's outcome."""
        record = self.record
        translator = self.translator
        passthrough = translator.passthrough
        feed = self._scanner.feed
        read = self.upstream.content.readany
        transport = self._transport
        write = self.write
        saw_stop = False
        self._arm()
        try:
            while True:
                chunk = await read()
                if not chunk:
                    break
                if transport.is_closing():
                    record.outcome = "client_cancelled"
                    return
                record.chunks += 1
                if record.first_chunk_at is None:
                    record.first_chunk_at = time.perf_counter()
                if passthrough:
                    write(chunk)  # before scanning: the client never waits for accounting
                    for block in feed(chunk):
                        if observe(record, block) == STOP:
                            saw_stop = True
                else:
                    out = b""
                    for block in feed(chunk):
                        name = observe(record, block)
                        if name == STOP:
                            saw_stop = True
                        out += translator.translate(block, name, record)
                    if out:
                        write(out)
                if transport.get_write_buffer_size() > HIGH_WATER:
                    await self._writer.drain()
            record.last_chunk_at = time.perf_counter()
            if record.error_type is not None:
                record.outcome = "upstream_error"
            elif not saw_stop:
                self._fail("upstream_error", "api_error", "Claude's stream ended early")
            elif not passthrough:
                write(translator.finish(record))
        except StopStream as stop:
            self._fail(stop.outcome, stop.error_type, stop.message)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            self._fail("upstream_error", "api_error", "connection to Claude was lost")
        except asyncio.CancelledError:
            record.outcome = "client_cancelled"
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.upstream.close()  # releases (and on early exit, drops) the upstream connection

    def _fail(self, outcome: Outcome, error_type: str, message: str) -> None:
        self.record.outcome = outcome
        if self.record.error_type is None:
            self.record.error_type = error_type
        if not self._transport.is_closing():
            self.write(self.translator.error_event(error_type, message, outcome))

    # ------------------------------------------------------------------ watchdog

    def stop(self, outcome: Outcome, error_type: str, message: str) -> None:
        """End the stream from outside the relay loop (shutdown, idle timeout)."""
        self.upstream.content.set_exception(StopStream(outcome, error_type, message))

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self._tick_every, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        if self.record.chunks != self._seen:
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
        if quiet >= self.heartbeat and not self._scanner.pending:
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
