"""One Claude call, shared by every Claude route kind (prompt, anthropic, ui).

quota lease → admission slot → upstream (retries before the first byte) → relay
(`sidecar.call.stream`) → settle. Whatever ends the stream (completion, upstream error, idle timeout, client
disconnect, shutdown), the lease is settled with the usage seen and telemetry
records the stream once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from sidecar.cache.recording import Recording
from sidecar.cache.step import HEADER as CACHE_HEADER
from sidecar.call.group import Attached, Group, Replayed, lead
from sidecar.call.stream import (
    HeldCall,
    Resumable,
    hand_off,
    hand_off_recorded,
    open_relay,
    recorded_stream,
)
from sidecar.call.waiting import waiting
from sidecar.errors import Rejection, reject, short_error_type, simple_error_body
from sidecar.handlers.request_body import ensure_client_present
from sidecar.http_client import Response
from sidecar.pipeline import RequestContext
from sidecar.record import StreamRecord
from sidecar.retry_after import keep_valid_waits
from sidecar.stream.core import Translator
from sidecar.stream.tap import CallTap
from sidecar.upstream import (
    RATELIMIT_PREFIX,
    Attempt,
    api_error_body,
    api_error_of,
    read_answer,
    returned_headers,
)
from sidecar.usage import apply_message

MAX_ERROR_BODY = 64 * 1024
_HANDED_OVER: Final[Mapping[str, str]] = MappingProxyType({})
_SENT: Final = Attempt("POST", "", {})  # a sent call's attempt (never sent again)
# Admission's refusals of a call that queued: its wait is measured as not admitted.
_NOT_ADMITTED: Final = frozenset({"queue_full", "queue_timeout", "shutting_down"})


@dataclass(slots=True)
class ClaudeRequest:
    """A validated call: what to send and what to reserve. Once sent, `attempt` and
    `body` are let go (`call_claude`): an open stream does not hold its request."""

    attempt: Attempt
    body: bytes
    stream: bool
    input_estimate: int  # tokens, for the quota reservation (`sidecar.quotas.estimate`)


def new_record(
    ctx: RequestContext, model: str, max_tokens: int | None, stream: bool
) -> StreamRecord:
    """The stream record for this call, with the caller's identity as configured."""
    identity = ctx.identity
    claude = ctx.runtime.claude
    return StreamRecord(
        request_id=ctx.request_id,
        route=ctx.route.path,
        started=ctx.started,
        request_model=model,
        max_tokens=max_tokens,
        stream=stream,
        server_address=claude.server_address,
        server_port=claude.server_port,
        user=identity.user,
        tenant=identity.tenant,
        api_key_name=identity.api_key_name,
    )


def check_model(ctx: RequestContext, model: str) -> None:
    """400 for a model outside `claude.allowed_models`, 403 outside the route's `auth.allowed_models`."""
    allowed = ctx.runtime.config.claude.allowed_models
    if allowed is not None and model not in allowed:
        raise reject("model_not_allowed", f"model {model!r} is not available")
    permitted = ctx.route.policy.auth.allowed_models
    if permitted is not None and model not in permitted:
        raise reject("auth_forbidden_model", f"model {model!r} is not permitted on this route")


async def call_claude(
    ctx: RequestContext,
    call: ClaudeRequest,
    record: StreamRecord,
    translator: Translator,
    resumable: Resumable | None = None,
    tap: CallTap | None = None,
) -> web.StreamResponse:
    """Admit, call Claude and answer the client; always settles and records the stream.

    `tap` (the response cache's recording) sees Claude's answer and how the call ended:
    a recorded call belongs to the callers coalesced on it and runs in a task of its own
    from the start, this request one reader of it (`sidecar.call.group`). A resumable
    stream's generation is handed to its own task once Claude answers 200: it outlives
    this request (a client that leaves may come back), and that task settles and records it.
    """
    if isinstance(tap, Recording):  # coalesced: the call is its group's, not this request's
        return await lead(
            ctx, tap, record, translator,
            functools.partial(_call, ctx, call, record, translator, resumable, tap),
        )  # fmt: skip
    response = await _call(ctx, call, record, translator, resumable, tap)
    assert response is not None
    return response


async def _call(
    ctx: RequestContext,
    call: ClaudeRequest,
    record: StreamRecord,
    translator: Translator,
    resumable: Resumable | None,
    tap: CallTap | None,
    group: Group | None = None,
) -> web.StreamResponse | None:
    """`call_claude`'s call; in a coalescing `group`'s task, None once its stream was
    handed to its first caller (`Group.head`)."""
    runtime = ctx.runtime
    telemetry = runtime.telemetry
    quota_policy = ctx.route.policy.quotas
    reserve = call.input_estimate + (record.max_tokens or runtime.config.claude.max_tokens)
    held = HeldCall(
        ctx,
        call.input_estimate,
        record,
        telemetry.start_stream(record, ctx.span, call.body),
    )
    held.tap = tap
    if tap is not None:  # requests that follow this call link their spans to its span
        tap.started(held.span.get_span_context())
    handed_off = False
    queued_at: float | None = None
    try:
        held.lease = await runtime.quotas.acquire(
            quota_policy, ctx.route.policy.quota_scope, ctx.identity, ctx.client_ip, reserve
        )
        early = None
        # A group's call waits for its first caller as its own would, with the same head
        # (the quota's headers, the stream id), while that caller is there (`lead` ends
        # the wait once Claude answered or the caller left).
        if call.stream and (group is None or group.left is None):
            stream_id = None if resumable is None else resumable.stream_id
            early = waiting(ctx, translator, held.lease, stream_id)
        queued_at = time.perf_counter()
        record.queue_wait = await runtime.admission.acquire()
        held.admitted = True
        telemetry.admitted(record)
        if group is None:  # (a group's call is cancelled once its last member left)
            ensure_client_present(ctx.request)  # it may have left while queued: pay for nobody
        record.upstream_started = time.perf_counter()
        telemetry.inject(held.span, call.attempt.headers)  # `traceparent`: the call's span
        # What only the start needs (the answer's headers, the deferred step) is built in
        # argument position: this frame lives as long as the stream and keeps none of it.
        upstream, record.retries = await runtime.claude.send(
            call.attempt,
            call.body,
            stream=call.stream,
            written=functools.partial(_written, held),
        )
        # Sent: a stream need not hold its request (the body, the headers) to its end.
        call.attempt, call.body = _SENT, b""
        record.upstream_status = upstream.status
        if group is not None:
            group.sent = True
        elif early is not None:
            early.settle()
        if upstream.status != 200:
            return await _relay_error(ctx, upstream, record, _answer_headers(ctx, held, upstream))
        if not call.stream:
            return await _relay_message(upstream, record, _answer_headers(ctx, held, upstream), tap)
        if group is not None:
            handed_off = resumable is not None  # (its generation's task closes the call)
            await _share(held, upstream, translator, resumable, group)
            return None
        if resumable is None:
            live, channel = await open_relay(
                ctx, upstream, record, translator, _answer_headers(ctx, held, upstream), tap
            )
            await live.run(runtime.streams)
            await channel.end(runtime.config.claude.client_stall_timeout_seconds)
            return channel.response
        handed_off = True
        generation, subscriber = await hand_off(
            held, upstream, translator, _answer_headers(ctx, held, upstream), resumable
        )
        try:
            await subscriber.done  # the generation's end, or this client leaving
        finally:
            generation.detach(subscriber)
        await subscriber.channel.end(runtime.config.claude.client_stall_timeout_seconds)
        return subscriber.channel.response
    except Rejection as rejection:
        if held.lease is not None:  # admitted: the limits' state goes with the error too
            carry_ratelimit(rejection, held.lease.headers)
        if record.upstream_status is None and record.upstream_started is None:
            record.outcome = "rejected"
        else:
            record.outcome = "upstream_error"
        record.error_type = rejection.telemetry_type
        if rejection.reason in _NOT_ADMITTED and queued_at is not None:
            record.queue_wait = time.perf_counter() - queued_at
            telemetry.queue_wait(record.queue_wait, admitted=False)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        if record.outcome is None and not handed_off:  # the relay may already know better
            record.outcome = "client_cancelled"
        raise
    except Exception as exc:
        if record.outcome is None and not handed_off:
            record.outcome = "upstream_error"
            record.error_type = record.error_type or type(exc).__name__
        raise
    finally:
        if group is not None:  # how its first caller left, should the call complete
            held.left = group.left
        if not handed_off:
            attempt = call.attempt
            held.unanswered = attempt.unanswered  # Claude may bill it (`charged_tokens`)
            if attempt is not _SENT:  # `send` raised (or never ran): what it saw still counts
                record.retries = attempt.retries
                record.upstream_status = attempt.status
            if resumable is not None:  # no stream came of it: its empty buffer just expires
                resumable.log.finish()
                resumable.log.close()
            await held.close()


async def _share(
    held: HeldCall,
    upstream: Response,
    translator: Translator,
    resumable: Resumable | None,
    group: Group,
) -> None:
    """Claude answered a coalesced call's stream: it is read at Claude's pace for the whole
    group (`sidecar.call.group`), its first caller told how to read it."""
    ctx = held.ctx
    headers = _answer_headers(ctx, held, upstream)
    if resumable is not None:
        generation = hand_off_recorded(held, upstream, translator, resumable)
        if group.left is None:
            group.answered(Attached(generation, headers))
        else:  # its first caller left before Claude answered: its followers read it
            generation.left = group.left
            generation.unattended()
        return
    live = group.live = recorded_stream(held, upstream)
    live.begin()
    group.answered(Replayed(headers))
    await live.run(ctx.runtime.streams)


def carry_ratelimit(rejection: Rejection, headers: Mapping[str, str]) -> None:
    """Give an error answered after admission the `anthropic-ratelimit-*` headers of
    `headers` (the admission's, or those of Claude's answer), as every response of a route
    with quotas carries them; the rejection's own win."""
    for name, value in headers.items():
        if name.startswith(RATELIMIT_PREFIX):
            rejection.headers.setdefault(name, value)


def _written(held: HeldCall) -> None:
    """What the call's start still owes once its request is written, done while Claude
    works on it: telemetry's stream start (`Telemetry.stream_started`: log line, counts,
    both spans' start attributes) and the lease's rate-limit headers, all needed only
    when Claude answers or the stream ends."""
    ctx = held.ctx
    ctx.runtime.telemetry.stream_started(held.record, held.span, ctx.span)
    if held.lease is not None:
        held.lease.prepare_headers()


def _answer_headers(ctx: RequestContext, held: HeldCall, upstream: Response) -> dict[str, str]:
    """The client's response headers: the request's own, the quota's, then Claude's.

    The lease hands its rate-limit headers over: it settles at the stream's end and
    need not hold them until then.
    """
    lease = held.lease
    assert lease is not None  # admitted
    quota_headers, lease.headers = lease.headers, _HANDED_OVER
    keep_ratelimit = not ctx.route.policy.quotas.enabled
    headers = {
        **ctx.headers,
        **quota_headers,
        **returned_headers(upstream, keep_ratelimit=keep_ratelimit),
    }
    if ctx.cache_status is not None:  # Claude answered the call the cache let through
        headers[CACHE_HEADER] = ctx.cache_status
    return headers


async def _relay_error(
    ctx: RequestContext,
    upstream: Response,
    record: StreamRecord,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Claude answered an error: same status; Anthropic JSON as is, or the prompt shape."""
    try:
        body = await read_answer(upstream, MAX_ERROR_BODY)
    except Rejection as rejection:
        if rejection.reason != "upstream_bad_encoding":
            carry_ratelimit(rejection, headers)
            raise
        body = b""  # unreadable: its status and headers still say what Claude meant
    record.outcome = "upstream_error"
    error_type, message = api_error_of(body, upstream.status)
    record.error_type = error_type
    early = ctx.early
    if early is not None and early.open:  # the stream started while waiting: its error event
        return await early.fail(error_type, message)
    if ctx.family == "anthropic":
        return web.Response(
            status=upstream.status,
            body=api_error_body(body, upstream.status, ctx.request_id),
            headers=headers,
            content_type="application/json",
        )
    status = 503 if upstream.status == 529 else upstream.status
    keep_valid_waits(headers)
    return web.Response(
        status=status,
        body=simple_error_body(short_error_type(error_type), message),
        headers=headers,
        content_type="application/json",
    )


async def _relay_message(
    upstream: Response,
    record: StreamRecord,
    headers: dict[str, str],
    tap: CallTap | None = None,
) -> web.Response:
    """A non-streaming reply: read it whole (it is one JSON object) and account for it."""
    try:
        body = await read_answer(upstream)
    except Rejection as rejection:  # late, cut or undecodable: the limits' state still goes
        carry_ratelimit(rejection, headers)
        raise
    record.first_chunk_at = record.last_chunk_at = time.perf_counter()
    record.outcome = "completed"
    message: Any
    try:
        message = json.loads(body)
    except ValueError:
        message = None
    # Only a whole message is an answer to share and store: a body that ended with its
    # connection (no length, not chunked) reads as whole however much of it came, and a
    # gateway's page or error may come as a 200. (Relayed as it came, to this caller only.)
    if tap is not None and isinstance(message, dict) and message.get("type") == "message":
        tap.message(body)
    apply_message(record, message)
    return web.Response(status=200, body=body, headers=headers, content_type="application/json")
