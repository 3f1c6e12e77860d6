"""Replay: a recorded answer to one client, through the same stream core as a live stream.

Claude's recorded chunks are fed to a `StreamCore` with the route's translator, so the
Anthropic route sends the exact bytes Claude sent (usage events included) and the prompt
route its own events, then whatever the core decides at the end (the prompt route's
`done`, or an error event when the recorded stream had failed). `paced` waits the
recorded gap before each chunk, capped at `PACE_CAP`, so a front end still renders a
typewriter; `instant` sends them back to back. A recording still being produced (a
coalesced caller) is followed as it grows, with a heartbeat when its client got nothing
for `claude.heartbeat_seconds` (timed by the call's watchdog looks: no clock read per
chunk), whatever Claude sent meanwhile: its translation may send nothing for a chunk.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from sidecar import sse
from sidecar.cache.entry import Entry
from sidecar.cache.recording import Cursor, Recording
from sidecar.call.waiting import taken
from sidecar.pipeline import RequestContext
from sidecar.record import StreamRecord
from sidecar.sse import PING, EventTooLarge
from sidecar.stream.adapter import HIGH_WATER, ClientChannel
from sidecar.stream.core import StreamCore, Translator

PACE_CAP: Final = 0.005  # seconds: the longest recorded gap a paced replay keeps


def recording_of(entry: Entry) -> Recording:
    """A stored entry as an ended, completed recording (one replay path for both)."""
    recording = Recording(entry.stream)
    recording.chunks = entry.chunks
    recording.gaps = entry.gaps
    recording.count = len(entry.chunks)
    recording.size = recording.held = entry.size
    recording.completed = recording.ended = True
    recording.entry = entry
    return recording


async def replay_stream(
    ctx: RequestContext,
    source: Recording,
    cursor: Cursor,
    record: StreamRecord,
    translator: Translator,
    headers: dict[str, str],
    *,
    paced: bool,
) -> web.StreamResponse:
    """Send `source` to the client as an SSE stream, read through `cursor` (from the
    first chunk); returns when it ended or the client left."""
    early = taken(ctx)  # a head sent while it waited for the call's (`sidecar.call.waiting`)
    if early is None:
        response = web.StreamResponse(
            status=200, headers={**headers, **sse.HEADERS, **translator.headers}
        )
        await response.prepare(ctx.request)
        ctx.sent_status = response.status
        channel = ClientChannel(ctx.request, response)
    else:
        channel = early
    core = StreamCore(record, translator)
    claude = ctx.runtime.config.claude
    stall = claude.client_stall_timeout_seconds
    beat = claude.heartbeat_seconds
    # The client's quiet time, as the relay's watchdog keeps a live stream's: the sends
    # counted, looked at on each of the call's ticks.
    ticks = source.ticks
    sends = seen = 0
    quiet_from = last_ping = asyncio.get_running_loop().time()
    first = True
    cut: EventTooLarge | None = None
    try:
        while True:
            while cursor.at < source.count:
                if paced and cursor.at:
                    await asyncio.sleep(min(max(source.gap(cursor.at), 0.0), PACE_CAP))
                out = core.feed(source.read(cursor))
                if not out:
                    continue
                sends += 1
                if first:
                    channel.start(out)
                    first = False
                elif channel.closing():
                    record.outcome = "client_cancelled"
                    return channel.response
                else:
                    channel.write(out)
                    if channel.buffered() > HIGH_WATER and not await channel.drain_within(stall):
                        record.outcome = "client_stalled"
                        return channel.response
            if source.ended:
                break
            await source.wait(cursor.at)
            if source.ticks == ticks:
                continue  # a chunk (or the end), not a look
            ticks = source.ticks
            if sends != seen:  # sent since the last look it saw: after the look before this
                seen = sends
                quiet_from = source.ticked_before
            now = source.ticked
            if now - max(quiet_from, last_ping) < beat or core.mid_event or channel.closing():
                continue
            last_ping = now
            if first:
                channel.start(PING)
                first = False
            else:
                channel.write(PING)
    except EventTooLarge as exc:  # the call followed ended on it too: the same error event
        cut = exc
    # A recording that failed ends as Claude's cut stream would; one the sidecar cut (its
    # shutdown, an idle timeout, the connection to Claude lost) ends as the call it recorded.
    final = core.end(cut if cut is not None else source.cut)
    channel.finish(final)  # with the last chunk (and the headers, if nothing went yet)
    await channel.end(stall)
    return channel.response
