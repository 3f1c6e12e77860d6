"""The fake's HTTP surface: Messages API routes, Anthropic-shaped errors, /_fake/* for tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from sidecar.fake_claude.batches import BatchError, BatchStore
from sidecar.fake_claude.history import history_error
from sidecar.fake_claude.knobs import (
    ERROR_FAULTS,
    FakeSettings,
    KnobError,
    Knobs,
    header_knobs,
    parse_directive,
    resolve_knobs,
)
from sidecar.fake_claude.models import ModelQueryError, model_info, model_page
from sidecar.fake_claude.reply import (
    encode_events,
    estimate_input_tokens,
    last_user_text,
    message_json,
    plan_reply,
)
from sidecar.fake_claude.state import FAKE_STATE, FakeClaudeState, ReceivedRequest
from sidecar.fake_claude.stream import abort_connection, stream_reply, until_client_leaves

FAKE_SETTINGS = web.AppKey("fake_claude_settings", FakeSettings)
FAKE_BATCHES = web.AppKey("fake_claude_batches", BatchStore)
MAX_BODY_BYTES = 32 * 1024 * 1024  # the real API's request size limit
_NOT_JSON = object()
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ApiError(Exception):
    """An error the fake answers in Anthropic's shape (rendered once, by `error_response`)."""

    def __init__(
        self, status: int, error_type: str, message: str, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.retry_after = retry_after


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def json_response(data: Mapping[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=_compact(data).encode(),
        content_type="application/json",
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    """`{"type":"error","error":{...},"request_id":...}` with the same id in `request-id`."""
    request_id = new_request_id()
    headers = {"request-id": request_id}
    if error.retry_after is not None:
        headers["retry-after"] = error.retry_after
    body = {
        "type": "error",
        "error": {"type": error.error_type, "message": error.message},
        "request_id": request_id,
    }
    return json_response(body, error.status, **headers)


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


# --------------------------------------------------------------------------- /v1/messages


async def handle_messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages and /v1/messages/count_tokens."""
    try:
        return await _answer(request)
    except ApiError as error:
        return error_response(error)
    except ConnectionResetError:  # the client left during a non-streaming stall
        return web.Response()


async def _answer(request: web.Request) -> web.StreamResponse:
    state, settings = request.app[FAKE_STATE], request.app[FAKE_SETTINGS]
    received = await _receive(request, state)
    _authenticate(request, settings)  # the API checks the key before the body
    body = _json_object(received)
    counting = request.path.endswith("/count_tokens")
    _validate(body, counting)
    knobs = _knobs(request, body, settings)
    fault = _fault_now(knobs, state)
    if fault == "slow_headers":
        await asyncio.sleep(knobs.delay_ms / 1000)
    if fault in ERROR_FAULTS:
        status, error_type, message = ERROR_FAULTS[fault]
        message = message.replace("{model}", str(body["model"]))
        raise ApiError(status, error_type, message, knobs.retry_after)
    if counting:
        return json_response({"input_tokens": estimate_input_tokens(body)})
    reply = plan_reply(body, knobs, settings.model)
    if body.get("stream"):
        events = encode_events(reply, stamp=knobs.stamp)
        # The fault as this request gets it (`fail_times`/`fail_key` may have spent it).
        played = knobs if fault == knobs.fault else dataclasses.replace(knobs, fault=fault)
        return await stream_reply(request, state, reply.message_id, events, played)
    if fault in ("stall", "stall_before_start", "stall_midstream"):
        await until_client_leaves(request, state)
    if fault == "drop":
        abort_connection(request)
        return web.Response()
    if fault == "midstream_error":  # without a stream, the same overload is an error status
        raise ApiError(*ERROR_FAULTS["overloaded"], knobs.retry_after)
    await _generation_time(knobs, reply.output_tokens)
    state.counters["messages_completed"] += 1
    return json_response(message_json(reply))


async def _receive(request: web.Request, state: FakeClaudeState) -> Any:
    """Record the request; return its parsed body, or _NOT_JSON."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        state.received(_received(request, None))
        raise ApiError(413, "request_too_large", "Request exceeds the maximum size") from None
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):  # nested deeper than Python's decoder reads
        body = _NOT_JSON
    state.received(_received(request, None if body is _NOT_JSON else body))
    return body


def _json_object(body: Any) -> dict[str, Any]:
    if body is _NOT_JSON:
        raise invalid("The request body is not valid JSON.")
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def _received(request: web.Request, body: Any) -> ReceivedRequest:
    headers = {name.lower(): value for name, value in request.headers.items()}
    peer = request.transport.get_extra_info("peername") if request.transport else None
    where = f"{peer[0]}:{peer[1]}" if peer else ""
    return ReceivedRequest(request.method, request.path, headers, body, where, request.raw_path)


def _authenticate(request: web.Request, settings: FakeSettings) -> None:
    if settings.api_key is None:
        return
    bearer = request.headers.get("Authorization", "")
    given = request.headers.get("x-api-key") or bearer.removeprefix("Bearer ").strip()
    if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise ApiError(401, "authentication_error", "invalid x-api-key")


def _validate(body: Mapping[str, Any], counting: bool) -> None:
    """The checks the real API makes first (count_tokens needs no max_tokens)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if not counting and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise invalid("max_tokens: Field required" if max_tokens is None
                      else "max_tokens: Input should be a positive integer")  # fmt: skip
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages: Field required")
    if not messages:
        raise invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid("stream: Input should be a valid boolean")
    error = history_error(body)
    if error is not None:
        raise invalid(error)


def _knobs(request: web.Request, body: Mapping[str, Any], settings: FakeSettings) -> Knobs:
    """Directive knobs, overridden by `x-fake-*` headers, over the process settings."""
    try:
        raw = parse_directive(last_user_text(body)) | header_knobs(request.headers)
        return resolve_knobs(raw, settings)
    except KnobError as error:
        raise invalid(str(error)) from None


def _fault_now(knobs: Knobs, state: FakeClaudeState) -> str | None:
    """The fault to apply to this request: fail_times/fail_key limit it to the first N."""
    fault = knobs.fault
    if fault is not None and (knobs.fail_key is not None or knobs.fail_times is not None):
        key = knobs.fail_key or ""
        state.fail_counts[key] += 1
        if state.fail_counts[key] > (1 if knobs.fail_times is None else knobs.fail_times):
            return None
    if fault is not None:
        state.fault_applied(fault)
    return fault


async def _generation_time(knobs: Knobs, output_tokens: int) -> None:
    # A non-streaming reply takes as long as its stream would have.
    seconds = knobs.ttft_ms / 1000 + (output_tokens / knobs.tps if knobs.tps > 0 else 0.0)
    if seconds:
        await asyncio.sleep(seconds)


async def handle_models(request: web.Request) -> web.Response:
    """GET /v1/models (one page) and GET /v1/models/{model_id}, as the Models API answers."""
    request.app[FAKE_STATE].received(_received(request, None))
    settings = request.app[FAKE_SETTINGS]
    try:
        _authenticate(request, settings)
        model_id = request.match_info.get("model_id")
        if model_id is None:
            return json_response(model_page(request.query, settings.model))
        found = model_info(model_id, settings.model)
        if found is None:
            raise ApiError(404, "not_found_error", f"model: {model_id}")
        return json_response(found)
    except ModelQueryError as error:
        return error_response(invalid(str(error)))
    except ApiError as error:
        return error_response(error)


# --------------------------------------------------------------------------- /v1/messages/batches


def _messages_params(params: Mapping[str, Any]) -> None:
    """A batch request's params, checked as `POST /v1/messages` checks its body."""
    try:
        _validate(params, counting=False)
    except ApiError as error:
        raise ValueError(error.message) from None


async def handle_batches(request: web.Request) -> web.Response:
    """The Message Batches API: create, list, retrieve, results, cancel, delete."""
    state, settings = request.app[FAKE_STATE], request.app[FAKE_SETTINGS]
    store = request.app[FAKE_BATCHES]
    try:
        body = await _receive(request, state)  # recorded; a GET's empty body is not JSON
        _authenticate(request, settings)
        batch_id, action = request.match_info.get("batch_id"), request.match_info.get("action")
        if batch_id is None:
            if request.method == "GET":
                return json_response(store.page())
            origin = f"{request.scheme}://{request.host}"
            return json_response(
                store.create(_json_object(body), origin, settings, _messages_params)
            )
        batch = store.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"batch: {batch_id}")
        if action == "results":
            return web.Response(body=batch.results, content_type="application/binary")
        if request.method == "DELETE":
            store.delete(batch_id)
            return json_response({"id": batch_id, "type": "message_batch_deleted"})
        return json_response(batch.info)  # retrieve; cancel (an ended batch stays ended)
    except BatchError as error:
        return error_response(invalid(str(error)))
    except ApiError as error:
        return error_response(error)


# --------------------------------------------------------------------------- /_fake, 404, app


async def handle_stats(request: web.Request) -> web.Response:
    return json_response(request.app[FAKE_STATE].stats())


async def handle_reset(request: web.Request) -> web.Response:
    request.app[FAKE_STATE].reset()
    return json_response({"reset": True})


async def handle_release(request: web.Request) -> web.Response:
    """End every stall begun so far: those replies go on as if they had not stalled."""
    state = request.app[FAKE_STATE]
    state.releases += 1
    return json_response({"releases": state.releases})


async def handle_not_found(request: web.Request) -> web.Response:
    request.app[FAKE_STATE].received(_received(request, None))
    return error_response(
        ApiError(404, "not_found_error", f"Not found: {request.method} {request.path}")
    )


# The API's limits per minute, announced on every Messages API answer (as one tier's are).
RATE_LIMITS: Final = (
    ("requests", 4000), ("tokens", 2_400_000),
    ("input-tokens", 2_000_000), ("output-tokens", 400_000),
)  # fmt: skip


def ratelimit_headers(status: int, retry_after: str | None) -> dict[str, str]:
    """`anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
    reset}` as the API sends them: a 429 has spent the input tokens (the fake's rate-limit
    message) and resets after its `retry-after`; otherwise one request is spent."""
    now = time.time()
    wait = int(retry_after) if retry_after and retry_after.isdigit() else 60
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(now) + wait))
    headers: dict[str, str] = {}
    for name, limit in RATE_LIMITS:
        remaining = limit - 1 if name == "requests" else limit
        if status == 429 and name in ("tokens", "input-tokens"):
            remaining = 0
        prefix = "anthropic-ratelimit-" + name
        headers |= {f"{prefix}-limit": str(limit), f"{prefix}-remaining": str(remaining),
                    f"{prefix}-reset": reset}  # fmt: skip
    return headers


async def _add_api_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Once per response, before its headers go: `request-id` on every answer, and on the
    Messages API's (streams and errors alike; not a refused key) its rate-limit headers."""
    response.headers.setdefault("request-id", new_request_id())
    if request.path.startswith("/v1/messages") and response.status != 401:
        response.headers.update(
            ratelimit_headers(response.status, response.headers.get("retry-after"))
        )


def make_fake_claude_app(settings: FakeSettings | None = None) -> web.Application:
    """The fake Claude as an aiohttp app; what it saw is in `app[FAKE_STATE]`."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[FAKE_STATE] = FakeClaudeState()
    app[FAKE_SETTINGS] = settings or FakeSettings()
    app[FAKE_BATCHES] = BatchStore()
    app.router.add_post("/v1/messages", handle_messages)
    app.router.add_post("/v1/messages/count_tokens", handle_messages)
    app.router.add_post("/v1/messages/batches", handle_batches)
    app.router.add_get("/v1/messages/batches", handle_batches)
    app.router.add_get("/v1/messages/batches/{batch_id}", handle_batches)
    app.router.add_delete("/v1/messages/batches/{batch_id}", handle_batches)
    app.router.add_get("/v1/messages/batches/{batch_id}/{action:results}", handle_batches)
    app.router.add_post("/v1/messages/batches/{batch_id}/{action:cancel}", handle_batches)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/v1/models/{model_id}", handle_models)
    app.router.add_get("/_fake/stats", handle_stats)
    app.router.add_post("/_fake/reset", handle_reset)
    app.router.add_post("/_fake/release", handle_release)
    app.router.add_route("*", "/{tail:.*}", handle_not_found)
    app.on_response_prepare.append(_add_api_headers)
    return app


@dataclass(frozen=True)
class FakeServer:
    """A fake listening on a real socket."""

    url: str  # e.g. http://127.0.0.1:40123 (no trailing slash)
    port: int
    state: FakeClaudeState
    app: web.Application


@contextlib.asynccontextmanager
async def running_fake_claude(
    settings: FakeSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeServer]:
    """Serve the fake on `host:port` (0: a free port) for the duration of the block."""
    app = make_fake_claude_app(settings)
    # handler_cancellation: a client that leaves cancels its handler at once (counted, and
    # stalled streams end); no access log: the fake is the upstream of CPU benchmarks.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = int(runner.addresses[0][1])
        url_host = f"[{host}]" if ":" in host else host
        yield FakeServer(f"http://{url_host}:{bound}", bound, app[FAKE_STATE], app)
    finally:
        await runner.cleanup()
