"""Reading a JSON request body within `server.max_body_bytes`, with clear 4xx errors."""

from __future__ import annotations

import json
import re
from typing import Any, Final

from aiohttp import web

from sidecar.errors import Rejection, bad_request

MAX_MODEL_CHARS: Final = 128  # Claude's model ids are a few dozen characters
_MODEL: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_MODEL_CHARS}}}")


def parse_model(value: object) -> str:
    """A request's `model`: printable ASCII, at most MAX_MODEL_CHARS, else 400.

    It becomes a log field and (bounded again by telemetry) a metric label: no client
    may send megabytes or control characters through it.
    """
    if value is None:
        raise bad_request("model: Field required")
    if not isinstance(value, str) or not value:
        raise bad_request("model must be a non-empty string")
    if not _MODEL.fullmatch(value):
        raise bad_request(
            f"model: must be at most {MAX_MODEL_CHARS} printable ASCII characters",
            reason="model_invalid",
        )
    return value


def _too_large(limit: int) -> Rejection:
    return Rejection(
        413, "request_too_large", f"request body exceeds {limit} bytes", reason="body_too_large"
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes (by header first, then by count)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        return await request.read()  # the app's client_max_size is `limit`
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """A JSON object body: 415 for another content type, 413 when too large, 400 when malformed."""
    if request.content_type != "application/json":
        raise Rejection(
            415,
            "invalid_request_error",
            "Content-Type must be application/json",
            reason="unsupported_media_type",
            code="unsupported_media_type",
        )
    raw = await read_body(request, limit)
    return parse_json_object(raw)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object or raise a 400 saying what is wrong."""
    try:
        text = raw.decode()  # RFC 8259: JSON exchanged between systems is UTF-8, nothing else
    except UnicodeDecodeError:
        raise bad_request("body is not UTF-8") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise bad_request(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request("body is nested too deeply") from None
    if not isinstance(value, dict):
        raise bad_request("body must be a JSON object")
    return value
