"""A fake Claude that speaks the Messages API exactly: the `builtin:fake` runtime and the test peer.

Output is deterministic (derived from the prompt), paced by tokens/second and time
to first token, and faults are chosen per request, by `x-fake-<knob>` headers or by a
directive in the last user message (so they pass through proxies and `?prompt=`):

    [[fake fault=overloaded retry_after=2 tokens=50 tps=100 ttft_ms=10 content=tool_use]]

Knobs: tokens, tps, ttft_ms, content (text | tool_use | thinking), stamp (1: each text
delta is its send time in ns, for benchmarks), fault (rate_limit | overloaded |
server_error | bad_request | auth | midstream_error | stall | stall_before_start |
drop | slow_headers), retry_after, after (events before a mid-stream fault),
delay_ms (slow_headers), fail_times + fail_key (fault only the first N requests
carrying that key).

    python -m sidecar.fake_claude --port 8000 [--tokens 40 --tps 0 --ttft-ms 0 --api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import re
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_DIRECTIVE = re.compile(r"\[\[fake\s+([^\]]*)\]\]")
_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streams", "of", "tokens", "flow", "through", "sidecars", "into", "browsers", "and", "every", "event", "arrives", "as", "soon", "as", "it", "is", "sent"]
_ERRORS = {
    "rate_limit": (429, "rate_limit_error", "Number of requests has exceeded your rate limit"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "bad_request": (400, "invalid_request_error", "Invalid request"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
}
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


@dataclass
class FakeSettings:
    """Process-wide defaults; every knob is overridable per request."""

    tokens: int = 40
    tps: float = 0.0
    ttft_ms: float = 0.0
    api_key: str | None = None


@dataclass
class FakeClaudeState:
    """What the fake saw, for tests: requests, counters and per-stream send times."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    open_streams: int = 0
    sent_at: dict[str, list[float]] = field(default_factory=dict)  # message id -> monotonic()
    fail_counts: Counter[str] = field(default_factory=Counter)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "open_streams": self.open_streams}

    def reset(self) -> None:
        self.requests.clear()
        self.counters.clear()
        self.sent_at.clear()
        self.fail_counts.clear()


FAKE_STATE: web.AppKey[FakeClaudeState] = web.AppKey("fake_state", FakeClaudeState)
FAKE_SETTINGS: web.AppKey[FakeSettings] = web.AppKey("fake_settings", FakeSettings)


# --------------------------------------------------------------------------- requests


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def parse_directive(text: str) -> dict[str, str]:
    """`[[fake a=1 b=x]]` anywhere in the text → {"a": "1", "b": "x"}."""
    match = _DIRECTIVE.search(text)
    if match is None:
        return {}
    return dict(pair.split("=", 1) for pair in match.group(1).split() if "=" in pair)


def knobs_of(request: web.Request, body: dict[str, Any]) -> dict[str, str]:
    knobs = parse_directive(last_user_text(body))
    for name, value in request.headers.items():
        if name.lower().startswith("x-fake-"):
            knobs[name.lower()[7:].replace("-", "_")] = value
    return knobs


def input_tokens(body: dict[str, Any]) -> int:
    chars = len(_text_of(body.get("system"))) + sum(
        len(_text_of(m.get("content"))) for m in body.get("messages") or [] if isinstance(m, dict)
    )
    return max(1, math.ceil(chars / 4))


def words_for(prompt: str, count: int) -> list[str]:
    """Deterministic output: the prompt's hash picks where the word cycle starts."""
    start = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    return [("" if i == 0 else " ") + _WORDS[(start + i) % len(_WORDS)] for i in range(count)]


def error_response(
    status: int, error_type: str, message: str, retry_after: str | None
) -> web.Response:
    request_id = "req_" + secrets.token_hex(8)
    headers = {"request-id": request_id}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    return web.json_response(body, status=status, headers=headers)


def _validate(body: Any, *, counting: bool) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if counting:
        return None if isinstance(body.get("messages"), list) else "messages: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required"
    return None


# --------------------------------------------------------------------------- events


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


@dataclass
class Script:
    """The content blocks and usage of one reply."""

    model: str
    message_id: str
    input_tokens: int
    blocks: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]  # (type, start, deltas)
    stop_reason: str
    output_tokens: int


def make_script(body: dict[str, Any], knobs: dict[str, str], settings: FakeSettings) -> Script:
    max_tokens = int(body["max_tokens"])
    wanted = int(knobs.get("tokens", settings.tokens))
    count = min(wanted, max_tokens)
    stop = "max_tokens" if wanted > max_tokens else "end_turn"
    prompt = last_user_text(body)
    if knobs.get("stamp") == "1":
        words: list[str] = [""] * count  # filled with send times while streaming
    else:
        words = words_for(prompt, count)
    blocks: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []
    content = knobs.get("content", "text")
    if content == "thinking":
        thoughts = [{"type": "thinking_delta", "thinking": w} for w in words_for("t" + prompt, 3)]
        thoughts.append({"type": "signature_delta", "signature": "sig_" + "a" * 16})
        blocks.append(("thinking", {"type": "thinking", "thinking": "", "signature": ""}, thoughts))
    blocks.append(("text", {"type": "text", "text": ""}, [
        {"type": "text_delta", "text": w} for w in words
    ]))  # fmt: skip
    if content == "tool_use":
        tools = body.get("tools") or []
        name = (
            tools[0].get("name", "get_weather")
            if tools and isinstance(tools[0], dict)
            else "get_weather"
        )
        parts = ['{"city": "Par', 'is"}']
        blocks.append((
            "tool_use",
            {"type": "tool_use", "id": "toolu_" + secrets.token_hex(8), "name": name, "input": {}},
            [{"type": "input_json_delta", "partial_json": p} for p in parts],
        ))  # fmt: skip
        stop = "tool_use"
    deltas = sum(len(d) for _, _, d in blocks)
    return Script(
        model=body["model"],
        message_id="msg_" + secrets.token_hex(12),
        input_tokens=input_tokens(body),
        blocks=blocks,
        stop_reason=stop,
        output_tokens=max(1, deltas),
    )


def _usage(script: Script, output: int) -> dict[str, int]:
    return {
        "input_tokens": script.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    }


def message_json(script: Script) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for kind, start, deltas in script.blocks:
        block = dict(start)
        if kind == "text":
            block["text"] = "".join(d["text"] for d in deltas)
        elif kind == "thinking":
            block["thinking"] = "".join(d.get("thinking", "") for d in deltas)
            block["signature"] = next(
                (d["signature"] for d in deltas if d["type"] == "signature_delta"), ""
            )
        elif kind == "tool_use":
            block["input"] = json.loads("".join(d["partial_json"] for d in deltas))
        content.append(block)
    return {
        "id": script.message_id, "type": "message", "role": "assistant", "content": content,
        "model": script.model, "stop_reason": script.stop_reason, "stop_sequence": None,
        "usage": _usage(script, script.output_tokens),
    }  # fmt: skip


# --------------------------------------------------------------------------- handlers


async def _stream(
    request: web.Request, script: Script, knobs: dict[str, str], settings: FakeSettings
) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    fault = knobs.get("fault", "")
    after = int(knobs.get("after", 3))
    tps = float(knobs.get("tps", settings.tps))
    interval = 1 / tps if tps > 0 else 0.0
    ttft = float(knobs.get("ttft_ms", settings.ttft_ms)) / 1000
    stamp = knobs.get("stamp") == "1"
    response = web.StreamResponse(
        headers={**_SSE_HEADERS, "request-id": "req_" + secrets.token_hex(8)}
    )
    await response.prepare(request)
    sent = state.sent_at.setdefault(script.message_id, [])
    state.counters["streams_started"] += 1
    state.open_streams += 1
    count = 0

    async def send(chunk: bytes) -> None:
        nonlocal count
        await response.write(chunk)
        sent.append(time.monotonic())
        count += 1

    try:
        if fault == "stall_before_start":
            await response.write(b"")
            await asyncio.Event().wait()
        start = {
            "type": "message_start",
            "message": {
                "id": script.message_id, "type": "message", "role": "assistant", "content": [],
                "model": script.model, "stop_reason": None, "stop_sequence": None,
                "usage": _usage(script, 1),
            },
        }  # fmt: skip
        await send(_event("message_start", start))
        if fault == "stall":
            await asyncio.Event().wait()
        if ttft:
            await asyncio.sleep(ttft)
        for index, (_, block_start, deltas) in enumerate(script.blocks):
            await send(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block_start},
                )
            )
            if index == 0:
                await send(b'event: ping\ndata: {"type": "ping"}\n\n')
            for delta in deltas:
                if count >= after and fault in ("midstream_error", "drop"):
                    if fault == "drop":
                        state.counters["streams_dropped"] += 1
                        assert request.transport is not None
                        request.transport.abort()
                        return response
                    await send(
                        _event(
                            "error",
                            {
                                "type": "error",
                                "error": {"type": "overloaded_error", "message": "Overloaded"},
                            },
                        )
                    )
                    state.counters["streams_errored"] += 1
                    return response
                if stamp:
                    delta = {"type": "text_delta", "text": f"{time.monotonic_ns()} "}
                await send(
                    _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
                if interval:
                    await asyncio.sleep(interval)
            await send(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        await send(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": script.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": script.output_tokens},
        }))  # fmt: skip
        await send(_event("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        state.counters["streams_completed"] += 1
    except (asyncio.CancelledError, ConnectionResetError):
        state.counters["streams_cancelled"] += 1
        raise
    finally:
        state.open_streams -= 1
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    settings = request.app[FAKE_SETTINGS]
    state.counters["requests"] += 1
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "invalid_request_error", "body is not valid JSON", None)
    state.requests.append(
        {
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body,
        }
    )
    if settings.api_key is not None:
        given = request.headers.get("x-api-key") or request.headers.get(
            "Authorization", ""
        ).removeprefix("Bearer ")
        if given != settings.api_key:
            return error_response(401, "authentication_error", "invalid x-api-key", None)
    problem = _validate(body, counting=request.path.endswith("/count_tokens"))
    if problem is not None:
        return error_response(400, "invalid_request_error", problem, None)
    knobs = knobs_of(request, body)
    fault = knobs.get("fault", "")
    if "fail_key" in knobs:
        key = knobs["fail_key"]
        state.fail_counts[key] += 1
        if state.fail_counts[key] > int(knobs.get("fail_times", 1)):
            fault = knobs["fault"] = ""
    if fault == "slow_headers":
        await asyncio.sleep(float(knobs.get("delay_ms", 1000)) / 1000)
    if fault in _ERRORS:
        status, error_type, message = _ERRORS[fault]
        state.counters[f"faults_{fault}"] += 1
        return error_response(status, error_type, message, knobs.get("retry_after"))
    if request.path.endswith("/count_tokens"):
        return web.json_response({"input_tokens": input_tokens(body)})
    script = make_script(body, knobs, settings)
    if not body.get("stream"):
        state.counters["messages_completed"] += 1
        return web.json_response(
            message_json(script), headers={"request-id": "req_" + secrets.token_hex(8)}
        )
    return await _stream(request, script, knobs, settings)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAKE_STATE].stats())


async def reset(request: web.Request) -> web.Response:
    request.app[FAKE_STATE].reset()
    return web.json_response({"reset": True})


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, "not_found_error", f"Not found: {request.path}", None)


def make_fake_claude_app(settings: FakeSettings | None = None) -> web.Application:
    """The fake's aiohttp app (its state under FAKE_STATE)."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[FAKE_STATE] = FakeClaudeState()
    app[FAKE_SETTINGS] = settings or FakeSettings()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", messages)
    app.router.add_get("/_fake/stats", stats)
    app.router.add_post("/_fake/reset", reset)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


@dataclass
class FakeServer:
    url: str
    state: FakeClaudeState
    app: web.Application


@contextlib.asynccontextmanager
async def running_fake_claude(
    settings: FakeSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeServer]:
    """Serve the fake on a real socket (port 0: a free one) for the block's duration."""
    app = make_fake_claude_app(settings)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound: Any = runner.addresses[0]
    try:
        yield FakeServer(url=f"http://{host}:{bound[1]}", state=app[FAKE_STATE], app=app)
    finally:
        await runner.cleanup()


async def _serve(args: argparse.Namespace) -> None:
    settings = FakeSettings(args.tokens, args.tps, args.ttft_ms, args.api_key)
    async with running_fake_claude(settings, args.host, args.port) as server:
        print(f"fake claude listening on {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar.fake_claude", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--tps", type=float, default=0.0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args))
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
