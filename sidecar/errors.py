"""Errors as types, rendered in one place per route family.

A `Rejection` is any early answer of the pipeline (auth, CORS, screening, quotas,
admission, bad input, upstream failure before the first byte). Handlers raise it;
`render_json` turns it into the body the route's clients understand.

Every rejection comes from the catalogue: `REASONS` maps a reason (the metric label
`sidecar.rejection.reason`, so a closed set) to its status, Anthropic error type and
short-type code; call sites build one with `reject(reason, message, ...)`, never by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
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
    `code` overrides the short type on the prompt route (e.g. `prompt_rejected`);
    `cause` is what telemetry's `error.type` says when it differs from the client's
    type: Anthropic's type of an answer Claude gave the sidecar itself, or the class of
    the exception a call to Claude ended in (the conventions' values for it).
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
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.reason = reason
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.cause = cause

    @property
    def telemetry_type(self) -> str:
        """`error.type` of the call this ended: `cause` when set, else the client's type."""
        return self.cause or self.error_type

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


@dataclass(frozen=True, slots=True)
class Reason:
    """One catalogue entry: `status` None when the status is the app's own (then passed in).

    `final`: a 5xx no retry can change (the sidecar does not retry it either), answered
    with `x-should-retry: false`, which the official SDKs obey before the status (without
    it they retry every 5xx, calling Claude again for an answer known in advance).
    """

    status: int | None
    error_type: str
    code: str | None = None
    final: bool = False


_BAD = Reason(400, "invalid_request_error")
_UNAUTHORIZED = Reason(401, "authentication_error")
_FORBIDDEN = Reason(403, "permission_error")
_QUOTA = Reason(429, "rate_limit_error")
_OVERLOADED = Reason(529, "overloaded_error")
_BAD_GATEWAY = Reason(502, "api_error")
_BROKEN_GATEWAY = Reason(502, "api_error", final=True)  # until an operator fixes it
_NO_RETRY: Final[Mapping[str, str]] = {"x-should-retry": "false"}

REASONS: Final[Mapping[str, Reason]] = {
    # authentication and authorisation
    "auth_missing": _UNAUTHORIZED,
    "auth_invalid_token": _UNAUTHORIZED,
    "auth_invalid_key": _UNAUTHORIZED,
    "auth_unknown_key": _UNAUTHORIZED,
    "auth_expired": _UNAUTHORIZED,
    "auth_not_yet_valid": _UNAUTHORIZED,
    "auth_wrong_issuer": _UNAUTHORIZED,
    "auth_wrong_audience": _UNAUTHORIZED,
    "auth_forbidden_tenant": _FORBIDDEN,
    "auth_forbidden_model": _FORBIDDEN,
    # CORS
    "cors_preflight_denied": _FORBIDDEN,
    "cors_origin_denied": _FORBIDDEN,
    # screening
    "screening_length": _BAD,
    "screening_attachment": _BAD,
    "screening_rule": Reason(400, "invalid_request_error", "prompt_rejected"),
    "screening_unknown_block": _BAD,
    "screening_remote_content": Reason(400, "invalid_request_error", "prompt_rejected"),
    # request paths and routing
    "path_invalid": _BAD,
    "path_encoded_separator": _BAD,
    "path_not_utf8": _BAD,
    "path_climbs": _BAD,
    "path_ambiguous": _BAD,
    "not_found": Reason(404, "not_found_error"),
    "no_route": Reason(404, "not_found_error"),  # no route matches the path (route `unmatched`)
    "method_not_allowed": Reason(405, "invalid_request_error"),
    "method_override": _BAD,
    "path_not_forwarded": _FORBIDDEN,
    # request bodies and fields
    "invalid_request": _BAD,
    "model_invalid": _BAD,
    "model_not_allowed": _BAD,
    "duplicate_key": _BAD,
    "bad_body": _BAD,
    "unsupported_media_type": Reason(415, "invalid_request_error", "unsupported_media_type"),
    "unsupported_encoding": Reason(415, "invalid_request_error", "unsupported_media_type"),
    "body_too_large": Reason(413, "request_too_large"),
    "body_timeout": Reason(408, "timeout_error"),
    "client_disconnected": Reason(499, "invalid_request_error"),
    # quotas and admission
    "quota_request_too_large": _BAD,
    "quota_requests": _QUOTA,
    "quota_tokens_per_minute": _QUOTA,
    "quota_tokens_per_day": _QUOTA,
    "quota_concurrency": _QUOTA,
    "quota_store_unavailable": Reason(503, "api_error", "unavailable"),
    "queue_full": _OVERLOADED,
    "queue_timeout": _OVERLOADED,
    "shutting_down": Reason(503, "overloaded_error"),
    # resumable streams
    "resume_malformed": _BAD,
    "resume_expired": Reason(404, "not_found_error", "resume_expired"),
    "resume_subscribers": _QUOTA,
    "resume_store_error": Reason(503, "overloaded_error"),
    # Claude
    "upstream_unreachable": _BAD_GATEWAY,
    "upstream_timeout": Reason(504, "timeout_error"),
    "upstream_lost": _BAD_GATEWAY,
    "upstream_credential_refused": _BROKEN_GATEWAY,
    "upstream_permission_denied": _FORBIDDEN,
    "upstream_bad_status": _BROKEN_GATEWAY,
    "upstream_bad_encoding": _BROKEN_GATEWAY,
    "upstream_too_large": _BROKEN_GATEWAY,  # a whole answer the sidecar reads, past its bound
    # the app
    "app_timeout": Reason(504, "timeout_error"),
    "app_unreachable": Reason(502, "api_error", "bad_gateway"),
    "app_bad_response": Reason(502, "api_error", "bad_gateway"),  # no valid HTTP to pass on
    "app_refused_websocket": Reason(None, "api_error"),  # the app's own status stands
    "websocket_handshake_invalid": _BAD,  # the client's upgrade request, before the app
    # the sidecar itself
    "internal_error": Reason(500, "api_error"),
    # the listener's own, before any route is known (rendered by sidecar.listener)
    "head_too_large": Reason(431, "invalid_request_error"),
    "bad_request_line": _BAD,
    "bad_header": _BAD,
    "bad_body_framing": _BAD,
    "malformed_request": _BAD,
    "header_timeout": Reason(408, "invalid_request_error"),
    "unsupported_transfer_coding": Reason(501, "invalid_request_error"),
}

# The Anthropic error type of a status someone else chose (the app refusing a WebSocket
# handshake, an answer from in front of Claude that is no API error).
_STATUS_TYPES: Final[dict[int, str]] = {
    401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
    529: "overloaded_error",
}  # fmt: skip


def status_error_type(status: int, server_error: str = "api_error") -> str:
    """Anthropic's error type for an error status (`server_error` for an unlisted 5xx)."""
    return _STATUS_TYPES.get(status, "invalid_request_error" if status < 500 else server_error)


def reject(
    reason: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    status: int | None = None,
    cause: str | None = None,
) -> Rejection:
    """The catalogue's `Rejection` for `reason`; KeyError for a reason not in `REASONS`.

    `status` is given only for a reason whose status is not fixed (the app's own answer);
    `cause` is telemetry's (`Rejection`).
    """
    entry = REASONS.get(reason)
    if entry is None:
        raise KeyError(f"rejection reason {reason!r} is not in the catalogue")
    if (status is None) == (entry.status is None):
        raise ValueError(f"rejection reason {reason!r}: status is {entry.status or 'passed in'}")
    if entry.final:
        headers = {**(headers or {}), **_NO_RETRY}
    if entry.status is not None:
        return Rejection(
            entry.status, entry.error_type, message, reason=reason,
            code=entry.code, headers=headers, cause=cause,
        )  # fmt: skip
    assert status is not None
    error_type = status_error_type(status, entry.error_type)
    return Rejection(status, error_type, message, reason=reason, headers=headers, cause=cause)


def bad_request(message: str, *, reason: str = "invalid_request") -> Rejection:
    return reject(reason, message)
