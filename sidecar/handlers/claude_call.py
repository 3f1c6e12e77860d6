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

from sidecar import sse
from sidecar.errors import Rejection, short_error_type, simple_error_body
from sidecar.pipeline import RequestContext
from sidecar.record import StreamRecord
from sidecar.relay import LiveStream, Translator
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
        handler="anthropic" if ctx.family == "anthropic" else "prompt",
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


async def call_claude(
    ctx: RequestContext,
    call: ClaudeRequest,
    record: StreamRecord,
    translator: Translator,
) -> web.StreamResponse:
    """Admit, call Claude and answer the client; always settles and records the stream."""
    runtime = ctx.runtime
    telemetry = runtime.telemetry
    quota_policy = ctx.route.policy.quotas
    reserve = call.input_estimate + (record.max_tokens or runtime.config.claude.max_tokens)
    span = telemetry.start_stream(record, ctx.trace_parent, call.body)
    lease = None
    admitted = False
    queued_at: float | None = None
    try:
        lease = await runtime.quotas.acquire(
            quota_policy, ctx.route.policy.quota_scope, ctx.identity, ctx.client_ip, reserve
        )
        queued_at = time.perf_counter()
        record.queue_wait = await runtime.admission.acquire()
        admitted = True
        telemetry.admitted(record)
        headers = dict(call.attempt.headers)
        telemetry.inject(span, headers)
        attempt = Attempt(call.attempt.method, call.attempt.path, headers)
        record.upstream_started = time.perf_counter()
        upstream, record.retries = await runtime.claude.send(attempt, call.body, stream=call.stream)
        record.upstream_status = upstream.status
        response_headers = {**ctx.headers, **lease.headers}
        response_headers.update(
            returned_headers(upstream.headers, keep_ratelimit=not quota_policy.enabled)
        )
        if upstream.status != 200:
            return await _relay_error(ctx, upstream, record, response_headers)
        if not call.stream:
            return await _relay_message(upstream, record, response_headers)
        return await _relay_stream(ctx, upstream, record, translator, response_headers)
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
        if record.outcome == "completed":  # the relay may already know better
            record.outcome = "client_cancelled"
        raise
    except Exception as exc:
        if record.outcome == "completed":
            record.outcome = "upstream_error"
            record.error_type = record.error_type or type(exc).__name__
        raise
    finally:
        if admitted:
            runtime.admission.release()
        record.ended = time.perf_counter()
        telemetry.finish_stream(record, span)
        if lease is not None:
            await lease.settle(*charged_tokens(record, call.input_estimate))


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
    upstream: aiohttp.ClientResponse, record: StreamRecord, headers: dict[str, str]
) -> web.Response:
    """A non-streaming reply: read it whole (it is one JSON object) and account for it."""
    body = await read_answer(upstream)
    record.first_chunk_at = record.last_chunk_at = time.perf_counter()
    message: Any
    try:
        message = json.loads(body)
    except ValueError:
        message = None
    apply_message(record, message)
    return web.Response(status=200, body=body, headers=headers, content_type="application/json")


async def _relay_stream(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    record: StreamRecord,
    translator: Translator,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Start the SSE response and relay until the stream ends."""
    runtime = ctx.runtime
    response = web.StreamResponse(status=200, headers={**headers, **sse.HEADERS})
    await response.prepare(ctx.request)  # headers are sent by the relay, with the first bytes
    ctx.response_started = True
    config = runtime.config.claude
    live = LiveStream(
        ctx.request,
        response,
        upstream,
        record,
        translator,
        heartbeat=config.heartbeat_seconds,
        idle_timeout=config.idle_timeout_seconds,
    )
    runtime.streams.add(live)
    try:
        await live.run()
    finally:
        runtime.streams.discard(live)
    transport = ctx.request.transport
    if transport is not None and not transport.is_closing():
        await response.write_eof()
    return response
