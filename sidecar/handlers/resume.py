"""Resume requests on a Claude route: start a resumable stream, read one again, cancel one.

A request whose `Last-Event-ID` (header, or `?last_event_id=` on a GET) names a stream
is a resume, whatever else it carries: it never calls Claude and spends no tokens. The
events after the client's last one come from this process's live generation (then its
live tail, pushed as to the first client) or, when the stream is not produced here,
from the resume store (a finished stream, or one produced by another replica).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from aiohttp import web
from opentelemetry.trace import Span, SpanContext, TraceFlags

from sidecar import sse
from sidecar.call.stream import Resumable
from sidecar.errors import Rejection, reject
from sidecar.header_lists import RepeatedField, sole_value
from sidecar.methods import reads
from sidecar.pipeline import RequestContext
from sidecar.stream.adapter import ClientChannel
from sidecar.stream.hub import Generation, Subscriber
from sidecar.stream.resume import (
    BLANK,
    HEADER,
    QUERY,
    STATUS_HEADER,
    new_stream_id,
    owner_of,
    parse_cursor,
)
from sidecar.stream.store import (
    BeyondEnd,
    FellBehind,
    ResumeStore,
    StoreError,
    StreamInfo,
    StreamLost,
    framed_for,
)

__all__ = ["QUERY", "cancel", "cursor_of", "enabled_on", "prepare", "resume"]
# The final event of a stream whose producer died: (error type, message) → event bytes.
LostEvent = Callable[[str, str], bytes]
# What closes the parts a stream's events (kept, oldest first) left open, in the route's
# format (the `ui` route's `text-end`…), sent before a final event no producer wrote.
Closing = Callable[[list[bytes]], bytes]
_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
_CATCH_UP_TRIES = 20
_CATCH_UP_WAIT = 0.05  # seconds: up to 1 s for a store that lags its producer
_LIVENESS_POLL = 0.25  # seconds: then, while a producer that may have died looks alive


def enabled_on(ctx: RequestContext, *, default: bool) -> bool:
    """Resume on this route: off when `resume.enabled` is false, else the route's own
    `resume.enabled`, else `default` (on for the prompt route, opt-in elsewhere)."""
    config = ctx.runtime.config
    if not config.resume.enabled:
        return False
    route = config.routes[ctx.route.index].resume
    return default if route is None else route.enabled


def cursor_of(request: web.Request) -> str | None:
    """The resume cursor a request carries, if any: only a GET (or HEAD) or a POST resumes.

    An empty one (blank) is none, as the SSE rules read an empty last event id: a front
    end that always sends the header or `?last_event_id=` starts a stream with it empty.
    Either given twice with different values is a 400: which copy to resume from would
    be a guess.
    """
    if request.method not in ("GET", "HEAD", "POST"):
        return None
    try:
        value = (sole_value(request.headers, "Last-Event-ID") or "").strip(BLANK)
        if not value and reads(request.method):
            value = (sole_value(request.query, QUERY) or "").strip(BLANK)
    except RepeatedField as repeated:
        raise reject(
            "resume_malformed", f"{repeated.name} was sent more than once with different values"
        ) from None
    return value or None


async def prepare(ctx: RequestContext) -> Resumable | None:
    """A new stream's id and buffer; None when the store failed and `fail_open` lets it stream."""
    runtime = ctx.runtime
    config = runtime.config.resume
    stream_id = new_stream_id()
    owner = owner_of(ctx.scope())
    try:
        log_ = await runtime.resume.store.create(stream_id, owner, kind=ctx.route.handler)
    except StoreError as exc:
        runtime.telemetry.resume_store_error(config.on_store_error)
        runtime.resume.outage.failed(str(exc), ctx.request_id)
        if config.on_store_error == "fail_closed":
            raise reject(
                "resume_store_error", "resumable streams are unavailable",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        ctx.headers[STATUS_HEADER] = "unavailable"
        return None
    runtime.resume.outage.answered()
    return Resumable(stream_id, owner, log_, config.detach_grace_seconds)


def _gone(ctx: RequestContext, result: str) -> web.StreamResponse:
    """Unknown, expired or nothing left: a GET (or HEAD) is told to stop retrying (204), a
    POST gets a JSON 404. Someone else's stream gets exactly that answer too (same status,
    headers and body, no rejection counted), so no answer tells a prober that an id exists;
    only the operator's `sidecar.stream.resumes` counter tells it apart (`forbidden`)."""
    ctx.runtime.telemetry.resumed(result)
    if reads(ctx.request.method):
        return web.Response(status=204, headers=ctx.headers)
    raise reject("resume_expired", "the stream is unknown or has expired")


async def _lookup(ctx: RequestContext, stream_id: str) -> StreamInfo | None:
    try:
        return await ctx.runtime.resume.store.lookup(stream_id)
    except StoreError:
        ctx.runtime.telemetry.resume_store_error("fail_closed")
        raise reject(
            "resume_store_error", "the resume store is unavailable", headers={"Retry-After": "1"}
        ) from None


async def _stored(
    ctx: RequestContext, stream_id: str, owner: str
) -> StreamInfo | web.StreamResponse:
    """The store's record of the caller's stream from a route of this kind, else the answer
    for an unknown or foreign stream (or the refusal for one of another route's kind)."""
    info = await _lookup(ctx, stream_id)
    if info is None:
        return _gone(ctx, "expired")
    if info.owner != owner:
        return _gone(ctx, "forbidden")
    if not info.framed_for(ctx.route.handler):
        raise _other_route()
    return info


def _too_many_readers() -> Rejection:
    return reject(
        "resume_subscribers", "too many clients are reading this stream",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def _other_route() -> Rejection:
    return reject(
        "resume_malformed",
        "Last-Event-ID names a stream started on a route of another kind: resume it there",
    )


def _mine(live: tuple[Generation, Span] | None, owner: str, kind: str) -> Generation | None:
    """The generation live here, if `owner` started it on a route of `kind` (its events
    are in that route's format)."""
    if live is None or live[0].owner != owner:
        return None
    log_ = live[0].log
    return live[0] if log_ is not None and framed_for(log_.kind, kind) else None


def _beyond_end() -> Rejection:
    return reject("resume_malformed", "Last-Event-ID names an event the stream never sent")


async def resume(
    ctx: RequestContext,
    cursor: str,
    lost_event: LostEvent,
    protocol: Mapping[str, str] = _NO_HEADERS,
    closing: Closing | None = None,
) -> web.StreamResponse:
    """Answer a reconnect: the events after the cursor, then the live tail to the final event.

    `protocol`: the headers naming the stream's format (the `ui` route's marker), sent
    with the resumed stream only, never with an error or a 204. `closing`: for a format
    whose parts must be closed before its end (the `ui` route's), what closes the parts
    the stream left open, sent first when this reader ends the stream itself (its
    producer died, or this replica stops), as a live stream closes them at its end.

    A reconnect is a request like any other for the route's `requests_per_minute`: a
    storm of them is turned away (429) as a storm of calls would be.
    """
    stream_id, after = parse_cursor(cursor)
    runtime = ctx.runtime
    policy = ctx.route.policy
    ctx.headers.update(
        await runtime.quotas.count_request(
            policy.quotas, policy.quota_scope, ctx.identity, ctx.client_ip
        )
    )
    owner = owner_of(ctx.scope())
    if ctx.request.method == "HEAD":
        return await _head(ctx, stream_id, after, owner, protocol)
    live = runtime.resume.hub.get(stream_id)
    if live is not None and _mine(live, owner, ctx.route.handler) is not None:
        generation, origin = live
        log_ = generation.log
        assert log_ is not None
        try:
            backlog = log_.since(after)
        except BeyondEnd:
            raise _beyond_end() from None
        if backlog is None:
            return _gone(ctx, "expired")
        if generation.final and not backlog:
            return _gone(ctx, "expired")
        if len(generation.subscribers) >= runtime.config.resume.max_subscribers:
            raise _too_many_readers()
        ctx.span.add_link(origin.get_span_context())
        channel = await _start(ctx, stream_id, protocol)
        # The backlog is taken (again) only now, after the await that prepared the response,
        # and the reader attached in the same step: an event published while the response
        # was prepared is in the backlog, every later one reaches the reader, none twice.
        backlog = log_.since(after)
        stall = runtime.config.claude.client_stall_timeout_seconds
        if backlog is None:
            # Events the client had not read left the log's bound meanwhile: the read ends
            # with no final event, as a reader left behind does; its next resume from its
            # last event finds them gone (204 / 404), never a stream with a gap.
            runtime.telemetry.resumed("expired")
            await channel.end(stall)
            return channel.response
        subscriber = Subscriber(channel, b"".join(backlog))
        # Cancelled for its owner meanwhile (while others follow it: `Generation.cancel`),
        # its log was let go, ending with the cancel's final event: the backlog is all.
        attached = generation.log is log_
        if attached:
            generation.attach(subscriber)
        else:
            subscriber.ended()
        try:
            with contextlib.suppress(ConnectionResetError):
                subscriber.begin(b"")  # the backlog, with the headers
                await subscriber.done
        finally:
            if attached:
                generation.detach(subscriber)
            # Counted as it ended: a reader the hub cut for falling behind the log's bound
            # lost events it had not read (its next resume finds them gone), as an expired
            # resume does; a store reader that fell behind is counted the same (`_replay`).
            result = "expired" if subscriber.behind else "resumed"
            runtime.telemetry.resumed(result, len(backlog))
        await channel.end(stall)
        return channel.response
    # Someone else's stream live here is looked up in the store as an unknown id is: the
    # same work, so neither the answer nor its timing tells that it exists. The caller's
    # own stream from a route of another kind is refused there (its events are in that
    # route's format, not this one's).
    return await _from_store(ctx, stream_id, after, owner, lost_event, protocol, closing)


async def _head(
    ctx: RequestContext, stream_id: str, after: int, owner: str, protocol: Mapping[str, str]
) -> web.StreamResponse:
    """What the GET would answer, without its events: 200 with the stream's headers when
    there are events to resume, else its 204 or error; nothing is read or attached."""
    live = ctx.runtime.resume.hub.get(stream_id)
    generation = _mine(live, owner, ctx.route.handler)
    if generation is not None and generation.log is not None:
        try:
            backlog = generation.log.since(after)
        except BeyondEnd:
            raise _beyond_end() from None
        if backlog is None or (generation.final and not backlog):
            return _gone(ctx, "expired")
    else:  # as the GET does: the store answers for a stream not live here (or not ours)
        info = await _stored(ctx, stream_id, owner)
        if not isinstance(info, StreamInfo):
            return info
        # As `_from_store` decides once caught up (a HEAD does not wait for a store that
        # lags its producer: a stream still produced is taken to have the event).
        if after > info.last and info.final and not info.lost:
            raise _beyond_end()
        if min(after, info.last) < info.first - 1 or (info.final and after == info.last):
            return _gone(ctx, "expired")
    headers = {**ctx.headers, HEADER: stream_id, **sse.HEADERS, **protocol}
    return web.Response(status=200, headers=headers)


async def _from_store(
    ctx: RequestContext,
    stream_id: str,
    after: int,
    owner: str,
    lost_event: LostEvent,
    protocol: Mapping[str, str],
    closing: Closing | None,
) -> web.StreamResponse:
    runtime = ctx.runtime
    info = await _stored(ctx, stream_id, owner)
    if not isinstance(info, StreamInfo):
        return info
    # Another replica writes its events in batches a few ms apart: a client that got an
    # event from it just now may be ahead of the store for a moment (up to 1 s here). A
    # producer still alive after that may yet have died with the client's events
    # unwritten: its liveness lapses within the store's `liveness_seconds`, and only one
    # alive after that makes the cursor name an event the stream never sent.
    loop = asyncio.get_running_loop()
    caught_up = loop.time() + _CATCH_UP_TRIES * _CATCH_UP_WAIT
    decided = caught_up + runtime.resume.store.liveness_seconds
    while after > info.last and not info.final:
        now = loop.time()
        if now >= caught_up and (not info.producing or now >= decided):
            break
        await asyncio.sleep(_CATCH_UP_WAIT if now < caught_up else _LIVENESS_POLL)
        info = await _lookup(ctx, stream_id) or info
    # Still ahead of the store: finished, or still produced, the stream never sent that
    # event. Else its producer died having served its own client events it had not
    # written: the store is read from its end, the events the client has are skipped,
    # and the stream ends with `stream_lost` after the client's last. A client ahead of
    # the `stream_lost` another reader kept (its last event was before this client's)
    # gets that end, as one inside the events never written does (`read`).
    start = after
    if after > info.last and info.lost:
        after = start = info.last - 1
    elif after > info.last:
        if info.final or info.producing:
            raise _beyond_end()
        start = info.last
    if start < info.first - 1 or (info.final and after == info.last):
        return _gone(ctx, "expired")
    resume_ = runtime.resume
    limit = runtime.config.resume.max_subscribers
    readers = resume_.store_readers
    if readers[stream_id] >= limit:
        raise _too_many_readers()
    reader = new_stream_id()  # this reader's token among the stream's readers everywhere
    try:
        joined = await resume_.store.join(stream_id, reader, limit)
    except StoreError:
        runtime.telemetry.resume_store_error("fail_closed")
        raise reject(
            "resume_store_error", "the resume store is unavailable", headers={"Retry-After": "1"}
        ) from None
    if not joined:
        raise _too_many_readers()
    readers[stream_id] += 1
    keeping = asyncio.create_task(resume_.store.keep(stream_id, reader))
    try:
        return await _replay(ctx, stream_id, after, start, info, (lost_event, closing), protocol)
    finally:
        keeping.cancel()
        readers[stream_id] -= 1
        if not readers[stream_id]:
            del readers[stream_id]
        await resume_.store.leave(stream_id, reader)


async def _replay(
    ctx: RequestContext,
    stream_id: str,
    after: int,
    start: int,
    info: StreamInfo,
    ending: tuple[LostEvent, Closing | None],
    protocol: Mapping[str, str],
) -> web.StreamResponse:
    """The events after `after` from the store (read from `start`), then its final event;
    `: ping` when the stream has been quiet for `claude.heartbeat_seconds`, as a live
    stream has. Shutdown (`Resume.stop_readers`) ends it with a `shutting_down` event.
    Either end this reader writes itself (`stream_lost`, `shutting_down`) closes first
    the parts the stream left open (`ending`'s closing, if the format has parts)."""
    lost_event, closing = ending
    runtime = ctx.runtime
    store = runtime.resume.store
    heartbeat = runtime.config.claude.heartbeat_seconds
    stall = runtime.config.claude.client_stall_timeout_seconds
    origin = _span_context(info.origin)
    if origin is not None:
        ctx.span.add_link(origin)
    channel = await _start(ctx, stream_id, protocol)
    replayed = 0
    skip = after - start  # events the client has that the store had not when it asked
    result = "resumed"
    # Known to shutdown from here (no wait before the `try`, so its stop lands inside);
    # a shutdown that stopped the readers before this one started stops it at once.
    resume_, task = runtime.resume, asyncio.current_task()
    assert task is not None
    resume_.replays.add(task)
    stopping = resume_.readers_stopped
    try:
        if not stopping:
            # Quiet for `heartbeat` since this reader last sent: an empty batch, a ping.
            async for batch in store.read(stream_id, start, heartbeat):
                if not batch:
                    await _send(channel, sse.PING, stall)
                    continue
                if skip:
                    if len(batch) <= skip:
                        skip -= len(batch)
                        continue
                    batch, skip = batch[skip:], 0
                replayed += len(batch)
                await _send(channel, b"".join(batch), stall)
    except StreamLost:
        result = "lost"
        last = after + replayed
        event = await _closed(store, stream_id, last, closing) + lost_event(
            "stream_lost", "the stream's producer stopped; it cannot be resumed"
        )
        # Kept as the stream's final event, so later reconnects end at once instead of waiting.
        event = b"id: %b:%d\n%b" % (stream_id.encode(), last + 1, event)
        await store.seal(stream_id, last + 1, event)
        with contextlib.suppress(ConnectionResetError):
            await _send(channel, event, stall)
    except asyncio.CancelledError:
        if not resume_.stopped(task):
            runtime.telemetry.resumed(result, replayed)
            raise
        stopping = True
    except ConnectionResetError:
        runtime.telemetry.resumed(result, replayed)
        raise
    except FellBehind:
        # This client read slower than the stream was produced, and events it had not
        # read left the buffer (`resume.max_buffer_bytes`): its read ends with no final
        # event, as a live stream's reader left that far behind is cut. Its resume from
        # its last event finds them gone (204 / 404), never a stream with a gap: counted
        # as expired, not as a resume that reached the stream's end.
        result = "expired"
    except StoreError:
        # The store failed, not the stream (it goes on where it is produced, and its events
        # are sent to the store again once it answers): this read ends as a lost connection
        # does, with no final event, so the client resumes from its last event instead of
        # taking the stream for lost.
        runtime.telemetry.resume_store_error("fail_closed")
    finally:
        resume_.replays.discard(task)
    if stopping:
        # The sidecar is stopping: this reader ends, the stream goes on where it is
        # produced. No id on the event, so the client resumes from its last one elsewhere.
        event = await _closed(store, stream_id, after + replayed, closing) + lost_event(
            "shutting_down",
            "the sidecar is shutting down; resume the stream from another replica",
        )
        with contextlib.suppress(ConnectionResetError):
            await _send(channel, event, stall)
    runtime.telemetry.resumed(result, replayed)
    await channel.end(stall)
    return channel.response


async def _closed(store: ResumeStore, stream_id: str, last: int, closing: Closing | None) -> bytes:
    """What closes the parts the stream's events up to `last` left open (one store read,
    at the read's end); nothing when the format has no parts, or the store fails too
    (the end still goes out)."""
    if closing is None:
        return b""
    try:
        return closing(await store.kept(stream_id, last))
    except StoreError:
        return b""


async def _send(channel: ClientChannel, data: bytes, stall: float) -> None:
    """Write `data` to a store reader's client, waiting while its socket is full; one that
    takes nothing for `stall` seconds (`claude.client_stall_timeout_seconds`) is cut, as a
    live stream's stalled client is: ConnectionResetError, as for a client that left."""
    if channel.closing():
        raise ConnectionResetError("the client is gone")
    channel.write(data)
    if not await channel.drain_within(stall):
        raise ConnectionResetError("the client took nothing for the stall timeout")


def _span_context(origin: str) -> SpanContext | None:
    """The producing stream's span as stored (`<trace id>-<span id>`), if any."""
    trace_id, _, span_id = origin.partition("-")
    try:
        context = SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1)
        )
    except ValueError:
        return None
    return context if context.is_valid else None


async def _start(ctx: RequestContext, stream_id: str, protocol: Mapping[str, str]) -> ClientChannel:
    ctx.headers[HEADER] = stream_id
    response = web.StreamResponse(status=200, headers={**ctx.headers, **sse.HEADERS, **protocol})
    await response.prepare(ctx.request)
    ctx.sent_status = response.status
    return ClientChannel(ctx.request, response)


async def cancel(ctx: RequestContext, stream_id: str) -> web.Response:
    """`DELETE <route>/<stream id>`: stop the generation now (a Stop button)."""
    owner = owner_of(ctx.scope())
    resume_ = ctx.runtime.resume
    kind = ctx.route.handler
    generation = _mine(resume_.hub.get(stream_id), owner, kind)
    if generation is not None:
        if generation.cancel():
            return web.Response(status=204, headers=ctx.headers)
        # Over already (its final event sent), or cancelled: nothing live to stop.
        raise reject("resume_expired", "no live stream with this id")
    # Maybe produced by another replica. Someone else's stream live here is looked up as
    # an unknown id is (the store names its owner): neither answer nor timing tells it exists.
    if resume_.shared:
        try:
            info = await resume_.store.lookup(stream_id)
            mine = (
                info is not None
                and info.owner == owner
                and info.framed_for(kind)
                and not info.final
            )
            if mine and await resume_.store.request_cancel(stream_id):
                return web.Response(status=204, headers=ctx.headers)
        except StoreError:
            ctx.runtime.telemetry.resume_store_error("fail_closed")
            raise reject(
                "resume_store_error", "the resume store is unavailable",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
    # Finished, unknown, someone else's or another route's: nothing to stop here.
    raise reject("resume_expired", "no live stream with this id")
