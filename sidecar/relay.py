"""The hot path: drive one Claude stream into its generation, chunk by chunk, unbuffered.

llhttp parses Claude's response (status, headers, chunked framing; `sidecar.http_client`);
its body is then switched to push mode: the parser hands each body chunk straight to
`LiveStream.on_data`, inside the upstream socket's read callback.
There the stream core (`sidecar.stream.core`) turns it into the client's bytes, and the
generation (`sidecar.stream.hub`) writes them to each subscriber's transport in one call.
No task wakes up, no future is created and no buffer holds the bytes between Claude
and the client.

The relay task only waits for the end, and for a slow client: past the high-water mark
queued for a client, reading from Claude pauses until it catches up; a client that takes
nothing for `client_stall_timeout_seconds` loses its stream (`client_stalled`).

A watchdog ticks each stream eight times per heartbeat/idle interval, at most a second
apart (`tick_interval`; one timer per interval for all of a registry's streams, not one
per stream): it sends `: ping` comments when the clients got nothing for the heartbeat
(at most a tick after one is due; what they got, not what Claude sent: a translated
route sends nothing for Claude's own pings) and ends an upstream that sent nothing for
the idle timeout with an `idle_timeout` error event. (Before
Claude's head, a streaming request's own pings are `sidecar.call.waiting`'s.) Shutdown ends live streams the same way.

A stream relayed in its request ends when its client leaves (the request is cancelled).
A call the response cache coalesces is relayed to nobody: its generation has no
subscriber and is read at Claude's pace into the recording its callers replay
(`sidecar.call.group`), so no client ever pauses it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from sidecar.http_client import Response
from sidecar.record import Outcome, StreamRecord
from sidecar.stream.adapter import HIGH_WATER, ClientChannel, retrieve
from sidecar.stream.core import StopStream, StreamCore, Translator, ends_complete
from sidecar.stream.hub import FIRST_SEND, Generation, Subscriber
from sidecar.stream.registry import StreamRegistry
from sidecar.stream.tap import CallTap, make_core

__all__ = [
    "FIRST_SEND",
    "HIGH_WATER",
    "LiveStream",
    "StopStream",
    "StreamRegistry",
    "Translator",
    "open_stream",
]


class LiveStream:
    """One stream in flight: the push-mode producer of a generation, its end and its watchdog."""

    __slots__ = (
        "_begun", "_end", "_ended", "_last_ping", "_last_progress", "_loop", "_paused", "_paused_at",
        "_quiet_from", "_raw_tail", "_seen", "_sent", "_tail", "_ticked", "_waiting_for", "_wakeup",
        "core", "generation",
        "heartbeat", "idle_timeout", "record", "stall_timeout", "tick_every", "upstream",
    )  # fmt: skip

    def __init__(
        self,
        upstream: Response,
        core: StreamCore,
        generation: Generation,
        *,
        heartbeat: float,
        idle_timeout: float,
        stall_timeout: float = 60.0,
    ) -> None:
        self._loop = upstream.loop
        self._begun = False  # `begin` ran (the client's head went out)
        self._ended = False
        self._end: BaseException | None = None  # why the upstream body ended (None: EOF)
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self._paused_at = 0.0
        self._waiting_for: Sequence[Subscriber] = ()  # the clients a pause waits for
        # Claude's last bytes when they came with the body's end: they leave with the end.
        self._tail = b""  # translated events (kept, when resumable)
        self._raw_tail = b""  # passthrough bytes
        self.upstream = upstream
        self.core = core
        self.record: StreamRecord = core.record
        self.generation = generation
        generation.producer = self
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        # How often the watchdog looks at this stream (`tick`): a heartbeat comes at most
        # this long after it is due.
        self.tick_every = tick_interval(heartbeat, idle_timeout, stall_timeout)
        # The watchdog's first look sees progress (`_seen`: Claude's chunks; `_sent`: the
        # generation's sends to its clients) and starts the clocks.
        self._seen = self._sent = -1
        self._last_progress = self._last_ping = 0.0
        # The watchdog's last look (none yet: the stream's start), and the earliest time the
        # client's last bytes can have gone out (the look before the one that saw them).
        self._ticked = self._quiet_from = self._loop.time()

    @property
    def paused(self) -> bool:
        """Claude is paused for a slow client."""
        return self._paused

    @property
    def unsent_bytes(self) -> int:
        """Bytes written for the first client that its socket has not taken yet."""
        subscribers = self.generation.subscribers
        return subscribers[0].channel.buffered() if subscribers else 0

    # ------------------------------------------------------------------ push side

    def on_data(self, chunk: bytes) -> None:
        """One body chunk from Claude, straight from the parser: relay it and account for it."""
        if self._ended:
            return
        core = self.core
        if core.passthrough:
            lag = self.generation.send_raw(chunk)  # before scanning: never waits for accounting
            core.observe(chunk)
        else:
            out = core.feed(chunk)
            lag = self.generation.publish(out) if out else False
        if lag:
            self._hold_back()

    def on_last(self, chunk: bytes) -> None:
        """Claude's last bytes, read together with the end of its body.

        They are relayed with the stream's end, in the same write as the client
        response's last chunk (and, when nothing was sent yet, its headers): one send
        less per stream, and no later read they could wait for.
        """
        if self._ended:
            return
        core = self.core
        if core.passthrough:
            core.observe(chunk)
            self._raw_tail = chunk
        else:
            self._tail = core.feed(chunk)
        self.on_end(None)

    def _hold_back(self) -> None:
        """A client is slow: pause Claude; the relay task resumes it once the client drains."""
        if not self._paused:
            self._paused = True
            self._paused_at = self._loop.time()
            self.upstream.pause()
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

    def begin(self) -> None:
        """Claude's head is in: the client's head leaves now, with the bytes that came with
        Claude's (usually its `message_start`), in one send per client.

        Write first, account after: passthrough bytes are scanned once they are sent (their
        arrival is the time to first chunk); a translated stream translates first. When
        Claude's whole answer came with its head, it leaves with the end, in the same send,
        once scanned (`run`). (A stream relayed in its request begins in `open_stream`.)
        """
        self._begun = True
        upstream = self.upstream
        data = upstream.take_buffered()
        core = self.core
        if upstream.complete:  # all that will come: it leaves with the end, once scanned
            if data:
                self.on_last(data)
            else:
                self.on_end(None)
            return
        if core.passthrough:
            if data:
                core.arrived()
            lag = self.generation.begin(data)
            if data:
                core.observe(data)
        else:
            lag = self.generation.begin(core.feed(data) if data else b"", events=True)
        if lag:
            self._hold_back()

    async def run(self, registry: StreamRegistry) -> None:
        """Relay until the upstream ends, fails or is stopped; decides the record's outcome.

        Begins the stream (`begin`) unless its caller did. The stream is in `registry` (its
        watchdog ticks it, shutdown ends it) while it runs.
        """
        upstream = self.upstream
        try:
            if not self._begun:
                self.begin()
            if not self._ended:
                registry.add(self)
                upstream.start_push(self)  # no await since `begin`: nothing came between
            await self._relay()
            self.generation.end(self._tail + self.core.end(self._end), self._raw_tail)
        except asyncio.CancelledError:
            if isinstance(self._end, StopStream):  # ended first (a stalled client is cut)
                self.generation.end(self.core.end(self._end))
            else:
                self.record.outcome = "client_cancelled"
                # Decided: `end` only times what was relayed (its generation rate).
                self.generation.end(self.core.end(None))
            raise
        finally:
            registry.discard(self)
            upstream.close()  # releases (and on early exit, drops) the upstream connection

    async def _relay(self) -> None:
        """Wait for the end, resuming Claude once a slow client caught up."""
        upstream = self.upstream
        while not self._ended:
            if not self._paused:  # (a client may already lag from the first bytes)
                self._wakeup = self._loop.create_future()
                await self._wakeup
            # Resuming relays what the parser held back at once, which may pause again.
            while self._paused and not self._ended:
                if not await self._drained():
                    break  # stopped while a client still lags: end without waiting for it
                self._paused = False
                upstream.resume()

    async def _drained(self) -> bool:
        """Wait for slow clients to catch up (True) or the stream to be ended (False)."""
        generation = self.generation
        lagging = self._waiting_for = generation.lagging()
        if not lagging:
            return True
        # Once per pause, not per event.
        drains = [self._loop.create_task(s.channel.drain()) for s in lagging]
        self._wakeup = self._loop.create_future()
        for drain in drains:
            drain.add_done_callback(self._drain_done)
        # Claude resumes once one of them has caught up: one reader still behind holds
        # back no other (the hub pauses again only when every reader lags).
        while not self._ended and not any(d.done() for d in drains):
            await self._wakeup
            self._wakeup = self._loop.create_future()
        if not any(d.done() for d in drains):
            return False  # left to finish on their own: cancelling would break later drains
        self._waiting_for = ()
        for subscriber, drain in zip(lagging, drains, strict=True):
            if not drain.done():
                continue  # still behind: it finishes on its own (`_drain_done` retrieves it)
            error = drain.exception()
            if error is None:
                continue
            if not generation.resumable:
                raise error  # the client is gone: its stream ends
            generation.detach(subscriber)
        return True

    def _drain_done(self, drain: asyncio.Task[None]) -> None:
        retrieve(drain)  # retrieved here; the relay raises it if still waiting
        self._wake()

    # ------------------------------------------------------------------ watchdog

    def stop(self, outcome: Outcome, error_type: str, message: str) -> None:
        """End the stream from outside the relay (shutdown, idle timeout, cancel)."""
        self.on_end(StopStream(outcome, error_type, message))

    def final_event(self, outcome: Outcome, error_type: str, message: str) -> bytes | None:
        """The final event `stop` would end the clients' stream with, made now without
        ending it (for a cancel that ends it for its owner only: `Generation.cancel`);
        None once Claude's body ended (its last events, already numbered, are on their
        way with the end: a stop changes nothing then)."""
        if self._ended:
            return None
        return self.core.translator.error_event(error_type, message, outcome)

    def tick(self, now: float) -> None:
        """The watchdog's look (every `tick_every`): a stalled client, an idle upstream, a
        heartbeat due. (Broken framing needs no look: the parser ends the body at once.)

        The idle timeout follows Claude's bytes (`record.chunks`); the heartbeat follows
        what the clients got (`generation.sends`): a translated route sends nothing for
        some of Claude's events (its `ping`s, while a server tool runs), and its clients
        must still hear from the stream. Both are counters: no clock read per event."""
        if self._ended:
            return
        generation = self.generation
        keeper = generation.keeper
        if keeper is not None:  # its followers' clients' heartbeats are timed by these looks
            keeper.tick(now)
        if self._paused and now - self._paused_at >= self.stall_timeout:
            self._cut_stalled()
            return
        if self.record.chunks != self._seen or self._paused:
            # A paused stream is not idle: its idle time starts again once Claude is resumed.
            self._seen = self.record.chunks
            self._last_progress = now
        elif now - self._last_progress >= self.idle_timeout:
            self.stop(
                "idle_timeout",
                "timeout_error",
                f"no data from Claude for {self.idle_timeout:g} s",
            )
            return
        if generation.sends != self._sent or self._paused:
            # Sent since the last look, at the earliest right after it: the heartbeat is
            # due `heartbeat` after that (at most one tick early, never a tick late).
            self._sent = generation.sends
            self._quiet_from = self._ticked
        self._ticked = now
        quiet = now - max(self._quiet_from, self._last_ping)
        if quiet >= self.heartbeat and not self.core.mid_event and not self._paused:
            self._last_ping = now
            generation.heartbeat()

    def _cut_stalled(self) -> None:
        """A client took nothing for the stall timeout: its connection is cut, the stream ends.
        (A coalesced call never pauses for a client: its callers read its recording.)"""
        stalled, self._waiting_for = self._waiting_for, ()
        for subscriber in stalled:
            subscriber.channel.abort()
        self.stop(
            "client_stalled",
            "client_stalled",
            f"the client accepted no data for {self.stall_timeout:g} s",
        )


def tick_interval(heartbeat: float, idle_timeout: float, stall_timeout: float) -> float:
    """The watchdog's interval for these timers: an eighth of the shortest, 50 ms to 1 s
    (a heartbeat is at most that late; one call per stream per tick)."""
    return min(max(min(heartbeat, idle_timeout, stall_timeout) / 8, 0.05), 1.0)


def open_stream(
    upstream: Response,
    channel: ClientChannel,
    record: StreamRecord,
    translator: Translator,
    tap: CallTap | None,
    *,
    heartbeat: float,
    idle_timeout: float,
    stall_timeout: float,
) -> LiveStream:
    """The stream that relays Claude's answer to one client, in its request; `run` relays it.

    A passthrough answer begins here: the client's head leaves with the bytes that came
    with Claude's, and the stream's objects are made after, while the client reads. When
    that was the whole answer and it ends with Claude's `message_stop` (`ends_complete`),
    the end leaves in the same send: nothing will be added to it. A client already gone
    raises (but for a whole answer, whose end is skipped as always), and Claude's answer
    is let go. Other streams begin in `run`.
    """
    timers = (heartbeat, idle_timeout, stall_timeout)
    if translator.passthrough:
        complete = upstream.complete
        data = upstream.take_buffered()
        if not complete or ends_complete(data):
            arrived = time.perf_counter() if data else 0.0  # the time to first chunk: when read
            lag = False
            try:
                if complete:
                    channel.finish(data)
                    channel.end_now()  # the head, the whole answer and the end: one send
                else:
                    lag = channel.start(data)
            except BaseException:
                upstream.close()
                raise
            live = _live(upstream, channel, record, translator, tap, True, timers)
            live._begun = True
            if data:
                if record.first_chunk_at is None:
                    record.first_chunk_at = arrived
                live.core.observe(data)
            if complete:
                live.on_end(None)
                live.generation.end(b"")
                live.core.end(None)  # completed: nothing to add, as `ends_complete` saw
            elif lag:
                live._hold_back()
            return live
        live = _live(upstream, channel, record, translator, tap, False, timers)
        live._begun = True
        if data:
            live.on_last(data)  # scanned first: a stream that ended early gets an error event
        else:
            live.on_end(None)
        return live
    return _live(upstream, channel, record, translator, tap, False, timers)


def _live(
    upstream: Response,
    channel: ClientChannel,
    record: StreamRecord,
    translator: Translator,
    tap: CallTap | None,
    started: bool,
    timers: tuple[float, float, float],
) -> LiveStream:
    generation = Generation(record)
    generation.kept_by(tap)
    generation.attach(Subscriber(channel, started=started))
    heartbeat, idle_timeout, stall_timeout = timers
    return LiveStream(
        upstream,
        make_core(record, translator, tap),
        generation,
        heartbeat=heartbeat,
        idle_timeout=idle_timeout,
        stall_timeout=stall_timeout,
    )
