"""A streaming request's heartbeat before Claude's head: the client is never left in silence.

A streaming call waits before Claude's first byte: for a Claude slot (admission's queue),
for Claude's response head (a slow head, retries with their backoff on 429/529), for the
call a coalesced request follows. While that lasts less than `claude.heartbeat_seconds`,
nothing is sent and the outcome is answered with its own HTTP status. Once it has lasted
that long, the client's 200 SSE head goes out with a `: ping` comment, and another follows
every `heartbeat_seconds` until the wait is over (a proxy with an idle timeout in front of
the client keeps the connection). From then on an error can only be the route's error
event in the stream (`EarlyHead.fail`), and Claude's answer is relayed into the response
already started (`take`): its own response headers (`request-id`, rate limits) can no
longer be passed on.

One timer per waiting phase (none is made for a call that does not wait); the head is
serialised and sent from the timer's callback, no task is made. A request whose head
aiohttp's `prepare()` must make (not HTTP/1.1) gets no early head.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sidecar import sse
from sidecar.cache.entry import CACHE_HEADER
from sidecar.pipeline import RequestContext
from sidecar.quotas import QuotaLease
from sidecar.record import Outcome
from sidecar.sse import PING
from sidecar.stream.adapter import ClientChannel
from sidecar.stream.core import Translator
from sidecar.stream.resume import HEADER


class EarlyHead:
    """The head a waiting streaming request sends before Claude's (`ctx.early`)."""

    __slots__ = (
        "_ctx", "_lease", "_stream_id", "_timer", "channel", "heartbeat", "taken", "translator",
    )  # fmt: skip

    def __init__(self, ctx: RequestContext, translator: Translator) -> None:
        self._ctx = ctx
        self.translator = translator
        # What else the head carries: the call's quota headers, a resumable stream's id.
        self._lease: QuotaLease | None = None
        self._stream_id: str | None = None
        self.heartbeat = ctx.runtime.config.claude.heartbeat_seconds
        self._timer: asyncio.TimerHandle | None = None
        self.channel: ClientChannel | None = None  # once the head went out
        self.taken = False  # the relay writes to it now (`take`)

    @property
    def open(self) -> bool:
        """The head went out and nothing relays to it: an error is this stream's to end."""
        return self.channel is not None and not self.taken

    def wait(self) -> None:
        """A waiting phase starts: the head (or, once sent, a ping) after `heartbeat` of it."""
        if self._timer is None and not self.taken:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.heartbeat, self._due)

    def _due(self) -> None:
        self._timer = None
        try:
            channel = self.channel
            if channel is None:
                headers = self._head()
                channel = ClientChannel.opened(self._ctx.request, headers)
                if channel is None:  # a head aiohttp's `prepare()` makes: none early
                    return
                self.channel = channel
                self._ctx.sent_status = 200
                channel.start(PING)
            elif channel.closing():
                return  # gone: its request is cancelled
            else:
                channel.send(PING)
        except (ConnectionResetError, OSError):
            return
        self._timer = asyncio.get_running_loop().call_later(self.heartbeat, self._due)

    def _head(self) -> dict[str, str]:
        ctx = self._ctx
        headers = dict(ctx.headers)
        if self._lease is not None:
            headers.update(self._lease.headers)
        if ctx.cache_status is not None:
            headers[CACHE_HEADER] = ctx.cache_status
        if self._stream_id is not None:
            headers[HEADER] = self._stream_id
        headers.update(sse.HEADERS)
        headers.update(self.translator.headers)
        return headers

    def stop(self) -> None:
        """No more pings (the wait is over, or the request ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def settle(self) -> ClientChannel | None:
        """The wait is over: the head's channel if it went out (a ping now, so what follows
        counts its quiet time from here)."""
        self.stop()
        channel = self.channel
        if channel is not None and not self.taken and not channel.closing():
            channel.send(PING)
        return channel

    def take(self) -> ClientChannel | None:
        """The response a stream is relayed into: the head already sent, or None."""
        channel = self.settle()
        if channel is not None:
            self.taken = True
        return channel

    async def fail(
        self, error_type: str, message: str, outcome: Outcome = "upstream_error"
    ) -> web.StreamResponse:
        """The call failed after the head went out: the route's error event ends the stream."""
        channel = self.take()
        assert channel is not None
        channel.finish(self.translator.error_event(error_type, message, outcome))
        await channel.end(self._ctx.runtime.config.claude.client_stall_timeout_seconds)
        return channel.response


def waiting(
    ctx: RequestContext,
    translator: Translator,
    lease: QuotaLease | None = None,
    stream_id: str | None = None,
) -> EarlyHead:
    """The request's early head (made on its first wait), its timer started; `lease` and
    `stream_id` go with a head not sent yet."""
    early = ctx.early
    if early is None:
        early = ctx.early = EarlyHead(ctx, translator)
    if early.channel is None:
        early._lease, early._stream_id = lease, stream_id
    early.wait()
    return early


def taken(ctx: RequestContext) -> ClientChannel | None:
    """The early head's response, for the stream to go on in (None: none went out)."""
    early = ctx.early
    return None if early is None else early.take()
