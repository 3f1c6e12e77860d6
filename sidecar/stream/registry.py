"""The live streams of this process: shutdown ends each, and one watchdog ticks them all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.relay import LiveStream

log = logging.getLogger("sidecar.relay")


class StreamRegistry:
    """The live streams of this process, so shutdown can end each with a final event.

    It also runs their watchdog: one timer per tick interval ticks every stream with
    that interval (a stream holds no timer of its own, and quiet streams cost one
    call each per tick, not a timer each).
    """

    def __init__(self) -> None:
        self._streams: set[LiveStream] = set()
        self._watched: dict[float, set[LiveStream]] = {}  # by tick interval
        # Set by `stop_all` (whether the store is shared): a stream that starts after it
        # (a call that was queued for a slot or waiting for Claude's head) ends at once.
        self._stopped: bool | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[LiveStream]:
        """The live streams (a snapshot: streams may end while the caller iterates)."""
        return iter(list(self._streams))

    def tick_intervals(self) -> list[float]:
        """The tick intervals a timer runs for (one per interval some stream ticks at)."""
        return list(self._watched)

    def add(self, stream: LiveStream) -> None:
        self._streams.add(stream)
        every = stream.tick_every
        watched = self._watched.get(every)
        if watched is None:  # the first of its interval: its timer starts
            watched = self._watched[every] = set()
            asyncio.get_running_loop().call_later(every, self._tick, every)
        watched.add(stream)
        if self._stopped is not None:  # shutdown already ended the others: no one is left out
            _stop(stream, shared_store=self._stopped)

    def discard(self, stream: LiveStream) -> None:
        self._streams.discard(stream)
        watched = self._watched.get(stream.tick_every)
        if watched is not None:
            watched.discard(stream)  # an interval left empty stops at its next tick

    def _tick(self, every: float) -> None:
        watched = self._watched[every]
        if not watched:
            del self._watched[every]
            return
        loop = asyncio.get_running_loop()
        loop.call_later(every, self._tick, every)
        now = loop.time()
        for stream in list(watched):  # a tick may end a stream, and its relay discard it
            try:
                stream.tick(now)
            except Exception:  # one stream's failure must not stop the others' watchdog
                log.exception(
                    "stream watchdog failed", extra={"request_id": stream.record.request_id}
                )

    def stop_all(self, *, shared_store: bool = False) -> int:
        """Stop every live stream with a `shutting_down` final event; returns how many.

        The event says what a client can still do: a resumable stream whose events are in
        a shared store can be read again from another replica (up to this final event);
        one kept only in this process's memory is lost with it (`stream_lost`). The stop
        holds for streams added later too: a call admitted after it (one queued for a slot
        the stopped streams freed) is ended the moment it starts streaming.
        """
        self._stopped = shared_store
        streams = list(self._streams)
        for stream in streams:
            _stop(stream, shared_store=shared_store)
        return len(streams)


def _stop(stream: LiveStream, *, shared_store: bool) -> None:
    """End one stream with the shutdown's final event."""
    if not stream.generation.resumable:
        stream.stop("shutting_down", "overloaded_error", "the sidecar is shutting down")
    elif shared_store:
        stream.stop(
            "shutting_down", "overloaded_error",
            "the sidecar is shutting down; events missed so far can be resumed "
            "from another replica",
        )  # fmt: skip
    else:
        stream.stop(
            "shutting_down", "stream_lost",
            "the sidecar is shutting down; this stream cannot be resumed",
        )  # fmt: skip
