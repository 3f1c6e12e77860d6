"""The `ui` route: the Vercel AI SDK's UI message stream, so `useChat` works unchanged.

`POST <route>` takes `DefaultChatTransport`'s body and answers SSE with the header
`x-vercel-ai-ui-message-stream: v1` (translation rules in `ui_request` and `ui_stream`); the
marker goes with a UI message stream only (the translator's, a cache replay's, a resumed
stream's), never with a JSON error or a 204.
Same steps as the other Claude routes: auth and CORS (pipeline), screening of every text
the translated request carries, model policy, quotas and admission, telemetry.

`GET <route>/<chat id>/stream` is the SDK's resume (`useChat({resume: true})` calls it on
mount): the chat's live message from its start (`ui_resume`), or 204 ("nothing to
resume"). With resume on (the default, as on the prompt route), a turn is a resumable
generation: a client that leaves (a reload, useChat's `stop()`) detaches, and the turn
goes on for `resume.detach_grace_seconds` for a reconnect, then stops;
`DELETE <route>/<stream id>` (the `Sidecar-Stream-Id` response header) stops it at once,
and `Last-Event-ID: <stream id>:<n>` reads the events after `n`, as on the prompt route.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sidecar.cache.step import lookup as cache_lookup
from sidecar.call.run import (
    ClaudeRequest,
    call_claude,
    check_model,
    new_record,
)
from sidecar.errors import reject
from sidecar.handlers import resume, ui_resume
from sidecar.handlers.request_body import read_json_object
from sidecar.handlers.ui_request import parse_ui_request
from sidecar.handlers.ui_stream import HEADERS, UiTranslator, closing_chunks
from sidecar.methods import reads
from sidecar.pipeline import RequestContext
from sidecar.quotas.estimate import estimate_input_tokens
from sidecar.upstream import Attempt


def _resume_target(route_path: str, path: str) -> str | None:
    """The chat id of `<route>/<chat id>/stream`, else None."""
    rest = path[len(route_path.rstrip("/")) :]
    parts = rest.strip("/").split("/")
    if len(parts) == 2 and parts[1] == "stream" and parts[0]:
        return parts[0]
    return None


def _stream_id_in_path(route_path: str, path: str) -> str | None:
    """`<route>/<stream id>`: the path names one stream (to cancel it)."""
    rest = path[len(route_path.rstrip("/")) :].strip("/")
    return rest if rest and "/" not in rest else None


def client_part(body: dict[str, Any]) -> dict[str, Any]:
    """The Claude request without what the config added (tool definitions): what the
    client chose, for screening by the shared walker (system, every message block, tool
    inputs and results included)."""
    return {name: value for name, value in body.items() if name != "tools"}


async def handle_ui(ctx: RequestContext) -> web.StreamResponse:
    """Translate, screen, admit and stream one chat turn (or answer a resume probe)."""
    request = ctx.request
    config = ctx.runtime.config
    resumable = resume.enabled_on(ctx, default=True)
    # `Last-Event-ID` first, whatever the path (the chat's `/stream` URL too, as an
    # `EventSource` reconnects there): the events after it, as on the prompt route.
    cursor = resume.cursor_of(request) if resumable else None
    if cursor is not None:
        return await resume.resume(ctx, cursor, ui_resume.lost_event, HEADERS, closing_chunks)
    chat_id = _resume_target(ctx.route.path, ctx.path)
    if reads(request.method) and chat_id is not None:
        if not resumable:
            return web.Response(status=204, headers=ctx.headers)
        return await ui_resume.answer(ctx, chat_id)
    if request.method == "DELETE" and resumable:
        stream_id = _stream_id_in_path(ctx.route.path, ctx.path)
        if stream_id is None:
            raise reject("not_found", "no such chat endpoint")
        return await resume.cancel(ctx, stream_id)
    here = ctx.path.rstrip("/") == ctx.route.path.rstrip("/")
    if request.method != "POST":
        # What this path takes (RFC 9110: a 405's `Allow` lists the target's methods; a
        # plain OPTIONS gets the same list as a 204): each endpoint its own.
        if chat_id is not None:  # the resume read
            use, allow = "use GET to resume a chat's stream", "GET, HEAD, OPTIONS"
        elif resumable and _stream_id_in_path(ctx.route.path, ctx.path) is not None:
            use, allow = "use DELETE to cancel a stream", "DELETE, OPTIONS"
        elif here:
            use, allow = "use POST (or GET <route>/<chat id>/stream to resume)", "POST, OPTIONS"
        else:
            raise reject("not_found", "no such chat endpoint")
        raise reject("method_not_allowed", use, headers={"Allow": allow})
    if not here:
        raise reject("not_found", "no such chat endpoint")
    fields = await read_json_object(request, config.server)
    parsed = parse_ui_request(fields, config.ui, config.claude.model, config.claude.max_tokens)
    body = parsed.body
    check_model(ctx, body["model"])
    collected = ctx.route.screener.screen_request(client_part(body))
    texts = collected.texts
    record = new_record(ctx, body["model"], body["max_tokens"], stream=True)
    if config.telemetry.capture_content:
        record.prompt_text = texts[-1] if texts else ""
    call = ClaudeRequest(
        attempt=Attempt("POST", "/v1/messages", ctx.runtime.claude.request_headers({})),
        body=json.dumps(body).encode(),
        stream=True,
        # What the client sent and the tool definitions the config adds (not screened,
        # but read by Claude as input all the same).
        input_estimate=estimate_input_tokens(
            collected, ctx.route.policy.quotas, config.ui.tools_chars, bool(config.ui.tools)
        ),
    )
    # Regenerate asks for another answer than the one the chat has: never the stored one.
    regenerate = parsed.trigger == "regenerate-message"
    cached = await cache_lookup(ctx, body, True, call.attempt, fresh=regenerate)
    if cached.source is not None:  # the UI parts, made from Claude's recorded events
        answered = await cached.serve(record, UiTranslator(), call.input_estimate)
        if answered is not None:
            return answered
    try:
        plan = await resume.prepare(ctx) if resumable else None
        chat = ui_resume.chat_field(fields)
        if plan is not None and chat is not None:
            await ui_resume.bind(ctx, chat, plan)
    except BaseException:
        cached.abandon()
        raise
    translator = UiTranslator(plan.log if plan is not None else None)
    return await call_claude(ctx, call, record, translator, plan, cached.tap)
