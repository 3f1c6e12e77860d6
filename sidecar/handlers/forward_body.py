"""A forwarded answer's body relayed to the client as it arrives, never held whole.

A forwarded call (`claude.forward_paths`: a file's content, a batch's results JSONL, a
page of models) may answer with hundreds of MB. Its body is pushed from Claude's socket
(`Response.start_push`) into a small queue that one write empties; past `HIGH_WATER`
queued (a client slower than Claude), reading Claude pauses until the write took the
queue. Claude's bytes pass as they came: its `Content-Length` (else chunked framing),
`Content-Type` and `Content-Encoding` with them.

Timers: Claude may go `claude.idle_timeout_seconds` without a byte while the client
waits for one, and a client may take nothing for `claude.client_stall_timeout_seconds`
while a write waits on it; either cuts the client's connection (it sees a short body)
and Claude's. A client that leaves, or Claude breaking off, ends both the same way: a
connection to Claude whose answer was not read to its end is closed, never pooled.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Final

from aiohttp import web

from sidecar.handlers.send_watch import SendWatch
from sidecar.http_client import Response
from sidecar.pipeline import RequestContext
from sidecar.stream.adapter import HIGH_WATER, ForwardedResponse

# Claude's headers that describe the body passed on: they come back as Claude sent them.
BODY_HEADERS: Final = ("content-type", "content-encoding")


class _Pipe:
    """Claude's body chunks, from the parser's callbacks to the relaying task."""

    __slots__ = ("_chunks", "_queued", "_upstream", "_wakeup", "ended", "error", "paused")

    def __init__(self, upstream: Response) -> None:
        self._upstream = upstream
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._wakeup: asyncio.Future[None] | None = None
        self.ended = False
        self.error: BaseException | None = None  # why the body ended early (None: complete)
        self.paused = False

    # the Sink protocol (called from Claude's socket's read callback)

    def on_data(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued >= HIGH_WATER and not self.paused:
            self.paused = True  # resumed once the relay took the queue
            self._upstream.pause()
        self._wake()

    def on_last(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.on_end(None)

    def on_end(self, error: BaseException | None) -> None:
        self.ended = True
        self.error = error
        self._wake()

    # the relaying task's side

    @property
    def pending(self) -> bool:
        return bool(self._chunks)

    def take(self) -> bytes:
        """Everything queued, as one write; Claude is read again if it was paused."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._queued = 0
        if self.paused:
            self.paused = False
            self._upstream.resume()
        return data

    async def arrival(self, idle: float) -> bool:
        """Wait for Claude's next bytes or end: False if none came for `idle` seconds."""
        wakeup = self._wakeup = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(idle):
                await wakeup
        except TimeoutError:
            return False
        finally:
            self._wakeup = None
        return True

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)


async def relay_body(
    ctx: RequestContext, upstream: Response, headers: dict[str, str]
) -> web.StreamResponse:
    """Answer the request with `upstream`'s status, `headers` plus Claude's own body headers
    (`BODY_HEADERS`, its length) and its body, relayed as it arrives (module doc).

    Claude's answer is let go whatever ends this: read to its end, its connection is
    pooled again; else it is closed.
    """
    try:
        picked = upstream.pick((*BODY_HEADERS, "content-length"))
        length = picked.pop("content-length", None)
        # Untyped as Claude sent it, if it did (no `application/octet-stream` added).
        response = ForwardedResponse(
            status=upstream.status, reason=None, headers={**headers, **picked}
        )
        if length is not None and length.isdigit():  # llhttp checked it: digits only
            response.content_length = int(length)
        await response.prepare(ctx.request)
        ctx.sent_status = response.status
        transport = ctx.request.transport
        if transport is None:  # the client left as the head went out
            return response
        config = ctx.runtime.config.claude
        ctx.cut = await _relay(
            response,
            transport,
            upstream,
            config.idle_timeout_seconds,
            config.client_stall_timeout_seconds,
        )
        return response
    finally:
        upstream.close()


async def _relay(
    response: web.StreamResponse,
    transport: asyncio.Transport,
    upstream: Response,
    idle_timeout: float,
    stall_timeout: float,
) -> str:
    """Relay the body; "" unless Claude's fault cut it (`RequestContext.cut`)."""
    pipe = _Pipe(upstream)
    watch = SendWatch(transport, stall_timeout)
    upstream.start_push(pipe)
    try:
        while True:
            if pipe.pending:
                data = pipe.take()
                watch.arm()
                await response.write(data)  # waits while the client's transport is full
                watch.disarm()
            elif pipe.ended:
                break
            elif not await pipe.arrival(idle_timeout):
                transport.close()  # Claude fell silent: the client sees a short body
                return "upstream_timeout"
        if pipe.error is not None:
            transport.close()  # Claude broke off mid-body: so does the client's answer
            return "upstream_lost"
        watch.arm()
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left, or was cut as stalled: nothing more to send
    finally:
        watch.disarm()
    return ""
