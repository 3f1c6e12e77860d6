"""Errors as types, rendered in one place per route family.

A `Rejection` is any early answer of the pipeline (auth, CORS, screening, quotas,
admission, bad input, upstream failure before the first byte). Handlers raise it;
`render_json` turns it into the body the route's clients understand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, Literal

Family = Literal["anthropic", "prompt", "app"]

# Anthropic error type → the short type used by the prompt route and the app proxy.
_SHORT_TYPES: Final[dict[str, str]] = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "unauthorized",
    "permission_error": "forbidden",
    "not_found_error": "not_found",
    "request_too_large": "request_too_large",
    "rate_limit_error": "rate_limited",
    "api_error": "upstream_error",
    "timeout_error": "timeout",
    "overloaded_error": "overloaded",
}


class Rejection(Exception):
    """An answer before any response byte: status, Anthropic error type, message.

    `reason` is the bounded metric label (e.g. `auth_invalid_token`, `quota_tokens`);
    `code` overrides the short type on the prompt route (e.g. `prompt_rejected`).
    """

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        reason: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.reason = reason
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def short_type(self) -> str:
        return self.code or _SHORT_TYPES.get(self.error_type, self.error_type)


def short_error_type(error_type: str) -> str:
    """The prompt route's name for an Anthropic error type."""
    return _SHORT_TYPES.get(error_type, error_type)


def anthropic_error_body(error_type: str, message: str, request_id: str) -> bytes:
    """Anthropic's error JSON, so SDKs raise the right exception."""
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body).encode()


def simple_error_body(error_type: str, message: str) -> bytes:
    """`{"error": {...}}` as used by the prompt route and the app proxy."""
    return json.dumps({"error": {"type": error_type, "message": message}}).encode()


def render_json(rejection: Rejection, family: Family, request_id: str) -> bytes:
    """The JSON body of a rejection for one route family."""
    if family == "anthropic":
        return anthropic_error_body(rejection.error_type, rejection.message, request_id)
    return simple_error_body(rejection.short_type, rejection.message)


def bad_request(
    message: str, *, reason: str = "invalid_request", code: str | None = None
) -> Rejection:
    return Rejection(400, "invalid_request_error", message, reason=reason, code=code)
