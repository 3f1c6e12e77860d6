"""The streaming hot path: write pre-encoded events one chunk each, paced, with mid-stream faults."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from sidecar.fake_claude.knobs import Knobs
from sidecar.fake_claude.reply import (
    MIDSTREAM_ERROR,
    PING,
    PLAIN,
    STAMPED,
    Event,
    fault_position,
    stamped,
)
from sidecar.fake_claude.state import FakeClaudeState, StreamRecord

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_DISCONNECT_POLL_SECONDS = 0.25
_MIDSTREAM_FAULTS = frozenset({"midstream_error", "drop", "stall_midstream"})  # at `after` deltas


async def until_client_leaves(request: web.Request, state: FakeClaudeState) -> None:
    """Wait for the client to disconnect (then raise ConnectionResetError) or for a
    `POST /_fake/release` (then return: the reply goes on as if it had not stalled).

    running_fake_claude cancels the handler the moment the peer goes (handler_cancellation);
    under other runners (e.g. pytest-aiohttp's) only this poll notices a silent stream's end.
    A release lets a benchmark end the streams it held open through a proxy that never
    notices its client left (it would otherwise keep them, and their memory, for good).
    """
    releases = state.releases
    while state.releases == releases:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(_DISCONNECT_POLL_SECONDS)


def abort_connection(request: web.Request) -> None:
    """Cut the TCP connection with no HTTP framing: the client sees a truncated body."""
    if request.transport is not None:
        request.transport.abort()


async def stream_reply(
    request: web.Request,
    state: FakeClaudeState,
    message_id: str,
    events: list[Event],
    knobs: Knobs,
) -> web.StreamResponse:
    """Answer 200 text/event-stream and play `events`, counting how the stream ended."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    record = state.stream_opened(message_id)
    outcome = "cancelled"  # unless _play returns: the client left (or the server is stopping)
    try:
        await response.prepare(request)  # sends the headers at once
        outcome = await _play(request, state, response, events, knobs, record)
    except ConnectionResetError:
        pass  # a write found the client gone; aiohttp has nothing left to send
    finally:
        state.stream_closed(record, outcome)
    return response


async def _play(
    request: web.Request,
    state: FakeClaudeState,
    response: web.StreamResponse,
    events: list[Event],
    knobs: Knobs,
    record: StreamRecord,
) -> str:
    fault = knobs.fault
    if fault == "stall_before_start":
        await until_client_leaves(request, state)
    write, sent = response.write, record.sent
    name, data, _ = events[0]  # message_start goes before the time-to-first-token pause
    await write(data)
    sent(name)
    if fault == "stall":
        await _stall(request, state, response, knobs, record)
    if knobs.ttft_ms:
        await asyncio.sleep(knobs.ttft_ms / 1000)
    fault_at = fault_position(events, knobs.after) if fault in _MIDSTREAM_FAULTS else -1
    interval = 1 / knobs.tps if knobs.tps > 0 else 0.0
    loop = asyncio.get_running_loop()
    due = 0.0  # loop time before which nothing may follow the last delta (paced by deadline)
    for position in range(1, len(events)):
        if due:
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
        if position == fault_at:
            if fault != "stall_midstream":
                return await _fault_midstream(request, response, record, fault == "drop")
            await _stall(request, state, response, knobs, record)  # a release: it goes on
            due = 0.0
        name, data, kind = events[position]
        if kind == STAMPED:
            data = stamped(data, time.monotonic_ns())
        await write(data)
        sent(name)
        if interval and kind != PLAIN:
            now = loop.time()
            # On schedule: the next slot (sleep overshoot does not accumulate). Behind: no burst.
            due = due + interval if now - due < interval else now + interval
    await response.write_eof()
    return "completed"


async def _stall(
    request: web.Request,
    state: FakeClaudeState,
    response: web.StreamResponse,
    knobs: Knobs,
    record: StreamRecord,
) -> None:
    """`until_client_leaves`, sending Claude's `event: ping` every `ping_ms` meanwhile."""
    if not knobs.ping_ms:
        await until_client_leaves(request, state)
        return
    held = asyncio.ensure_future(until_client_leaves(request, state))
    try:
        while True:
            done, _ = await asyncio.wait((held,), timeout=knobs.ping_ms / 1000)
            if done:
                held.result()  # raises if the client left
                return
            await response.write(PING)
            record.sent("ping")
    finally:
        held.cancel()


async def _fault_midstream(
    request: web.Request, response: web.StreamResponse, record: StreamRecord, drop: bool
) -> str:
    if drop:
        abort_connection(request)
        return "dropped"
    await response.write(MIDSTREAM_ERROR)
    record.sent("error")
    await response.write_eof()  # the API ends the stream after an error event
    return "errored"
