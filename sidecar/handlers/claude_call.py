"""One Claude call, shared by the prompt and Anthropic routes.

quota lease → admission slot → upstream (retries before the first byte) → relay →
settle. Whatever ends the stream (completion, upstream error, idle timeout, client
disconnect, shutdown), the lease is settled with the usage seen and telemetry
records the stream once.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import Span

from sidecar import sse
from sidecar.errors import Rejection, short_error_type, simple_error_body
from sidecar.handlers.request_body import ensure_client_present
from sidecar.pipeline import RequestContext
from sidecar.quotas import QuotaLease
from sidecar.record import StreamRecord
from sidecar.relay import LiveStream
from sidecar.stream.adapter import ClientChannel
from sidecar.stream.core import StreamCore, Translator
from sidecar.stream.hub import Generation, Subscriber
from sidecar.stream.store import StreamLog
from sidecar.stream.tap import CallTap, make_core
from sidecar.upstream import Attempt, read_answer, returned_headers
from sidecar.usage import apply_message

MAX_ERROR_BODY = 64 * 1024


@dataclass(slots=True)
class ClaudeRequest:
    """A validated call: what to send and what to reserve."""

    attempt: Attempt
    body: bytes
    stream: bool
    input_estimate: int  # tokens, for the quota reservation


def estimate_input_tokens(chars: int, attachment_bytes: int) -> int:
    """A cheap upper-leaning estimate: ~4 chars per token, attachments ~1 token / 3 bytes."""
    return math.ceil(chars / 3.5) + math.ceil(attachment_bytes / 3) + 8


def charged_tokens(record: StreamRecord, input_estimate: int) -> tuple[int, int]:
    """(input, output) tokens to charge for a call, also when it ended early.

    A stream cut short (client gone, idle timeout) never sees the final
    `message_delta`: each content delta relayed is at least one output token, and
    input Claude accepted (status 200) counts even if `message_start` never came.
    """
    input_tokens = record.total_input_tokens
    if input_tokens == 0 and record.upstream_status == 200:
        input_tokens = input_estimate
    return input_tokens, max(record.output_tokens, record.output_deltas)


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
        raise Rejection(
            400, "invalid_request_error", f"model {model!r} is not available",
            reason="model_not_allowed",
        )  # fmt: skip
    permitted = ctx.route.policy.auth.allowed_models
    if permitted is not None and model not in permitted:
        raise Rejection(
            403, "permission_error", f"model {model!r} is not permitted on this route",
            reason="auth_forbidden_model",
        )  # fmt: skip


@dataclass(slots=True)
class Resumable:
    """A resumable stream's identity and buffer, prepared before Claude is called."""

    stream_id: str
    owner: str
    log: StreamLog
    grace: float


@dataclass(slots=True, eq=False)
class _Call:
    """What a call holds until it ends: its span, quota lease and stream slot."""

    ctx: RequestContext
    call: ClaudeRequest
    record: StreamRecord
    span: Span
    lease: QuotaLease | None = None
    admitted: bool = False
    tap: CallTap | None = None  # records the answer (the response cache)

    async def close(self) -> None:
        """Release the slot, record the stream once and settle the tokens it used."""
        runtime = self.ctx.runtime
        record = self.record
        if self.tap is not None:
            self.tap.finish(record)
        if self.admitted:
            runtime.admission.release()
        record.ended = time.perf_counter()
        runtime.telemetry.finish_stream(record, self.span)
        if self.lease is not None:
            await self.lease.settle(*charged_tokens(record, self.call.input_estimate))


async def call_claude(
    ctx: RequestContext,
    call: ClaudeRequest,
    record: StreamRecord,
    translator: Translator,
    resumable: Resumable | None = None,
    tap: CallTap | None = None,
) -> web.StreamResponse:
    """Admit, call Claude and answer the client; always settles and records the stream.

    `tap` (the response cache's recording) sees Claude's answer and how the call ended.
    A resumable stream's generation is handed to its own task once Claude answers 200:
    it outlives this request (a client that leaves may come back), and that task
    settles and records it.
    """
    runtime = ctx.runtime
    telemetry = runtime.telemetry
    quota_policy = ctx.route.policy.quotas
    reserve = call.input_estimate + (record.max_tokens or runtime.config.claude.max_tokens)
    held = _Call(ctx, call, record, telemetry.start_stream(record, ctx.trace_parent, call.body))
    held.tap = tap
    handed_off = False
    queued_at: float | None = None
    try:
        held.lease = await runtime.quotas.acquire(
            quota_policy, ctx.route.policy.quota_scope, ctx.identity, ctx.client_ip, reserve
        )
        queued_at = time.perf_counter()
        record.queue_wait = await runtime.admission.acquire()
        held.admitted = True
        telemetry.admitted(record)
        headers = dict(call.attempt.headers)
        telemetry.inject(held.span, headers)
        attempt = Attempt(call.attempt.method, call.attempt.path, headers)
        ensure_client_present(ctx.request)  # it may have left while queued: pay for nobody
        record.upstream_started = time.perf_counter()
        upstream, record.retries = await runtime.claude.send(attempt, call.body, stream=call.stream)
        record.upstream_status = upstream.status
        response_headers = {**ctx.headers, **held.lease.headers}
        response_headers.update(
            returned_headers(upstream.headers, keep_ratelimit=not quota_policy.enabled)
        )
        if upstream.status != 200:
            return await _relay_error(ctx, upstream, record, response_headers)
        if not call.stream:
            return await _relay_message(upstream, record, response_headers, tap)
        if resumable is None:
            return await _relay_stream(ctx, upstream, record, translator, response_headers, tap)
        handed_off = True
        return await _hand_off(held, upstream, translator, response_headers, resumable)
    except Rejection as rejection:
        if record.upstream_status is None and record.upstream_started is None:
            record.outcome = "rejected"
        else:
            record.outcome = "upstream_error"
        record.error_type = rejection.error_type
        if rejection.reason in ("queue_full", "queue_timeout") and queued_at is not None:
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
        if not handed_off:
            await held.close()


async def _relay_error(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    record: StreamRecord,
    headers: dict[str, str],
) -> web.Response:
    """Claude answered an error: same status; Anthropic JSON as is, or the prompt shape."""
    body = await read_answer(upstream, MAX_ERROR_BODY)
    record.outcome = "upstream_error"
    error_type, message = _error_of(body, upstream.status)
    record.error_type = error_type
    if ctx.family == "anthropic":
        return web.Response(
            status=upstream.status, body=body, headers=headers, content_type="application/json"
        )
    status = 503 if upstream.status == 529 else upstream.status
    return web.Response(
        status=status,
        body=simple_error_body(short_error_type(error_type), message),
        headers=headers,
        content_type="application/json",
    )


def _error_of(body: bytes, status: int) -> tuple[str, str]:
    try:
        error = json.loads(body).get("error", {})
        return str(error.get("type") or "api_error"), str(error.get("message") or "")
    except (ValueError, AttributeError):
        return "api_error", f"Claude answered {status}"


async def _relay_message(
    upstream: aiohttp.ClientResponse,
    record: StreamRecord,
    headers: dict[str, str],
    tap: CallTap | None = None,
) -> web.Response:
    """A non-streaming reply: read it whole (it is one JSON object) and account for it."""
    body = await read_answer(upstream)
    if tap is not None:
        tap.message(body)
    record.first_chunk_at = record.last_chunk_at = time.perf_counter()
    record.outcome = "completed"
    message: Any
    try:
        message = json.loads(body)
    except ValueError:
        message = None
    apply_message(record, message)
    return web.Response(status=200, body=body, headers=headers, content_type="application/json")


def _live_stream(
    ctx: RequestContext, upstream: aiohttp.ClientResponse, core: StreamCore, generation: Generation
) -> LiveStream:
    config = ctx.runtime.config.claude
    return LiveStream(
        upstream,
        core,
        generation,
        heartbeat=config.heartbeat_seconds,
        idle_timeout=config.idle_timeout_seconds,
        stall_timeout=config.client_stall_timeout_seconds,
    )


async def _start_response(ctx: RequestContext, headers: dict[str, str]) -> ClientChannel:
    response = web.StreamResponse(status=200, headers={**headers, **sse.HEADERS})
    await response.prepare(ctx.request)  # headers are sent by the relay, with the first bytes
    ctx.response_started = True
    return ClientChannel(ctx.request, response)


async def _relay_stream(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    record: StreamRecord,
    translator: Translator,
    headers: dict[str, str],
    tap: CallTap | None = None,
) -> web.StreamResponse:
    """Start the SSE response and relay until the stream ends (the client leaving ends it)."""
    runtime = ctx.runtime
    channel = await _start_response(ctx, headers)
    generation = Generation(record)
    generation.attach(Subscriber(channel))
    live = _live_stream(ctx, upstream, make_core(record, translator, tap), generation)
    runtime.streams.add(live)
    try:
        await live.run()
    finally:
        runtime.streams.discard(live)
    await channel.end()
    return channel.response


async def _hand_off(
    held: _Call,
    upstream: aiohttp.ClientResponse,
    translator: Translator,
    headers: dict[str, str],
    resumable: Resumable,
) -> web.StreamResponse:
    """Start a resumable generation in its own task and read it as its first subscriber."""
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
    live = _live_stream(ctx, upstream, make_core(record, translator, held.tap), generation)
    resumable.log.on_cancel = generation.cancel  # a cancel asked on another replica
    hub = runtime.resume.hub
    hub.add(generation, held.span)
    runtime.streams.add(live)
    runtime.lifecycle.enter()  # the runtime stays open while its generation runs

    async def produce() -> None:
        try:
            await live.run()
        except Exception as exc:  # the generation's own failure: recorded, never re-raised
            if record.outcome is None:
                record.outcome = "upstream_error"
                record.error_type = record.error_type or type(exc).__name__
            generation.end(b"")
        finally:
            runtime.streams.discard(live)
            hub.remove(generation)
            resumable.log.close()
            try:
                await held.close()
            finally:
                runtime.lifecycle.leave()

    try:
        channel = await _start_response(ctx, headers)
    except BaseException:
        upstream.close()
        record.outcome = "client_cancelled"
        hub.remove(generation)
        runtime.streams.discard(live)
        runtime.lifecycle.leave()
        resumable.log.close()
        await held.close()
        raise
    subscriber = Subscriber(channel)
    generation.attach(subscriber)
    hub.spawn(produce())
    try:
        await subscriber.done
    finally:
        generation.detach(subscriber)
    await channel.end()
    return channel.response
