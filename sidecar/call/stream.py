"""Answering a Claude stream: relayed within the request, or handed to a generation.

A stream that is not resumable runs in its request's task: the client leaving cancels
it. A resumable one is handed to a task of its own once Claude answered 200, so the
generation outlives the request (a client that leaves may come back); the request
reads it as its first subscriber, and the generation's task settles and records it.

A call the response cache coalesces belongs to its group (`sidecar.call.group`): its
stream is read at Claude's pace into its recording, by a generation nobody is written to
(`recorded_stream`), or by a resumable one its first caller attaches to
(`hand_off_recorded`). The call is settled, at what it used, once it really ended, on
the lease of the request that made it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry.trace import Span

from sidecar import sse
from sidecar.call.waiting import taken
from sidecar.http_client import Response
from sidecar.pipeline import RequestContext
from sidecar.quotas import QuotaLease
from sidecar.record import Outcome, StreamRecord
from sidecar.relay import LiveStream, open_stream
from sidecar.stream.adapter import ClientChannel
from sidecar.stream.core import StreamCore, Translator
from sidecar.stream.hub import Generation, Subscriber
from sidecar.stream.resume import HEADER
from sidecar.stream.store import StreamLog
from sidecar.stream.tap import RECORDED, CallTap, TappedCore, make_core
from sidecar.usage import usage_so_far


def charged_tokens(
    record: StreamRecord, input_estimate: int, unanswered: bool = False
) -> tuple[int, int]:
    """(input, output) tokens to charge for a call, also when it ended early
    (`usage_so_far`: each content delta relayed is at least one output token).

    Input Claude is known or likely to have billed counts even without its usage at its
    estimate: accepted (status 200) but `message_start` or the message never read, or
    `unanswered` (the request was written and no answer came: the client left while
    Claude worked on it, the connection broke, the head came too late). An error status
    is not billed.
    """
    billed = record.upstream_status == 200 or unanswered
    return usage_so_far(record, input_estimate if billed else 0)


@dataclass(slots=True)
class Resumable:
    """A resumable stream's identity and buffer, prepared before Claude is called."""

    stream_id: str
    owner: str
    log: StreamLog
    grace: float


@dataclass(slots=True, eq=False)
class HeldCall:
    """What a call holds until it ends: its span, quota lease and stream slot."""

    ctx: RequestContext
    input_estimate: int  # tokens, for charging a stream cut short
    record: StreamRecord
    span: Span
    lease: QuotaLease | None = None
    admitted: bool = False
    tap: CallTap | None = None  # records the answer (the response cache)
    unanswered: bool = False  # ended with its request written to Claude and not answered
    # Its client left for good (or cancelled) while followers read on: the outcome it
    # records if the call then completes for them.
    left: Outcome | None = None

    async def close(self) -> None:
        """Release the slot, record the stream once and settle the tokens it used."""
        runtime = self.ctx.runtime
        record = self.record
        if self.tap is not None:
            self.tap.finish(record)  # stored when it completed, whoever read it
        if self.left is not None and record.outcome == "completed":
            record.outcome = self.left
            if self.left == "client_stalled":  # cut by the sidecar: a failure, as when alone
                record.error_type = "client_stalled"
        if self.admitted:
            runtime.admission.release()
        record.ended = time.perf_counter()
        if record.output_deltas > record.output_tokens:
            # Cut short before Claude's final usage (client gone, an error mid-stream): each
            # content delta relayed is at least one output token, on the span, the line,
            # the cost and the quota alike (`charged_tokens`), not `message_start`'s 1.
            record.output_tokens = record.output_deltas
        runtime.telemetry.finish_stream(record, self.span)
        if self.lease is not None:
            await self.lease.settle(*charged_tokens(record, self.input_estimate, self.unanswered))


def _live_stream(
    ctx: RequestContext, upstream: Response, core: StreamCore, generation: Generation
) -> LiveStream:
    return LiveStream(upstream, core, generation, **_timings(ctx))


def _timings(ctx: RequestContext) -> dict[str, float]:
    """A live stream's heartbeat and timeouts, as the config sets them."""
    config = ctx.runtime.config.claude
    return {
        "heartbeat": config.heartbeat_seconds,
        "idle_timeout": config.idle_timeout_seconds,
        "stall_timeout": config.client_stall_timeout_seconds,
    }


async def start_response(
    ctx: RequestContext, headers: dict[str, str], translator: Translator
) -> ClientChannel:
    """The client's SSE response with `headers` (a dict of the caller's own, completed
    here with the SSE ones and the translator's format marker); its head leaves with the
    relay's first bytes. A client that is gone ends the call here, as a head sent now
    would have. A head already sent while the call waited (`sidecar.call.waiting`) is
    the response: `headers` are not sent then."""
    channel = taken(ctx)
    if channel is not None:
        return channel
    headers.update(sse.HEADERS)
    headers.update(translator.headers)
    channel = await ClientChannel.open(ctx.request, headers)
    ctx.sent_status = 200  # the head leaves with the first bytes
    return channel


async def open_relay(
    ctx: RequestContext,
    upstream: Response,
    record: StreamRecord,
    translator: Translator,
    headers: dict[str, str],
    tap: CallTap | None = None,
) -> tuple[LiveStream, ClientChannel]:
    """Start the SSE response and the stream that feeds it; the caller runs it to its end
    (`LiveStream.run`, which the client leaving cancels), then ends the channel.

    A coroutine that returns at once: the headers are freed when the response starts,
    and an open stream holds the caller's frame and the relay's, nothing in between.
    """
    channel = await start_response(ctx, headers, translator)
    live = open_stream(upstream, channel, record, translator, tap, **_timings(ctx))
    return live, channel


async def hand_off(
    held: HeldCall,
    upstream: Response,
    translator: Translator,
    headers: dict[str, str],
    resumable: Resumable,
) -> tuple[Generation, Subscriber]:
    """Start a resumable generation in its own task, and the response of its first subscriber.

    The caller reads it (`subscriber.done`, then detaches and ends the channel). A
    coroutine that returns once the response started: an open stream keeps neither
    this frame nor the headers.
    """
    ctx, record = held.ctx, held.record
    runtime = ctx.runtime
    generation, live = _generation(held, upstream, translator, resumable)
    try:  # the stream's id goes out with a stream only, never with an error
        channel = await start_response(ctx, {**headers, HEADER: resumable.stream_id}, translator)
    except BaseException:
        upstream.close()
        record.outcome = "client_cancelled"
        runtime.resume.hub.remove(generation)
        runtime.streams.discard(live)
        runtime.lifecycle.leave()
        resumable.log.finish()  # nothing to resume: the client never got the stream's id
        resumable.log.close()
        await held.close()
        raise
    # The translator's opening (the prompt route's `id: <stream id>:0`) leaves with the head.
    subscriber = Subscriber(channel, translator.opening(resumable.log.id_prefix))
    generation.attach(subscriber)
    _produce_in_task(held, live, generation, resumable.log, upstream)
    return generation, subscriber


def recorded_stream(held: HeldCall, upstream: Response) -> LiveStream:
    """The producer of a coalesced call that is not resumable: Claude's answer read at
    Claude's pace into the call's recording (its tap), which every caller reads as a
    replay; no client is written to, so none pauses Claude (`sidecar.call.group`)."""
    tap = held.tap
    assert tap is not None
    record = held.record
    generation = Generation(record)
    generation.kept_by(tap)  # (its heartbeats reach the readers)
    return _live_stream(held.ctx, upstream, TappedCore(record, RECORDED, tap), generation)


def hand_off_recorded(
    held: HeldCall, upstream: Response, translator: Translator, resumable: Resumable
) -> Generation:
    """Start a coalesced resumable generation in its own task, with no reader yet: its first
    caller attaches to it if still there (`sidecar.call.group`), as a resume does; its
    recording keeps it read at Claude's pace (`Generation._held_back`)."""
    generation, live = _generation(held, upstream, translator, resumable)
    _produce_in_task(held, live, generation, resumable.log, upstream)
    return generation


def _generation(
    held: HeldCall, upstream: Response, translator: Translator, resumable: Resumable
) -> tuple[Generation, LiveStream]:
    """A resumable generation and its relay, known to the hub and to shutdown, its
    runtime held open until its task ends (`_produce`)."""
    ctx, record = held.ctx, held.record
    runtime = ctx.runtime
    record.stream_id = resumable.stream_id
    generation = Generation(
        record,
        stream_id=resumable.stream_id,
        owner=resumable.owner,
        log=resumable.log,
        grace=resumable.grace,
    )
    generation.kept_by(held.tap)
    live = _live_stream(ctx, upstream, make_core(record, translator, held.tap), generation)
    resumable.log.on_cancel = generation.cancel  # a cancel asked on another replica
    context = held.span.get_span_context()
    if context.is_valid:  # resumes on any replica link to this stream's span
        resumable.log.set_origin(f"{context.trace_id:032x}-{context.span_id:016x}")
    runtime.resume.hub.add(generation, held.span)
    runtime.streams.add(live)  # shutdown reaches it from now on (`run` keeps it there)
    runtime.lifecycle.enter()  # the runtime stays open while its generation runs
    return generation, live


def _produce_in_task(
    held: HeldCall, live: LiveStream, generation: Generation, log: StreamLog, upstream: Response
) -> None:
    """Start the relay here (the client's head and Claude's first events leave now, not a
    task later), then hand it to the generation's own task."""
    try:
        live.begin()
    except Exception as exc:  # the relay's own failure: its task ends the stream with it
        live.on_end(exc)
    held.ctx.runtime.resume.hub.spawn(_produce(held, live, generation, log), upstream.loop)


async def _produce(
    held: HeldCall, live: LiveStream, generation: Generation, log: StreamLog
) -> None:
    """A resumable generation's own task: relay to the end, then settle and record the call."""
    runtime = held.ctx.runtime
    record = held.record
    try:
        await live.run(runtime.streams)
    except Exception as exc:  # the generation's own failure: recorded, never re-raised
        _failed(record, generation, exc)
    finally:
        held.left = generation.left
        runtime.resume.hub.remove(generation)
        log.close()
        try:
            await held.close()
        finally:
            runtime.lifecycle.leave()


def _failed(record: StreamRecord, generation: Generation, error: Exception) -> None:
    """A relay task failed on its own: the call is an upstream error, its readers ended."""
    if record.outcome is None:
        record.outcome = "upstream_error"
        record.error_type = record.error_type or type(error).__name__
    generation.end(b"")
