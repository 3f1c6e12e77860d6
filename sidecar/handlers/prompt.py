"""The simple streaming endpoint: `POST {"prompt": ...}` or `GET ?prompt=` → SSE tokens.

Event shapes (all on the default `message` event, each with `id: <stream id>:<n>` when
streams are resumable, else `id: N`; the translator writes the id
in the same step as the event; a resumable stream's first client gets `id: <stream id>:0`
with the head, an id-only block that is no event: `PromptTranslator.opening`):
`{"token": "..."}` per text delta, `{"thinking": "..."}` per thinking delta,
`{"tool_use": {"id", "name"}}` when a tool call starts and `{"tool_input": "..."}`
per partial JSON of its input, then `{"done": true, "usage": {...}, "stop_reason": ...}`;
a failure is `{"error": {"type", "message"}}` and the stream closes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from aiohttp import web
from multidict import MultiMapping

from sidecar import deltas, sse
from sidecar.cache.step import CacheStep
from sidecar.cache.step import lookup as cache_lookup
from sidecar.call.run import (
    ClaudeRequest,
    call_claude,
    check_model,
    new_record,
)
from sidecar.errors import bad_request, reject, short_error_type
from sidecar.handlers import resume
from sidecar.handlers.request_body import parse_model, read_json_object, valid_max_tokens
from sidecar.methods import reads
from sidecar.pipeline import RequestContext
from sidecar.policy.claude_schema import Collected
from sidecar.quotas.estimate import estimate_input_tokens
from sidecar.record import Outcome, StreamRecord
from sidecar.sse import json_object, parse_block
from sidecar.stream.core import Translator
from sidecar.stream.store import StreamLog
from sidecar.upstream import Attempt

_FIELDS = {"prompt", "model", "max_tokens", "system", "messages"}
# A content delta's event, one template per delta kind (its `sidecar.deltas` group): Claude's
# JSON string literal goes in as it is, so the common event needs no JSON decoding or encoding.
_TEMPLATES = {
    deltas.TEXT: b'data: {"token":%b}\n\n',
    deltas.THINKING: b'data: {"thinking":%b}\n\n',
    deltas.TOOL_INPUT: b'data: {"tool_input":%b}\n\n',
}
# With its id: `id: N` (a stream that is not resumable), `id: <stream id>:<n>` (one that is).
_NUMBERED = {kind: b"%b%d\n" + template for kind, template in _TEMPLATES.items()}
_PLAIN_PREFIX = b"id: "
_match_delta = deltas.DELTA.match
_DELTA = b"content_block_delta"
_TEXT = deltas.TEXT
_ROLES = {"user", "assistant"}
OWN_OUTCOMES = {"idle_timeout", "shutting_down", "client_stalled"}
# The sidecar's own error types, shown as they are (not mapped like Anthropic's).
OWN_TYPES = {"stream_lost", "stream_abandoned", "cancelled"}


class PromptTranslator(Translator):
    """Claude's events → the prompt route's small JSON events, each with its id.

    A resumable stream's events are numbered from its log (`id: <stream id>:<n>`, the
    final `done` too), written in the same format step as the event; otherwise they are
    numbered `id: N` here (`done` too).
    """

    __slots__ = ("_announce", "_capture", "_log", "_next_id", "_token", "_tools")
    passthrough = False

    def __init__(
        self, *, capture: bool, log: StreamLog | None = None, announce: bool = False
    ) -> None:
        """`log`: a resumable stream's log, whose ids the events carry; `announce`:
        `resume.announce_stream_id` (see `opening`)."""
        self._announce = announce
        self._next_id = 0
        self._capture = capture
        # Indices of the blocks announced as `tool_use`: a `tool_input` belongs to one of
        # them. A server tool Claude runs itself (web search, MCP) is not the page's to run:
        # its input deltas are not shown, as its start and result are not.
        self._tools: set[int] = set()
        self._log = log
        # The text delta's whole event but for its number and string: the id's prefix goes
        # in once per stream, not once per event (`%` in a stream id is kept literal).
        prefix = _PLAIN_PREFIX if log is None else log.id_prefix.replace(b"%", b"%%")
        self._token = prefix + b"%d\n" + _TEMPLATES[deltas.TEXT]

    def opening(self, id_prefix: bytes) -> bytes:
        """An id-only block, `id: <stream id>:0`: no event (no data, so an `EventSource`
        fires nothing), but it sets the `EventSource`'s last event id, which it cannot
        read from the `Sidecar-Stream-Id` header. Cut before the first event, it
        reconnects with `Last-Event-ID: <stream id>:0`, a resume from event 1, instead of
        with none, a second call to Claude. Only with `resume.announce_stream_id`: SSE
        readers other than browsers may yield a block with no data as an empty event."""
        return id_prefix + b"0\n\n" if self._announce else b""

    def _id(self) -> tuple[bytes, int]:
        """The next event's id: (prefix, number)."""
        log = self._log
        if log is not None:
            n = log.numbered = log.numbered + 1
            return log.id_prefix, n
        self._next_id += 1
        return _PLAIN_PREFIX, self._next_id

    def _event(self, data: object) -> bytes:
        return b"%b%d\n" % self._id() + sse.encode(data)

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        if name == _DELTA:
            # Claude's JSON string is reused as is (no decoding) unless content is captured.
            match = None if self._capture else _match_delta(block)
            if match is not None:
                text = match[_TEXT]
                if text is None:
                    return self._other_delta(match)
                log = self._log
                if log is not None:  # numbered from the log, in the same step as the event
                    n = log.numbered = log.numbered + 1
                else:
                    n = self._next_id = self._next_id + 1
                return self._token % (n, text)  # the common event: one format, no lookup
            return self._decoded_delta(block, record)
        if name == b"content_block_start":
            start = json_object(parse_block(block)[1])
            block_data = start.get("content_block") or {}
            if block_data.get("type") == "tool_use":
                index = start.get("index")
                if isinstance(index, int):
                    self._tools.add(index)
                return self._event(
                    {"tool_use": {"id": block_data.get("id"), "name": block_data.get("name")}}
                )
            return b""
        if name == b"error":
            error = json_object(parse_block(block)[1]).get("error") or {}
            return self._event(
                {
                    "error": {
                        "type": short_error_type(str(error.get("type", "api_error"))),
                        "message": str(error.get("message", "")),
                    }
                }
            )
        return b""

    def _other_delta(self, match: re.Match[bytes]) -> bytes:
        """A thinking or tool input delta in Claude's usual spelling, its string reused."""
        kind = deltas.THINKING
        value = match[kind]
        if value is None:
            if int(match[deltas.INDEX]) not in self._tools:
                return b""  # a server tool's input (see `_tools`)
            kind = deltas.TOOL_INPUT
            value = match[kind]
        prefix, n = self._id()
        return _NUMBERED[kind] % (prefix, n, value)

    def _decoded_delta(self, block: bytes, record: StreamRecord) -> bytes:
        """A content delta in any other spelling (or with content captured): decoded."""
        event = json_object(parse_block(block)[1])
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            if self._capture:
                record.completion_parts.append(str(delta.get("text", "")))
            return self._event({"token": delta.get("text", "")})
        if kind == "thinking_delta":
            return self._event({"thinking": delta.get("thinking", "")})
        if kind == "input_json_delta":
            if event.get("index") not in self._tools:
                return b""  # a server tool's input (see `_tools`)
            return self._event({"tool_input": delta.get("partial_json", "")})
        return b""

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        if error_type in OWN_TYPES:
            kind = error_type
        elif outcome in OWN_OUTCOMES:
            kind = outcome
        else:
            kind = short_error_type(error_type)
        return self._event({"error": {"type": kind, "message": message}})

    def finish(self, record: StreamRecord) -> bytes:
        usage = {
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cache_creation_input_tokens": record.cache_creation_input_tokens,
            "cache_read_input_tokens": record.cache_read_input_tokens,
        }
        # Numbered like every event: an answer with no content events (nothing but `done`)
        # still gives a reconnecting `EventSource` a `Last-Event-ID`, so it is not re-run.
        return self._event({"done": True, "usage": usage, "stop_reason": record.stop_reason})


_NAMED: Final = 5  # unknown fields named in a refusal; the client chose them all


def _names(names: list[str]) -> str:
    """Field names for a message, bounded (the first few, each cut to 64 characters)."""
    shown = ", ".join(repr(name[:64]) if len(name) > 64 else name for name in names[:_NAMED])
    more = len(names) - _NAMED
    return f"{shown} and {more} more" if more > 0 else shown


def _query_max_tokens(value: str) -> int:
    """`max_tokens` of a query string (all its values are text) as the JSON body's int."""
    if value.isascii() and value.isdigit():  # "²" is a digit to Python
        try:
            return int(value)
        except ValueError:  # longer than Python converts
            pass
    raise bad_request("max_tokens must be a positive integer")


def _positive_max_tokens(value: object) -> int:
    # Only an int: a JSON body's "64" is a wrong type, as the Messages API holds it.
    if not valid_max_tokens(value):
        raise bad_request("max_tokens must be a positive integer")
    return value


def _validate_messages(messages: object) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise bad_request("messages must be a list of {role, content} objects")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:  # a list role is unhashable
            raise bad_request(f"messages.{i}: needs role 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list) or not content:
            raise bad_request(f"messages.{i}.content must be a non-empty string or list")
    return messages


def parse_prompt(fields: dict[str, Any], default_model: str, default_max: int) -> dict[str, Any]:
    """Validate the prompt route's fields; returns the Anthropic request body (as a dict)."""
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise bad_request(f"unknown fields: {_names(unknown)}")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("prompt is required and must be a string")
    if not prompt.strip():
        raise bad_request("prompt must not be empty")
    # An optional field given as `null` is not given (as `system` always was): its default.
    model = fields.get("model")
    model = parse_model(default_model if model is None else model)
    max_tokens = fields.get("max_tokens")
    max_tokens = _positive_max_tokens(default_max if max_tokens is None else max_tokens)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True}
    system = fields.get("system")
    if system is not None:
        if not isinstance(system, str | list):
            raise bad_request("system must be a string or a list of text blocks")
        body["system"] = system
    messages = fields.get("messages")
    history = _validate_messages([] if messages is None else messages)
    body["messages"] = [*history, {"role": "user", "content": prompt}]
    return body


async def handle_prompt(ctx: RequestContext) -> web.StreamResponse:
    """Validate, screen, admit and stream one prompt."""
    request = ctx.request
    config = ctx.runtime.config
    resumable = resume.enabled_on(ctx, default=True)
    if resumable:
        stream_id = _stream_id_in_path(ctx)
        if stream_id is not None:
            if request.method != "DELETE":
                raise reject(
                    "method_not_allowed", "use DELETE to cancel a stream",
                    headers={"Allow": "DELETE, OPTIONS"},
                )  # fmt: skip
            return await resume.cancel(ctx, stream_id)
        cursor = resume.cursor_of(request)
        if cursor is not None:
            if reads(request.method) and cursor.isascii() and cursor.isdigit():
                # A plain number is a stream that was not resumable (a cached replay, a
                # stream the store could not take): its EventSource is told to stop.
                return web.Response(status=204, headers=ctx.headers)
            return await resume.resume(ctx, cursor, _lost_event)
    elif reads(request.method) and request.headers.get("Last-Event-ID", "").strip():
        # EventSource reconnecting (it does so on its own after every stream ends): streams
        # are not resumable, so say "stop" (204) rather than pay for the prompt again.
        return web.Response(status=204, headers=ctx.headers)
    if request.method == "HEAD":
        # What the GET would answer before its first event, its refusals up to the quota
        # step included, without calling Claude: not admitted, so never a 429 and nothing
        # counted or reserved. The stream's own headers are made as it starts.
        await _checked_call(ctx)
        return web.Response(status=200, headers={**ctx.headers, **sse.HEADERS})
    call, record, cached = await _prompt_call(ctx)
    capture = config.telemetry.capture_content
    if cached.source is not None:  # the route's own events, made from Claude's recorded ones
        replayed = PromptTranslator(capture=capture)
        answered = await cached.serve(record, replayed, call.input_estimate)
        if answered is not None:
            return answered
    try:
        plan = await resume.prepare(ctx) if resumable else None
    except BaseException:
        cached.abandon()
        raise
    translator = PromptTranslator(
        capture=capture,
        log=plan.log if plan is not None else None,
        announce=config.resume.announce_stream_id,
    )
    return await call_claude(ctx, call, record, translator, plan, cached.tap)


async def _checked_call(
    ctx: RequestContext,
) -> tuple[dict[str, Any], dict[str, Any], Collected]:
    """The request's fields, the Claude body built from them and what screening read;
    every refusal of a call's input (method, fields, model, screening) raised here."""
    request = ctx.request
    config = ctx.runtime.config
    if reads(request.method):
        _refuse_non_utf8(request.rel_url.raw_query_string)
        query = request.query
        fields: dict[str, Any] = dict(query)
        if len(fields) != len(query):
            _refuse_repeated(query, ctx)
        fields.pop(_token_param(ctx), None)  # the EventSource credential is not a field
        fields.pop(resume.QUERY, None)  # a resume cursor is not a field either
        if "max_tokens" in fields:
            fields["max_tokens"] = _query_max_tokens(fields["max_tokens"])
    elif request.method == "POST":
        fields = await read_json_object(request, config.server)
    else:
        raise reject(
            "method_not_allowed", "use GET or POST", headers={"Allow": "GET, HEAD, POST, OPTIONS"}
        )
    body = parse_prompt(fields, config.claude.model, config.claude.max_tokens)
    check_model(ctx, body["model"])
    return body, fields, ctx.route.screener.screen_request(body)


async def _prompt_call(ctx: RequestContext) -> tuple[ClaudeRequest, StreamRecord, CacheStep]:
    """The validated, screened call, its record and the cache's decision.

    A function of its own so the request's fields, the body built from them and the
    screened texts are freed before the stream starts instead of living as long as it.
    """
    config = ctx.runtime.config
    body, fields, screened = await _checked_call(ctx)
    record = new_record(ctx, body["model"], body["max_tokens"], stream=True)
    if config.telemetry.capture_content:
        record.prompt_text = fields["prompt"]
    call = ClaudeRequest(
        attempt=Attempt("POST", "/v1/messages", ctx.runtime.claude.request_headers({})),
        body=json.dumps(body).encode(),
        stream=True,
        input_estimate=estimate_input_tokens(screened, ctx.route.policy.quotas),
    )
    return call, record, await cache_lookup(ctx, body, True, call.attempt)


def _lost_event(error_type: str, message: str) -> bytes:
    return sse.encode({"error": {"type": error_type, "message": message}})


def _stream_id_in_path(ctx: RequestContext) -> str | None:
    """`<route>/<stream id>`: the path names one stream (to cancel it). Read from the
    canonical path the route was matched by (`//route/<id>`, `/route/./<id>` name it too)."""
    rest = ctx.path[len(ctx.route.path) :].strip("/")
    return rest or None


def _refuse_non_utf8(raw_query: str) -> None:
    """A 400 for a query string whose escapes spell no UTF-8 (`%FF`, an escaped surrogate),
    as for a JSON body that is not UTF-8: decoded, each bad byte would silently become
    U+FFFD, a prompt the client never wrote. Raw bytes past ASCII (aiohttp's pure-Python
    parser hands them on as `surrogateescape` characters; its C parser refuses them) meet
    the same rule: one that is no UTF-8 would reach Claude as a lone surrogate."""
    if "%" in raw_query or not raw_query.isascii():
        try:
            unquote_to_bytes(raw_query.encode("utf-8", "surrogateescape")).decode()
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise bad_request(
                "the query string is not UTF-8 (its %-escapes spell no UTF-8)"
            ) from None


def _refuse_repeated(query: MultiMapping[str], ctx: RequestContext) -> None:
    """A field in the query string twice is a 400, as a key twice in a JSON body is: which
    copy counts would be a guess. (The credential and the resume cursor are read, and their
    repeats judged, where they are taken.)"""
    taken = {_token_param(ctx), resume.QUERY}
    for name in query:
        if name not in taken and len(query.getall(name)) > 1:
            raise bad_request(
                f"query parameter given more than once: {name[:64]!r}", reason="duplicate_key"
            )


def _token_param(ctx: RequestContext) -> str:
    jwt = ctx.route.policy.auth.jwt
    return jwt.query_param if jwt is not None and jwt.query_param else "access_token"
