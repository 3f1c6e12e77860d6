"""Reading request bodies within the server's size and time limits, with clear 4xx errors.

The traffic listener never decompresses on its own (the app route forwards bodies
exactly as received). Routes that read a body themselves decode its
`Content-Encoding` here, bounded by `server.max_body_bytes` after decoding, so what
is screened is what is sent on.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from sidecar import expectation
from sidecar.config import ServerConfig
from sidecar.content_coding import CodingError, coding_names, decode
from sidecar.errors import Rejection, bad_request, reject
from sidecar.int64 import INT64

MAX_MODEL_CHARS: Final = 128  # Claude's model ids are a few dozen characters
_MODEL: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_MODEL_CHARS}}}")


def valid_max_tokens(value: object) -> TypeGuard[int]:
    """A request's `max_tokens`: an int (not a bool) from 1 to INT64 - 1.

    Far above any model's limit (Claude refuses such a call), the bound keeps a client's
    number one that every place it reaches takes: the quota's reservation (sent to Redis,
    named in a refusal), the span's int attribute. A larger one would raise there.
    """
    return type(value) is int and 0 < value < INT64


def parse_model(value: object) -> str:
    """A request's `model`: visible ASCII (no space), at most MAX_MODEL_CHARS, else 400.

    It becomes a log field and (bounded again by telemetry) a metric label: no client
    may send megabytes or control characters through it.
    """
    if value is None:
        raise bad_request("model: Field required")
    if not isinstance(value, str) or not value:
        raise bad_request("model must be a non-empty string")
    if not _MODEL.fullmatch(value):
        raise bad_request(
            f"model: must be at most {MAX_MODEL_CHARS} visible ASCII characters "
            "(no spaces or control characters)",
            reason="model_invalid",
        )
    return value


def _too_large(limit: int) -> Rejection:
    return reject("body_too_large", f"request body exceeds {limit} bytes")


def body_timeout() -> Rejection:
    """408 for a body that did not arrive in time; the connection is not reused."""
    return reject(
        "body_timeout", "the request body did not arrive in time", headers={"Connection": "close"}
    )


def malformed_body() -> Rejection:
    """400 for a body whose framing (chunks, length) broke while it was read."""
    return bad_request("the request body was malformed or cut short", reason="bad_body")


async def read_body(request: web.Request, server: ServerConfig) -> bytes:
    """The whole body, decoded: 413 above `max_body_bytes` (sent or decoded), 408 when it
    takes longer than `body_read_timeout_seconds`, 415/400 for an encoding it cannot decode."""
    limit = server.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    await expectation.answer(request)  # `Expect: 100-continue`: the body is wanted now
    content = request.content
    try:
        if content.is_eof():
            # It all came with the head: taken from the buffer at once, not gathered chunk
            # by chunk as `read()` does, and bounded as `read()` is (client_max_size).
            raw = content.read_nowait()
            if len(raw) > limit:
                raise _too_large(limit)
        else:
            async with asyncio.timeout(server.body_read_timeout_seconds):
                raw = await request.read()  # the listener's client_max_size is `limit`
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        raise body_timeout() from None
    except (web.RequestPayloadError, BadHttpMessage):
        raise malformed_body() from None
    except ConnectionError:
        raise client_gone() from None
    encodings = request.headers.getall("Content-Encoding", ())
    return decode_body(raw, encodings, limit) if encodings else raw


def decode_body(raw: bytes, encodings: tuple[str, ...] | list[str], limit: int) -> bytes:
    """`raw` with its content codings undone (last applied first), at most `limit` bytes."""
    try:
        return decode(raw, coding_names(encodings), limit)
    except CodingError as exc:
        if exc.kind == "unsupported":
            raise reject("unsupported_encoding", str(exc)) from None
        if exc.kind == "too_large":
            raise _too_large(limit) from None
        raise bad_request(str(exc)) from None


def ensure_client_present(request: web.Request) -> None:
    """Raise (499) if the client has closed or half-closed its connection: whatever is
    called next (Claude, the app) would work for nobody. Check right before calling."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise client_gone()


def client_gone() -> Rejection:
    """499 (never seen by anyone: there is no client left), counted as a rejection."""
    return reject("client_disconnected", "the client closed the connection")


@dataclass(slots=True)
class BodyStream:
    """A request body passed on as it arrives, cut when the client goes quiet too long.

    `stalled` / `broken` say afterwards whether a failed upload was the client's doing.
    With `sending` set, each chunk must be taken (written on, the sender's buffer drained)
    within `send_timeout`, or that deadline cuts the call: `passing_on` then says the
    upload was waiting on the receiver.
    """

    request: web.Request
    idle_timeout: float
    stalled: bool = False
    broken: bool = False
    on_end: Callable[[], None] | None = None  # called once the last byte has been passed on
    sending: asyncio.Timeout | None = None
    send_timeout: float = 0.0
    passing_on: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (no decoding, no buffering)."""
        await expectation.answer(self.request)  # `Expect: 100-continue`: wanted now
        content = self.request.content
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                self.stalled = True
                raise
            except (web.RequestPayloadError, BadHttpMessage, ConnectionError):
                self.broken = True  # bad chunked framing, or the client went away mid-body
                raise
            if not chunk:
                if self.on_end is not None:
                    self.on_end()
                return
            sending = self.sending
            if sending is None:
                yield chunk
                continue
            # Resumed once the receiver took it: a receiver that reads nothing holds the
            # upload (and the client) no longer than `send_timeout`.
            self.passing_on = True
            sending.reschedule(asyncio.get_running_loop().time() + self.send_timeout)
            yield chunk
            self.passing_on = False
            if self.sending is not None:  # cleared once the answer's head came
                self.sending.reschedule(None)


async def read_json_object(request: web.Request, server: ServerConfig) -> dict[str, Any]:
    """A JSON object body: 415 for another content type, 413 when too large, 400 when malformed."""
    if request.content_type != "application/json":
        raise reject("unsupported_media_type", "Content-Type must be application/json")
    raw = await read_body(request, server)
    return parse_json_object(raw)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return value


def _no_constant(name: str) -> Any:
    # Python's decoder reads NaN and Infinity; RFC 8259 has no such numbers, and Claude
    # refuses them: a body with one is refused here, before quotas are spent on it.
    raise ValueError(f"{name} is not a JSON number")


# Built once: `json.loads` with a hook would build a decoder (and its scanner) per call.
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
# An escape of a UTF-16 surrogate: the only way a JSON text decodes to a lone one.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    """Whether a decoded value holds a surrogate no pair completed (in a key or a string).

    The decoder joins a high and a low escape into one character, so any surrogate left
    is lone: text no UTF-8 encoder (the cache key, a log line, Claude) can write.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object or raise a 400 saying what is wrong.

    A key twice in one object is refused: parsers disagree on which copy wins, and
    the bytes sent on must mean to Claude exactly what was screened here. So is a
    `\\u` escape of a lone surrogate (`"\\ud800"`): it is no Unicode text, for screening
    or for Claude.
    """
    try:
        text = raw.decode()  # RFC 8259: JSON exchanged between systems is UTF-8, nothing else
    except UnicodeDecodeError:
        raise bad_request("body is not UTF-8") from None
    value = parse_json_text(text)
    if not isinstance(value, dict):
        raise bad_request("body must be a JSON object")
    return value


def parse_json_text(text: str) -> Any:
    """Any JSON text a client wrote, by the rules of a request body (`parse_json_object`):
    a 400 for a key twice, `NaN` or `Infinity`, a lone surrogate's escape,
    nesting too deep for Python, or anything else that is not JSON. JSON inside a client's
    string (a UI tool part's `errorText`) is read by the same rules, never `json.loads`."""
    try:
        if text.startswith("\ufeff"):  # as `json.loads` refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except _DuplicateKey as exc:
        key = str(exc.args[0])
        raise bad_request(
            f"body has a duplicate key: {key[:64]!r}", reason="duplicate_key"
        ) from None
    except ValueError as exc:
        raise bad_request(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request("body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
        raise bad_request("body is not valid JSON: a \\u escape names a lone UTF-16 surrogate")
    return value
