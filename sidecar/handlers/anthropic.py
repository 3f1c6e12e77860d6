"""Anthropic Messages API compatible routes: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/*`.

Bodies go to Claude byte for byte and streams come back event for event, so any
official SDK works with `base_url` pointed here. The client's own credential was
for the sidecar's auth and is never forwarded; the sidecar sends its own key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, Final

from aiohttp import web

from sidecar.cache.step import CacheStep
from sidecar.cache.step import lookup as cache_lookup
from sidecar.call.run import (
    MAX_ERROR_BODY,
    ClaudeRequest,
    call_claude,
    check_model,
    new_record,
)
from sidecar.errors import anthropic_error_body, bad_request, reject
from sidecar.handlers import resume
from sidecar.handlers.batch_links import is_batch_answer, with_local_results
from sidecar.handlers.forward_body import relay_body
from sidecar.handlers.request_body import (
    ensure_client_present,
    parse_json_object,
    parse_model,
    read_body,
    valid_max_tokens,
)
from sidecar.pipeline import RequestContext, client_origin
from sidecar.policy.claude_schema import Collected
from sidecar.quotas.estimate import estimate_input_tokens
from sidecar.record import Outcome, StreamRecord
from sidecar.stream.core import Translator
from sidecar.stream.resume import is_stream_id
from sidecar.telemetry.bounded import span_float, span_int
from sidecar.upstream import Attempt, api_error_body, read_answer, returned_headers
from sidecar.usage import DELTA


class Passthrough(Translator):
    """Claude's bytes unchanged; a failure after the first byte is Anthropic's `event: error`."""

    __slots__ = ()

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        return b"event: error\ndata: " + anthropic_error_body(error_type, message, "") + b"\n\n"


PASSTHROUGH = Passthrough()


class NumberedPassthrough(Passthrough):
    """Claude's events unchanged but whole, so a resumable stream can put an `id:` on each.

    An `id` field of the event's own (none in Anthropic's stream; a proxy in between may
    add them) is dropped: the client's last event id must be the stream's, or it could
    never resume.
    """

    __slots__ = ()

    passthrough = False

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        # One byte search for an id line after the first (`find`, not `in`: see `sidecar.sse`);
        # a content delta's first line is its `event:` line (`StreamCore` knew it by it).
        if block.find(b"\nid") >= 0 or (name is not DELTA and block.startswith(b"id")):
            block = _without_ids(block)
            if not block:
                return b""  # only an id: no event for the client
        return block + b"\n\n"


def _without_ids(block: bytes) -> bytes:
    """An event block without its `id` field lines (`id`, `id:…`)."""
    lines = block.split(b"\n")
    kept = [line for line in lines if line != b"id" and not line.startswith(b"id:")]
    return block if len(kept) == len(lines) else b"\n".join(kept)


NUMBERED = NumberedPassthrough()
# The longest forwarded JSON answer read whole (count_tokens, a batch or a page of them:
# ~1 KB each, 1000 at most): past it, a 502 rather than a cut that would break its JSON.
MAX_JSON_ANSWER: Final = 8 * 1024 * 1024
RESUME_HEADER = "Sidecar-Resume"  # `on`: this stream is resumable (opt-in on this route)


def _lost_event(error_type: str, message: str) -> bytes:
    if error_type == "shutting_down":  # Anthropic's type, as a live stream's shutdown sends
        error_type = "overloaded_error"
    return b"event: error\ndata: " + anthropic_error_body(error_type, message, "") + b"\n\n"


def _resume_wanted(ctx: RequestContext) -> bool:
    """Resume on the Anthropic route is opt-in: the route's `resume.enabled` or the header."""
    if not ctx.runtime.config.resume.enabled:  # off: no header to read
        return False
    asked = ctx.request.headers.get(RESUME_HEADER, "").strip().lower() in ("on", "1", "true")
    return resume.enabled_on(ctx, default=asked)


def _validated(body: dict[str, Any]) -> tuple[str, int, bool]:
    model = parse_model(body.get("model"))
    max_tokens = body.get("max_tokens")
    if not valid_max_tokens(max_tokens):
        raise bad_request("max_tokens: must be a positive integer")
    if not isinstance(body.get("messages"), list):
        raise bad_request("messages: Field required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream: must be a boolean")
    return model, max_tokens, stream


def _screen(ctx: RequestContext, body: dict[str, Any]) -> Collected:
    """Screen every text Claude would read; what it read is for the input estimate."""
    return ctx.route.screener.screen_request(body)


def _require_post(ctx: RequestContext) -> None:
    if ctx.request.method != "POST":
        raise reject("method_not_allowed", "use POST", headers={"Allow": "POST, OPTIONS"})


def upstream_path(ctx: RequestContext) -> tuple[str, str]:
    """(API path, query) for Claude: the canonical path from `/v1/` on, whatever the prefix.

    The path is the request's canonical path (`sidecar.paths`), so the dispatch below and
    the URL Claude receives are one and the same: `/v1/models/../messages` is the messages
    call with all its checks, never a forward.
    """
    start = ctx.path.find("/v1/")
    if start < 0:
        raise reject("not_found", "not an Anthropic API path")
    url = ctx.request.rel_url
    jwt = ctx.route.policy.auth.jwt
    if jwt is not None and jwt.query_param and jwt.query_param in url.query:
        url = url.without_query_params(jwt.query_param)  # the sidecar credential stays here
    query = url.raw_query_string
    return ctx.path[start:], f"?{query}" if query else ""


def handle_anthropic(ctx: RequestContext) -> Awaitable[web.StreamResponse]:
    """Dispatch within the Anthropic family by canonical path.

    A plain function returning the route's coroutine: a stream holds that one frame,
    not a dispatcher's frame awaiting it too.
    """
    path, query = upstream_path(ctx)
    call = path.rstrip("/")
    if call == "/v1/messages":
        cursor = resume.cursor_of(ctx.request) if ctx.runtime.config.resume.enabled else None
        if cursor is not None and ctx.request.method == "POST":
            return resume.resume(ctx, cursor, _lost_event)
        return _messages(ctx, call + query)
    parent, _, last = call.rpartition("/")
    deleting = ctx.request.method == "DELETE" and parent == "/v1/messages" and is_stream_id(last)
    if deleting and ctx.runtime.config.resume.enabled:  # DELETE /v1/messages/<stream id>
        return resume.cancel(ctx, last)
    if call == "/v1/messages/count_tokens":
        return _count_tokens(ctx, call + query)
    if not any(_under(path, prefix) for prefix in ctx.runtime.config.claude.forward_paths):
        # Batches, files and the like would spend the sidecar's key outside screening and
        # token quotas: only the paths the config opens are forwarded.
        raise reject("path_not_forwarded", f"{call} is not open through this sidecar")
    return _forward(ctx, path + query, None)


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it, on whole segments."""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


async def _messages(ctx: RequestContext, path_qs: str) -> web.StreamResponse:
    _require_post(ctx)
    # Only the call holds the body (this frame lives as long as the stream): it lets the
    # body go once sent.
    body = await read_body(ctx.request, ctx.runtime.config.server)
    call, record, cached = await _message_call(ctx, path_qs, body)
    del body
    if cached.source is not None:  # replayed as Claude sent it: the exact bytes
        answered = await cached.serve(record, PASSTHROUGH, call.input_estimate)
        if answered is not None:
            return answered
    try:
        plan = await resume.prepare(ctx) if call.stream and _resume_wanted(ctx) else None
    except BaseException:
        cached.abandon()
        raise
    translator = NUMBERED if plan else PASSTHROUGH
    return await call_claude(ctx, call, record, translator, plan, cached.tap)


async def _message_call(
    ctx: RequestContext, path_qs: str, raw: bytes
) -> tuple[ClaudeRequest, StreamRecord, CacheStep]:
    """The validated, screened call, its record and the cache's decision; the parsed body
    is not kept.

    A function of its own so the decoded JSON (every message as Python objects) is
    freed before the stream starts instead of living as long as it.
    """
    config = ctx.runtime.config
    body = parse_json_object(raw)
    model, max_tokens, stream = _validated(body)
    check_model(ctx, model)
    collected = _screen(ctx, body)
    record = new_record(ctx, model, max_tokens, stream)
    # As the span can carry them; Claude judges the request as sent.
    record.temperature = span_float(body.get("temperature"))
    record.top_p = span_float(body.get("top_p"))
    record.top_k = span_int(body.get("top_k"))
    if isinstance(body.get("stop_sequences"), list):
        record.stop_sequences = [str(s) for s in body["stop_sequences"]]
    if config.telemetry.capture_content:
        record.prompt_text = json.dumps(body.get("messages"))[:65536]
    call = ClaudeRequest(
        attempt=Attempt("POST", path_qs, _claude_headers(ctx, json_body=True)),
        body=raw,
        stream=stream,
        input_estimate=estimate_input_tokens(collected, ctx.route.policy.quotas),
    )
    return call, record, await cache_lookup(ctx, body, stream, call.attempt)


async def _count_tokens(ctx: RequestContext, path_qs: str) -> web.StreamResponse:
    _require_post(ctx)
    raw = await read_body(ctx.request, ctx.runtime.config.server)
    body = parse_json_object(raw)
    if "model" in body:
        check_model(ctx, parse_model(body["model"]))
    _screen(ctx, body)
    return await _forward(ctx, path_qs, raw, json_body=True, whole=True)


async def _forward(
    ctx: RequestContext,
    path_qs: str,
    body: bytes | None,
    *,
    json_body: bool = False,
    whole: bool = False,
) -> web.StreamResponse:
    """Any other Anthropic call (count_tokens, models, files, ...): forwarded as is, its
    answer relayed as it arrives (`forward_body`: a file's content is never held whole).
    Read whole instead (bounded): an error, made Anthropic's error JSON; a batch's
    answer, whose `results_url` must lead back here (`batch_links`); and a `whole` one
    (count_tokens: a few bytes of JSON, a 502 rather than a short body if cut)."""
    request = ctx.request
    if body is None and request.can_read_body:
        body = await read_body(request, ctx.runtime.config.server)
    policy = ctx.route.policy  # no tokens are generated here: requests per minute only
    ctx.headers.update(
        await ctx.runtime.quotas.count_request(
            policy.quotas, policy.quota_scope, ctx.identity, ctx.client_ip
        )
    )
    headers = _claude_headers(ctx, json_body=json_body)
    ctx.runtime.telemetry.inject(ctx.span, headers)
    ensure_client_present(request)
    attempt = Attempt(request.method, path_qs, headers)
    upstream, _ = await ctx.runtime.claude.send(attempt, body, stream=False)
    response_headers = {
        **ctx.headers,
        **returned_headers(upstream, keep_ratelimit=not policy.quotas.enabled),
    }
    batch = is_batch_answer(path_qs.partition("?")[0])
    if upstream.status < 400 and not (batch or whole):
        return await relay_body(ctx, upstream, response_headers)
    if upstream.status >= 400:  # as every error of this route: Anthropic's error JSON
        payload = api_error_body(
            await read_answer(upstream, MAX_ERROR_BODY), upstream.status, ctx.request_id
        )
    else:
        payload = await read_answer(upstream, MAX_JSON_ANSWER, cut=False)
        if batch:
            payload = with_local_results(payload, _sidecar_base(ctx))
    return web.Response(
        status=upstream.status,
        body=payload,
        headers=response_headers,
        content_type="application/json" if upstream.status >= 400 else upstream.content_type,
    )


def _sidecar_base(ctx: RequestContext) -> str:
    """The sidecar's address as the client reached it, with the route's prefix (a route
    mounted at `/claude/` serves the API from `/claude/v1/`)."""
    origin = client_origin(ctx.request, ctx.runtime.config.server.trusted_proxies)
    return origin + ctx.path[: ctx.path.find("/v1/")]


def _claude_headers(ctx: RequestContext, *, json_body: bool = False) -> dict[str, str]:
    """Claude's headers for this call. A body the sidecar parsed and screened (as UTF-8
    JSON) goes as plain `application/json`: a client's `charset=utf-7` (or any other
    parameter) would let Claude read other text from the same bytes than was screened."""
    headers = ctx.runtime.claude.request_headers(ctx.request.headers)
    if json_body:
        headers["content-type"] = "application/json"
    return headers
