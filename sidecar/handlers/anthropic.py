"""Anthropic Messages API compatible routes: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/*`.

Bodies go to Claude byte for byte and streams come back event for event, so any
official SDK works with `base_url` pointed here. The client's own credential was
for the sidecar's auth and is never forwarded; the sidecar sends its own key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from sidecar.errors import Rejection, anthropic_error_body, bad_request
from sidecar.handlers.claude_call import (
    ClaudeRequest,
    call_claude,
    check_model,
    estimate_input_tokens,
    new_record,
)
from sidecar.handlers.request_body import parse_json_object, read_body
from sidecar.pipeline import RequestContext
from sidecar.policy import collect_texts
from sidecar.record import Outcome, StreamRecord
from sidecar.relay import Translator
from sidecar.upstream import Attempt, read_answer, returned_headers


class Passthrough(Translator):
    """Claude's bytes unchanged; a failure after the first byte is Anthropic's `event: error`."""

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        return b"event: error\ndata: " + anthropic_error_body(error_type, message, "") + b"\n\n"


PASSTHROUGH = Passthrough()


def _validated(body: dict[str, Any]) -> tuple[str, int, bool]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("max_tokens: must be a positive integer")
    if not isinstance(body.get("messages"), list):
        raise bad_request("messages: Field required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream: must be a boolean")
    return model, max_tokens, stream


def _screen(ctx: RequestContext, body: dict[str, Any]) -> tuple[int, int]:
    """Screen every user-supplied text; returns (chars, attachment bytes) for the estimate."""
    texts, attachments = collect_texts(body.get("system"), body.get("messages"))
    ctx.route.screener.screen(texts, attachments)
    return sum(map(len, texts)), attachments


def _require_post(ctx: RequestContext) -> None:
    if ctx.request.method != "POST":
        raise Rejection(
            405, "invalid_request_error", "use POST", reason="method_not_allowed",
            headers={"Allow": "POST, OPTIONS"},
        )  # fmt: skip


def upstream_path(ctx: RequestContext) -> str:
    """The Anthropic API path (+ query): from `/v1/` on, whatever prefix the route has."""
    url = ctx.request.rel_url
    jwt = ctx.route.policy.auth.jwt
    if jwt is not None and jwt.query_param and jwt.query_param in url.query:
        url = url.without_query_params(jwt.query_param)  # the sidecar credential stays here
    path_qs = url.raw_path_qs
    start = path_qs.find("/v1/")
    if start < 0:
        raise Rejection(404, "not_found_error", "not an Anthropic API path", reason="not_found")
    return path_qs[start:]


def handle_anthropic(ctx: RequestContext) -> Awaitable[web.StreamResponse]:
    """Dispatch within the Anthropic family by path.

    A plain function returning the route's coroutine: a stream holds that one frame,
    not a dispatcher's frame awaiting it too.
    """
    path_qs = upstream_path(ctx)
    path = path_qs.partition("?")[0].rstrip("/")
    if path == "/v1/messages":
        return _messages(ctx, path_qs)
    if path == "/v1/messages/count_tokens":
        return _count_tokens(ctx, path_qs)
    if not any(_under(path, prefix) for prefix in ctx.runtime.config.claude.forward_paths):
        # Batches, files and the like would spend the sidecar's key outside screening and
        # token quotas: only the paths the config opens are forwarded.
        raise Rejection(
            403, "permission_error", f"{path} is not open through this sidecar",
            reason="path_not_forwarded",
        )  # fmt: skip
    return _forward(ctx, path_qs, None)


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it, on whole segments."""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


async def _messages(ctx: RequestContext, path_qs: str) -> web.StreamResponse:
    _require_post(ctx)
    raw = await read_body(ctx.request, ctx.runtime.config.server.max_body_bytes)
    call, record = _message_call(ctx, path_qs, raw)
    return await call_claude(ctx, call, record, PASSTHROUGH)


def _message_call(
    ctx: RequestContext, path_qs: str, raw: bytes
) -> tuple[ClaudeRequest, StreamRecord]:
    """The validated, screened call and its record; the parsed body is not kept.

    A function of its own so the decoded JSON (every message as Python objects) is
    freed before the stream starts instead of living as long as it.
    """
    config = ctx.runtime.config
    body = parse_json_object(raw)
    model, max_tokens, stream = _validated(body)
    check_model(ctx, model)
    chars, attachments = _screen(ctx, body)
    record = new_record(ctx, model, max_tokens, stream)
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(record, name, float(value))
    if isinstance(body.get("top_k"), int):
        record.top_k = body["top_k"]
    if isinstance(body.get("stop_sequences"), list):
        record.stop_sequences = [str(s) for s in body["stop_sequences"]]
    if config.telemetry.capture_content:
        record.prompt_text = json.dumps(body.get("messages"))[:65536]
    call = ClaudeRequest(
        attempt=Attempt("POST", path_qs, _claude_headers(ctx)),
        body=raw,
        stream=stream,
        input_estimate=estimate_input_tokens(chars, attachments),
    )
    return call, record


async def _count_tokens(ctx: RequestContext, path_qs: str) -> web.StreamResponse:
    _require_post(ctx)
    raw = await read_body(ctx.request, ctx.runtime.config.server.max_body_bytes)
    body = parse_json_object(raw)
    model = body.get("model")
    if isinstance(model, str):
        check_model(ctx, model)
    _screen(ctx, body)
    return await _forward(ctx, path_qs, raw)


async def _forward(ctx: RequestContext, path_qs: str, body: bytes | None) -> web.StreamResponse:
    """Any other Anthropic call (count_tokens, models, ...): forwarded as is, answered as is."""
    request = ctx.request
    if body is None and request.can_read_body:
        body = await read_body(request, ctx.runtime.config.server.max_body_bytes)
    policy = ctx.route.policy  # no tokens are generated here: requests per minute only
    ctx.headers.update(
        await ctx.runtime.quotas.count_request(
            policy.quotas, policy.quota_scope, ctx.identity, ctx.client_ip
        )
    )
    headers = _claude_headers(ctx)
    ctx.runtime.telemetry.inject(ctx.span, headers)
    upstream, _ = await ctx.runtime.claude.send(Attempt(request.method, path_qs, headers), body)
    payload = await read_answer(upstream)
    response_headers = {
        **ctx.headers,
        **returned_headers(upstream.headers, keep_ratelimit=not policy.quotas.enabled),
    }
    return web.Response(
        status=upstream.status,
        body=payload,
        headers=response_headers,
        content_type=upstream.content_type or "application/json",
    )


def _claude_headers(ctx: RequestContext) -> dict[str, str]:
    return ctx.runtime.claude.request_headers(ctx.request.headers)
