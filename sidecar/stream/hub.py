"""The stream hub: each live generation has one producer and any number of subscribers.

The producer (Claude's response, driven by the relay) publishes the client's bytes
once; when the generation is resumable each event carries `id: <stream id>:<n>` (written
by the translator that framed it, or added here) and is kept in its log (the resume store's buffer) and writes them to every subscriber, in
the same call, from memory. A subscriber is one client connection: the one that started
the stream, or a reconnect. A subscriber leaving does not end the producer; when the
last one leaves a resumable generation, it goes on for the detach grace, then is
stopped. The producer's end reaches every subscriber as its final event.

Other callers may follow a resumable generation through the response cache's recording
of it (its `keeper`: coalesced requests, `sidecar.call.group`). The recording is read at
Claude's pace, a reader that always keeps up: Claude never pauses for a slow client of
such a generation (one left past the log's bound is cut, as any reader left behind).
While followers read it, a generation left by its own clients is not stopped (neither
at once, nor after the grace, nor by a `DELETE`): it goes on for them, and is stopped
the way it was due to be once the last of them leaves. This is decided when the last
client leaves, never per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from sidecar.sse import PING
from sidecar.stream.adapter import HIGH_WATER, ClientChannel
from sidecar.stream.store import StreamLog

if TYPE_CHECKING:
    from sidecar.record import Outcome, StreamRecord


class Keeper(Protocol):
    """Who else reads the generation (the response cache's recording of it)."""

    followers: int
    on_idle: Callable[[], None] | None

    def tick(self, now: float) -> None:
        """The watchdog's look at the generation (`now`, loop time): its followers, whose
        clients get what their own translation makes of Claude's bytes, each measure their
        client's quiet time by these looks and send it a heartbeat when due."""


class Producer(Protocol):
    """What feeds a generation (the live relay); the hub can only stop it."""

    def stop(self, outcome: Outcome, error_type: str, message: str) -> None: ...

    def final_event(self, outcome: Outcome, error_type: str, message: str) -> bytes | None:
        """The final event a `stop` for these reasons sends, made without stopping; None
        when the stream is already ending (a stop would change nothing)."""
        ...


FIRST_SEND: Final = 16 * 1024  # at most this much leaves with the headers (never waits to drain)
_BLANK: Final = b"\n\n"


class Subscriber:
    """One client connection reading a generation.

    Until its headers are sent, bytes collect in `first` and leave with them in one send;
    after that `send` is the connection's own (one call per event, no indirection).
    """

    __slots__ = ("_done", "_over", "behind", "channel", "first", "send")

    def __init__(
        self, channel: ClientChannel, backlog: bytes = b"", *, started: bool = False
    ) -> None:
        """A reader of `channel`: `backlog` leaves with its headers; `started`: they went out."""
        self.channel = channel
        # Write (or collect) bytes; True when the client lags past the high-water mark.
        self.send: Callable[[bytes], bool]
        self.first: bytearray | None
        if started:
            self.first = None
            self.send = channel.send
        else:
            self.first = bytearray(backlog)
            self.send = self._collect
        self._done: asyncio.Future[None] | None = None  # made for whoever waits (`done`)
        self._over = False
        # Cut for falling behind the log's bound (what it missed is gone): its read ended
        # short of the stream's end, as a resume past the buffer is.
        self.behind = False

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolved once the generation's final bytes were written to this client.

        Made on first use: a stream relayed in its request's task never waits on it.
        """
        done = self._done
        if done is None:
            done = self._done = self.channel.loop.create_future()
            if self._over:
                done.set_result(None)
        return done

    def _collect(self, data: bytes) -> bool:
        first = self.first
        if first is not None:
            first += data
            return False
        return self.channel.send(data)

    def _started(self) -> None:
        self.first = None
        self.send = self.channel.send

    def begin(self, data: bytes) -> bool:
        """Send the headers with what has collected and `data`, in one send (a backlog past
        `FIRST_SEND`: the headers first, the rest paced by the client); True when the
        client already lags. For a subscriber already started, `data` is just sent."""
        first = self.first
        if first is None:
            return self.channel.send(data) if data else False
        if first:
            data = bytes(first) + data
        channel = self.channel
        if len(data) > FIRST_SEND:
            channel.start(b"")
            self._started()
            return self.send(data)
        lag = channel.start(data)
        self._started()
        return lag

    def finish(self, data: bytes) -> None:
        """The generation's last bytes: they leave with the response's end (`channel.end`,
        or `end_now`), in one write with its last chunk, and with the headers if none were
        sent yet."""
        first = self.first
        if first is not None:  # never started: everything goes out at the end, in one send
            data = bytes(first) + data
            self._started()
        self.channel.finish(data)

    def ended(self) -> None:
        self._over = True
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)


class Generation:
    """One Claude generation: its subscribers, its numbered log and its end."""

    __slots__ = (
        "_due",
        "_unattended",
        "final",
        "grace",
        "keeper",
        "left",
        "log",
        "owner",
        "producer",
        "record",
        "sends",
        "stream_id",
        "subscribers",
    )  # fmt: skip

    def __init__(
        self,
        record: StreamRecord,
        *,
        stream_id: str | None = None,
        owner: str = "",
        log: StreamLog | None = None,
        grace: float = 0.0,
    ) -> None:
        self.record = record
        self.stream_id = stream_id
        self.owner = owner
        self.log = log  # None: not resumable (events are not numbered or kept)
        self.grace = grace
        self.subscribers: list[Subscriber] = []
        # Sends to the subscribers (their clients' bytes, heartbeats included), counted as
        # Claude's chunks are (`StreamRecord.chunks`): the watchdog's heartbeat follows what
        # the clients got, which on a translated route is not every chunk of Claude's (its
        # own `ping` events, a block's start or stop: nothing for the client).
        self.sends = 0
        self.final = False
        self._unattended: asyncio.TimerHandle | None = None
        # Set by the relay: the producer, whose `stop` ends it (outcome, error type, message).
        self.producer: Producer | None = None
        # The recording other callers follow (None: nobody can): it keeps the generation
        # going while they read (`kept_by`).
        self.keeper: Keeper | None = None
        # How the producer was due to stop when it was left to its followers.
        self._due: tuple[Outcome, str, str] | None = None
        # Set when the caller that started it left for good while followers read on
        # (its stream record's outcome, should the call still complete).
        self.left: Outcome | None = None

    def kept_by(self, keeper: Keeper | None) -> None:
        """Other callers may read the generation through `keeper` (a recording of it)."""
        self.keeper = keeper

    def _left_to_followers(self, due: tuple[Outcome, str, str]) -> None:
        """Its clients left while followers read it: it stops as `due` says once the last
        of them leaves (`unfollowed`). The keeper is told whom to tell only now, so a
        generation nobody left points no callback at itself (no reference cycle)."""
        self._due = due
        keeper = self.keeper
        if keeper is not None:
            keeper.on_idle = self.unfollowed

    @property
    def in_grace(self) -> bool:
        """Nobody reads it and the detach grace's timer runs (it stops when that ends)."""
        return self._unattended is not None

    def _attended(self) -> None:
        """Someone reads it, or it is over: the detach grace's timer, if set, is dropped."""
        if self._unattended is not None:
            self._unattended.cancel()
            self._unattended = None

    def _followed(self) -> bool:
        keeper = self.keeper
        return keeper is not None and keeper.followers > 0

    @property
    def resumable(self) -> bool:
        return self.log is not None

    # ------------------------------------------------------------------ producer side

    def publish(self, out: bytes) -> bool:
        """Send complete events to every subscriber; True when one of them lags.

        In a resumable generation each event is kept in the log with its id: the id its
        writer gave it (a translator that frames events numbers them from the log as it
        does), else one given here.
        """
        log = self.log
        if log is not None:
            out = self._kept(out, log)
        self.sends += 1
        lag = False
        for subscriber in self.subscribers:
            if subscriber.send(out):
                lag = True
        return lag and self._held_back()

    def send_raw(self, data: bytes) -> bool:
        """Bytes that are not events (heartbeats, passthrough chunks): sent, never kept."""
        self.sends += 1
        lag = False
        for subscriber in self.subscribers:
            if subscriber.send(data):
                lag = True
        return lag and self._held_back()

    def heartbeat(self) -> None:
        """The subscribers got nothing for the heartbeat interval: a comment to each. (The
        followers' clients get theirs from their own reading: `Keeper.tick`.)"""
        self.send_raw(PING)

    def begin(self, data: bytes, *, events: bool = False) -> bool:
        """The producer's first bytes (`events`: kept and numbered as `publish` does): each
        subscriber's headers leave with them in one send; True when one of them lags.

        A client already gone ends a stream that is not resumable (the error is raised);
        a resumable one just loses that reader.
        """
        if events and data and self.log is not None:
            data = self._kept(data, self.log)
        elif events and not data:
            # A translated stream with nothing to show yet (the prompt route's answer to
            # `message_start`): its head leaves with a comment. Headers alone leave a page's
            # `fetch()` unresolved in Firefox until Claude's first token or a heartbeat, so
            # it could not read the stream's id to cancel or resume it meanwhile.
            data = PING
        self.sends += 1
        lag = False
        for subscriber in list(self.subscribers):
            try:
                if subscriber.begin(data):
                    lag = True
            except (ConnectionResetError, OSError):
                if self.log is None:
                    raise
                self.detach(subscriber)
        return lag and self._held_back()

    def _held_back(self) -> bool:
        """A subscriber lags: whether Claude must pause (off the hot path: only on a lag).

        Claude pauses only when every reader still connected lags, so one slow or stalled
        reader of a shared stream (a second tab, a reconnect whose old connection is not
        dead yet) never holds back the others. A reader left behind by more than a resume
        would replay (the log's bound, past the high-water mark) while another keeps up is
        cut instead of buffered further (what it missed is no longer all kept: its resume is
        answered as expired, never a stream with a gap).
        """
        log = self.log
        if log is None:  # one reader: the stream is as fast as it is
            return True
        limit = HIGH_WATER + log.max_bytes
        # A recorded generation is read at Claude's pace by the recording its coalesced
        # callers follow: a reader that always keeps up, so no client paces the others.
        keeping_up = self.keeper is not None
        too_far = False
        for subscriber in self.subscribers:  # no allocation: runs per event while one lags
            channel = subscriber.channel
            if channel.closing():
                continue  # gone: its handler detaches it
            queued = channel.buffered()
            if queued <= HIGH_WATER or subscriber.first is not None:
                keeping_up = True
            elif queued > limit:
                too_far = True
        if not keeping_up:
            return True
        if too_far:
            for subscriber in [
                s
                for s in self.subscribers
                if s.first is None and not s.channel.closing() and s.channel.buffered() > limit
            ]:
                subscriber.behind = True
                subscriber.channel.abort()
                self.detach(subscriber)
        return False

    @classmethod
    def _kept(cls, out: bytes, log: StreamLog) -> bytes:
        """`out` as kept in the log (with the ids given here, if any)."""
        if log.numbered == log.last + 1:  # one event, numbered by its writer: kept as is
            log.append(out)
            return out
        return cls._keep(out, log)

    @staticmethod
    def _keep(out: bytes, log: StreamLog) -> bytes:
        """Keep each event of `out` in the log, numbered here first when its writer left
        ids to the generation (`id: <stream id>:<n>`)."""
        if log.numbered == log.last:  # no ids written
            out = log.number(out)
            if log.numbered == log.last + 1:
                log.append(out)
                return out
        for part in out.split(_BLANK):  # several events, each with its id
            if part:
                log.append(part + _BLANK)
        return out

    def end(self, final: bytes, raw: bytes = b"") -> None:
        """The producer is done: `raw` (passthrough bytes, never kept) and `final` (events,
        kept when resumable; either may be empty) reach every subscriber with its
        response's end, in one write; then they end. Only the first call counts."""
        if self.final:
            return
        if final and self.log is not None:
            final = self._kept(final, self.log)
        tail = raw + final if raw else final
        self.final = True
        # The producer is not needed past its end (every use checks `final`): letting go
        # of it here breaks the generation <-> producer cycle, so a finished stream's
        # objects are freed as it ends, not by the garbage collector later.
        self.producer = None
        keeper = self.keeper
        if keeper is not None:  # (nor of the recording's callback to it, and back)
            self.keeper = None
            keeper.on_idle = None
        self._attended()
        if self.log is not None:
            self.log.finish()
        for subscriber in self.subscribers:
            if tail:
                subscriber.finish(tail)
            subscriber.ended()

    def lagging(self) -> list[Subscriber]:
        """Subscribers with more than the high-water mark queued (Claude pauses for them
        only when every reader lags: `_held_back`)."""
        return [
            s for s in self.subscribers if s.first is None and s.channel.buffered() > HIGH_WATER
        ]

    # ------------------------------------------------------------------ subscriber side

    def attach(self, subscriber: Subscriber) -> None:
        """Add a reader (after its backlog was taken from the log, with no await between)."""
        self.subscribers.append(subscriber)
        self._due = None  # attended again
        self._attended()
        if self.final:
            subscriber.ended()

    def detach(self, subscriber: Subscriber) -> None:
        """A reader left. The last one leaving stops the producer: now, or after the grace."""
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
        subscriber.ended()
        self.unattended()

    def unattended(self) -> None:
        """Nobody reads it here (its last reader left, or the caller that started it left
        before it began): it stops now, or after the grace, unless followed."""
        if self.subscribers or self.final:
            return
        if self.log is None or self.grace <= 0:
            self._abandon("client_cancelled")
        elif self._unattended is None:
            loop = asyncio.get_running_loop()
            self._unattended = loop.call_later(self.grace, self._abandon, "client_detached")

    def cancel(self) -> bool:
        """An explicit cancel (a Stop button): the producer ends at once.

        While other callers follow it, it ends for its owner only: the owner's connections
        get the cancel's final event (it ends the log too) and it goes on for the
        followers, stopped at once when the last of them leaves (never kept for the grace);
        its call records `client_cancelled` even if it then completes.

        False when there was nothing left to stop: the stream is over, or was cancelled
        already for its owner, or (while others follow it) is ending, its last events on
        their way.
        """
        if self.producer is None or self.final:
            return False
        due: tuple[Outcome, str, str] = (
            "client_cancelled", "cancelled", "the stream was cancelled"
        )  # fmt: skip
        if not self._followed():
            self.producer.stop(*due)
            return True
        log = self.log
        if log is None:  # cancelled already: it goes on for its followers only
            return False
        # Over for its owner as a cancel without followers ends it: its connections get the
        # same final event, kept as the log's last (a reconnect finds the stream over, here
        # or on another replica, rather than attaching again); nothing more is kept or sent
        # to them while the call goes on for the followers.
        tail = self.producer.final_event(*due)
        if tail is None:  # ending already, with its events still to come: as a late cancel
            return False
        if tail:
            tail = self._kept(tail, log)
        self.log = None
        log.finish()
        self._attended()
        for subscriber in self.subscribers:
            if tail:
                subscriber.finish(tail)
            subscriber.ended()
        self.subscribers.clear()
        self.left = "client_cancelled"
        self._left_to_followers(due)
        return True

    def unfollowed(self) -> None:
        """The last follower left: a generation its clients left ends as it was due to (one
        left for the grace still goes on while a client reads it on another replica)."""
        due = self._due
        if due is None or self.producer is None or self.final or self.subscribers:
            return
        self._due = None
        if due[0] == "client_detached":  # a client may still read it on another replica
            self._abandon("client_detached")
            return
        self.producer.stop(*due)

    def _abandon(self, outcome: Outcome) -> None:
        self._unattended = None
        if self.producer is None or self.final or self.subscribers:
            return
        if self._followed():  # other callers read it: stopped when the last leaves
            if self._due is None:
                self._left_to_followers(
                    (outcome, "stream_abandoned", "no client came back for the stream")
                )
            return
        log = self.log
        if log is not None and log.readers_elsewhere and outcome == "client_detached":
            # A client reads it from the shared store on another replica: still attended.
            # Asked again after the grace (the store's count is at most ~1 s old).
            loop = asyncio.get_running_loop()
            self._unattended = loop.call_later(self.grace, self._abandon, outcome)
            return
        self.producer.stop(outcome, "stream_abandoned", "no client came back for the stream")
