"""A coalesced Claude call: it belongs to the callers sharing it, not to its first caller.

A call the response cache records (a miss, followed by identical requests while it runs)
runs in a task of its own from its quota lease to its end: admission, the request to
Claude and the reading of the answer. Each caller of the group, the first one included,
is a member of its recording (`Recording.follow`); a member leaving never stops the call
while another remains, whatever the call was doing (queued, waiting for Claude's first
byte, streaming). When the last one leaves, it ends as a call whose client left does:
cancelled before Claude answered, stopped (`client_cancelled`) while streaming; an
answer Claude had already ended completes, and is stored.

A stream that is not resumable is read from Claude at Claude's pace into the recording,
and every member, the first caller too, replays the recording at its own pace (the
cache's replay): a slow reader holds back nobody. (Once that stream is past what the
cache stores, the recording keeps only what its slowest reader has yet to read, and no
new caller joins it: `sidecar.cache.recording`.) A resumable one is the hub's
generation (`sidecar.stream.hub`): the first caller attaches to it as a resume does,
and its recording counts as a reader that keeps up, so a slow client never pauses
Claude for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from sidecar.cache.recording import Recording
from sidecar.cache.replay import replay_stream
from sidecar.call.stream import start_response
from sidecar.pipeline import RequestContext
from sidecar.record import Outcome, StreamRecord
from sidecar.relay import LiveStream
from sidecar.stream.core import Translator
from sidecar.stream.hub import Generation, Subscriber
from sidecar.stream.resume import HEADER


@dataclass(slots=True)
class Replayed:
    """Claude answered a stream that is not resumable: the first caller replays the
    recording with these response headers."""

    headers: dict[str, str]


@dataclass(slots=True)
class Attached:
    """Claude answered a resumable stream: the first caller attaches to its generation."""

    generation: Generation
    headers: dict[str, str]


# What the call gives its first caller: a whole answer (an error, a message) or a stream.
Answer = web.StreamResponse | Replayed | Attached


class Group:
    """The call's side of a coalescing group: its answer, its producer and its first caller."""

    __slots__ = ("head", "left", "live", "sent", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # The first caller's answer, once Claude's head is in (or the call's error).
        self.head: asyncio.Future[Answer] = loop.create_future()
        self.head.add_done_callback(_retrieve)  # raised where awaited; its caller may be gone
        # How the first caller left (its call records it should the call complete).
        self.left: Outcome | None = None
        self.live: LiveStream | None = None  # the producer of a stream read into the recording
        self.sent = False  # Claude's head came: the call is past cancelling
        self.task: asyncio.Task[None] | None = None

    def answered(self, answer: Answer) -> None:
        if not self.head.done():
            self.head.set_result(answer)

    def idle(self) -> None:
        """The last member left (the recording's `on_idle`): the call ends as a call whose
        client left (`LiveStream.stop` changes nothing once Claude's body ended)."""
        live = self.live
        if live is not None:
            live.stop("client_cancelled", "stream_abandoned", "every caller left the stream")
        elif not self.sent and self.task is not None:
            self.task.cancel()


def _retrieve(head: asyncio.Future[Answer]) -> None:
    if not head.cancelled():
        head.exception()


async def lead(
    ctx: RequestContext,
    recording: Recording,
    record: StreamRecord,
    translator: Translator,
    call: Callable[[Group], Awaitable[web.StreamResponse | None]],
) -> web.StreamResponse:
    """Run `call` as the group's and answer its first caller as one member of it."""
    runtime = ctx.runtime
    loop = asyncio.get_running_loop()
    group = Group(loop)
    cursor = recording.follow()
    assert cursor is not None  # (nothing recorded yet)
    recording.on_idle = group.idle
    runtime.lifecycle.enter()  # the runtime stays open while the call runs
    group.task = runtime.resume.hub.spawn(_run(ctx, recording, group, call), loop)
    try:
        try:
            answer = await asyncio.shield(group.head)
        finally:
            # The SSE head and pings its wait got, from the call once it held its quota
            # lease (`waiting`, with the lease's headers and a resumable stream's id).
            early = ctx.early
            if early is not None:
                early.settle()
        if not isinstance(answer, Replayed):  # it reads no recorded chunk: none waits for it
            recording.done(cursor)
        if isinstance(answer, web.StreamResponse):
            return answer
        if isinstance(answer, Replayed):
            mine = StreamRecord(request_id=record.request_id, route=record.route, started=0.0)
            response = await replay_stream(
                ctx, recording, cursor, mine, translator, answer.headers, paced=False
            )
            if mine.outcome in ("client_cancelled", "client_stalled"):
                group.left = mine.outcome
            return response
        return await _attach(ctx, answer, translator)
    except (asyncio.CancelledError, ConnectionResetError):
        if group.left is None:
            group.left = "client_cancelled"
        head = group.head
        if head.done() and not head.cancelled() and head.exception() is None:
            answer = head.result()
            if isinstance(answer, Attached):  # (again, if it had attached: no change)
                answer.generation.unattended()
        raise
    finally:
        recording.unfollow(cursor)


async def _attach(
    ctx: RequestContext, answer: Attached, translator: Translator
) -> web.StreamResponse:
    """The first caller reads the resumable generation from its first event, as a resume."""
    generation = answer.generation
    log = generation.log
    assert log is not None
    assert generation.stream_id is not None
    channel = await start_response(
        ctx, {**answer.headers, HEADER: generation.stream_id}, translator
    )
    # The backlog is taken after the await, and the reader attached in the same step.
    backlog = log.since(0)
    stall = ctx.runtime.config.claude.client_stall_timeout_seconds
    if backlog is None:  # fell out of the log's bound meanwhile: as a reader left behind
        generation.unattended()
        await channel.end(stall)
        return channel.response
    # Its first reader, as a new stream's: the translator's opening leaves with the head.
    subscriber = Subscriber(channel, translator.opening(log.id_prefix) + b"".join(backlog))
    generation.attach(subscriber)
    try:
        subscriber.begin(b"")
        await subscriber.done
    finally:
        generation.detach(subscriber)
    await channel.end(stall)
    return channel.response


async def _run(
    ctx: RequestContext,
    recording: Recording,
    group: Group,
    call: Callable[[Group], Awaitable[web.StreamResponse | None]],
) -> None:
    try:
        answer = await call(group)
    except asyncio.CancelledError:
        group.head.cancel()
        raise
    except Exception as exc:  # the first caller's error, raised where it waits
        if not group.head.done():
            group.head.set_exception(exc)
    else:
        if answer is not None:
            group.answered(answer)
    finally:
        if recording.on_idle == group.idle:
            recording.on_idle = None
        group.live = None
        ctx.runtime.lifecycle.leave()
