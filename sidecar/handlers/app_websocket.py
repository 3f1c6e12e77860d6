"""The app route's WebSocket relay: messages both ways, closes passed on, stalls and dead peers cut.

Each side's messages are relayed whole by one task (a pump). A close from either side is
passed on with its code and reason. A side that takes none of what is queued for it for
`app.send_timeout_seconds` (nginx's `send_timeout`, as for the app route's HTTP answers)
is cut, and the other side told why (RFC 6455 7.4.1): `1001` (going away) when the client
stopped reading, `1011` (the server cannot go on) when the app did. Without that, aiohttp's
`send_*` wait on the stalled socket's drain for good, holding both sockets.

A side that sends nothing for `app.websocket_ping_seconds` is sent a Ping (RFC 6455 5.5.2,
aiohttp's `heartbeat`, armed on both sockets where they are made); one that answers neither
with a Pong nor anything else within half that is dead (a peer gone without a FIN or RST: a
network cut, a laptop closed, a NAT that dropped the flow): its socket is closed, and the
other side told `1001` / `1011` as for a stall, reason `the client stopped answering pings`
/ `the app stopped answering pings`. Without that, an idle WebSocket whose peer vanished
holds both sockets for good, since nothing is ever written to either.

A Pong late behind a backlog is not missed: while bytes are still queued toward a side (in
the process or the kernel) or its messages wait unread here, its heartbeat is re-armed
instead (`sidecar.stream.websocket_heartbeat`), so a slow reader is not taken for a dead
one; a backlog that never drains is the stall watch's, and the kernel's `TCP_USER_TIMEOUT`
(set on both sockets, twice the send timeout), to cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final, Literal, cast

import aiohttp
from aiohttp import HttpVersion11, web

from sidecar.listener import bound_unaccepted_bytes

WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
# How a relayed WebSocket ended: a close frame from either side (`closed`), a side cut for
# taking nothing (`*_stalled`) or for answering no ping (`*_unresponsive`), gone without a
# close (`*_lost`), or failing (`*_error`).
Outcome = Literal[
    "closed", "client_stalled", "app_stalled", "client_unresponsive", "app_unresponsive",
    "client_lost", "app_lost", "client_error", "app_error", "shutting_down",
]  # fmt: skip


def asks_websocket(request: web.BaseRequest) -> bool:
    """Whether a request asks for a WebSocket: `Upgrade: websocket` in HTTP/1.1. An
    HTTP/1.0 request's `Upgrade` is ignored (RFC 9110 7.8: 1.0 has no `101`), so it is
    proxied as the plain request it is."""
    return (
        request.version >= HttpVersion11
        and request.headers.get("Upgrade", "").lower() == "websocket"
    )


_CLOSING: set[asyncio.Task[bool]] = set()  # closes that outlive a cancelled handler
_SHUTTING_DOWN: Final = b"the sidecar is shutting down"
_TEXT: Final = aiohttp.WSMsgType.TEXT
_BINARY: Final = aiohttp.WSMsgType.BINARY


class _End:
    """One side of a relayed WebSocket: its socket, and what the stall watch saw of it."""

    __slots__ = ("gone_code", "name", "queued", "since", "stalled", "transport", "writes",
                 "writes_seen", "ws")  # fmt: skip

    def __init__(
        self, name: Literal["client", "app"], ws: WebSocket, transport: asyncio.Transport
    ) -> None:
        self.name: Final = name
        self.ws = ws
        self.transport = transport
        # What the other side is told when this one goes: the client going away is 1001;
        # the app failing is, to the client, the server unable to go on (1011).
        self.gone_code: Final[int] = (
            aiohttp.WSCloseCode.GOING_AWAY if name == "client"
            else aiohttp.WSCloseCode.INTERNAL_ERROR
        )  # fmt: skip
        self.writes = 0  # messages sent to it: the watch's sign that bytes were added
        self.writes_seen = 0
        self.queued = -1  # bytes queued at the watch's last look (-1: none)
        self.since = 0.0  # when the watch last saw it take something (or get a message)
        self.stalled = False  # cut for taking nothing for the send timeout


class _StallWatch:
    """Cuts a side that takes none of what is queued for it for `timeout`.

    One timer per WebSocket, looking every half period, never anything per message but a
    count: a side with bytes queued that took none of them since the last look, and was
    sent no message in between, made no progress; after `timeout` of that it is cut
    (`abort`: what is queued is dropped, a send waiting on it returns, and the pump
    reading it sees it end). A slow reader is not cut while its queue shrinks. Closes are
    bounded too (aiohttp's `close` waits on the drain, and a transport closed with bytes
    queued waits for them); the watch ends once both sides are closed and flushed.
    """

    __slots__ = ("_ends", "_loop", "_timeout", "_timer")

    def __init__(self, ends: tuple[_End, _End], timeout: float) -> None:
        self._ends = ends
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(timeout / 2, self._look)

    def _look(self) -> None:
        now = self._loop.time()
        watching = False
        for end in self._ends:
            transport = end.transport
            queued = transport.get_write_buffer_size()
            if not queued:
                end.queued = -1
                watching |= not transport.is_closing()
                continue
            watching = True
            if end.queued < 0 or queued < end.queued or end.writes != end.writes_seen:
                end.queued, end.since, end.writes_seen = queued, now, end.writes  # progress
            elif now - end.since >= self._timeout:
                end.stalled = True
                transport.abort()
        self._timer = self._loop.call_later(self._timeout / 2, self._look) if watching else None


class LiveWebSockets:
    """The relayed WebSockets of one runtime, so shutdown can close each one properly."""

    __slots__ = ("_relays",)

    def __init__(self) -> None:
        self._relays: set[_Relay] = set()

    def __len__(self) -> int:
        return len(self._relays)

    def add(self, relay: _Relay) -> None:
        self._relays.add(relay)

    def discard(self, relay: _Relay) -> None:
        self._relays.discard(relay)

    def close_all(self) -> int:
        """Close every relayed WebSocket, both sides, with `1001` (going away: the sidecar
        is stopping); how many. Each relay then ends as usual, outcome `shutting_down`."""
        relays = list(self._relays)
        for relay in relays:
            relay.shut_down()
        return len(relays)


async def relay_websocket(
    client: web.WebSocketResponse,
    client_transport: asyncio.Transport,
    app: aiohttp.ClientWebSocketResponse,
    app_transport: asyncio.Transport,
    send_timeout: float,
    ended: Callable[[Outcome], None],
    live: LiveWebSockets,
) -> None:
    """Relay messages both ways until either side closes, goes or stalls, or shutdown
    closes both (`live`); `ended` is told how it ended (also when the handler is cancelled:
    the client's connection went)."""
    # The app's socket is bounded by the kernel as the client's is (the listener sets the
    # client's): bytes the app accepts none of are cut even once they left the process.
    bound_unaccepted_bytes(app_transport, 2 * send_timeout)
    relay = _Relay(_End("client", client, client_transport), _End("app", app, app_transport))
    _StallWatch((relay.client, relay.app), send_timeout)  # its timer keeps it while needed
    to_app = asyncio.create_task(relay.pump(relay.client, relay.app))
    to_client = asyncio.create_task(relay.pump(relay.app, relay.client))
    live.add(relay)
    try:
        await asyncio.wait({to_app, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        live.discard(relay)
        for task in (to_app, to_client):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if relay.outcome is None:  # cancelled first: the client's connection went
            relay.end(
                relay.app, _cut(relay.client) if relay.client.stalled else _lost(relay.client)
            )
        for closing in relay.closes:  # before the caller's own (plain 1000) close
            await asyncio.shield(closing)
        assert relay.outcome is not None
        ended(relay.outcome)


class _Relay:
    """The two sides, how the relay ended (the first pump to see it decides) and the closes
    it started."""

    __slots__ = ("app", "client", "closes", "outcome")

    def __init__(self, client: _End, app: _End) -> None:
        self.client = client
        self.app = app
        self.outcome: Outcome | None = None
        self.closes: list[asyncio.Task[bool]] = []

    async def pump(self, source: _End, sink: _End) -> None:
        """Relay `source`'s messages to `sink`; at `source`'s end, close `sink` with the code
        that end calls for. A message for a side that went is dropped: the pump reading that
        side sees it end, and closes this one."""
        receive = source.ws.receive
        sink_ws = sink.ws
        while True:
            message = await receive()
            kind = message.type
            if kind is not _TEXT and kind is not _BINARY:
                if kind is aiohttp.WSMsgType.CLOSING:
                    return  # the other pump is closing `source`, having seen `sink` end
                break
            sink.writes += 1
            try:
                if kind is _TEXT:
                    await sink_ws.send_str(message.data)
                else:
                    await sink_ws.send_bytes(message.data)
            except ConnectionError:
                continue  # `sink` went (or was cut): the pump reading it passes its end on
        self.end(sink, _ending(source, message))
        if self.closes:
            await asyncio.shield(self.closes[-1])

    def shut_down(self) -> None:
        """The sidecar is stopping: both sides are closed with `1001` (RFC 6455 7.4.1, a
        server going down), unless the relay is ending already. Each pump then sees its
        side closing and returns."""
        if self.outcome is not None:
            return
        self.outcome = "shutting_down"
        for end in (self.client, self.app):
            if not end.stalled:
                self._close(end, aiohttp.WSCloseCode.GOING_AWAY, _SHUTTING_DOWN)

    def _close(self, end: _End, code: int, reason: bytes) -> None:
        end.writes += 1
        closing = asyncio.create_task(end.ws.close(code=code, message=reason))
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)
        self.closes.append(closing)

    def end(self, other: _End, ending: tuple[Outcome, int, bytes]) -> None:
        """One side ended as `ending` says: close `other` with its code (shielded: the
        client's close is often followed by its TCP close, which cancels the handler, and
        the app must still get the client's code, not a bare 1000). The stall watch bounds
        the close (aiohttp's `close` waits on the drain)."""
        if self.outcome is not None:
            return
        self.outcome, code, reason = ending
        if other.stalled:
            return  # cut: nothing more reaches it
        self._close(other, code, reason)


def _cut(end: _End) -> tuple[Outcome, int, bytes]:
    return (
        cast(Outcome, f"{end.name}_stalled"),
        end.gone_code,
        b"the client stopped reading" if end.name == "client" else b"the app stopped reading",
    )


def _lost(end: _End) -> tuple[Outcome, int, bytes]:
    if isinstance(end.ws.exception(), TimeoutError):  # aiohttp's heartbeat got no pong
        return (
            cast(Outcome, f"{end.name}_unresponsive"),
            end.gone_code,
            f"the {end.name} stopped answering pings".encode(),
        )
    return cast(Outcome, f"{end.name}_lost"), end.gone_code, b""


def _ending(source: _End, message: aiohttp.WSMessage) -> tuple[Outcome, int, bytes]:
    """How `source` ended, and the close code and reason the other side is told."""
    if source.stalled:
        return _cut(source)
    if message.type is aiohttp.WSMsgType.CLOSE:
        # The peer's code and reason (e.g. an app's 4001 "unauthorized") go through.
        return "closed", _relayable(message.data), (message.extra or "").encode()
    error = message.data
    if message.type is aiohttp.WSMsgType.ERROR and isinstance(error, aiohttp.WebSocketError):
        # What broke the source's side (1009: a message over the limit) is what the other
        # side is told; anything else is the sidecar's internal error.
        too_big = error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        return (
            cast(Outcome, f"{source.name}_error"),
            error.code if too_big else aiohttp.WSCloseCode.INTERNAL_ERROR,
            b"",
        )
    return _lost(source)  # its connection ended (or failed, or answered no ping) unclosed


def _relayable(code: object) -> int:
    """A close code that may be sent on (1005/1006/1015 only ever describe a close)."""
    valid = isinstance(code, int) and (1000 <= code <= 1014 or 3000 <= code <= 4999)
    if valid and code not in (1004, 1005, 1006):
        return cast(int, code)
    return aiohttp.WSCloseCode.OK if code in (None, 1005) else aiohttp.WSCloseCode.INTERNAL_ERROR
