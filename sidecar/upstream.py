"""The Claude client: one shared keep-alive session, retries before the first byte.

Retries use exponential backoff with full jitter on connect errors and 429/500/
502/503/529 (or whatever Claude's `x-should-retry` says), honour `retry-after-ms`
and `retry-after` (seconds or an HTTP-date), and stop at `claude.max_retries`. A
wait longer than `retry_max_seconds` is not slept through: the client gets the
error with its `retry-after` and backs off itself. A 401 (the sidecar's own key refused:
no client credential ever reaches Claude) and statuses the API never sends (1xx, 2xx but
200) become 502 `api_error`; a 403 (the key may not use what the request asked for: a
model, a beta) stays a 403, in the sidecar's words.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from yarl import URL

from sidecar.config import ClaudeConfig
from sidecar.content_coding import CodingError, coding_names, decode
from sidecar.deadlines import Deadlines
from sidecar.errors import Rejection, anthropic_error_body, reject, status_error_type
from sidecar.header_lists import header_value
from sidecar.http_client import ClientError, ConnectError, Pool, Response
from sidecar.retry_after import retry_wait

RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 529})
# Request headers a client may send that Claude should see; credentials never pass.
FORWARDED_REQUEST_HEADERS: Final = ("anthropic-version", "anthropic-beta", "content-type")
_LISTS: Final = frozenset({"anthropic-version", "anthropic-beta"})
# Response headers that come back to the client unchanged.
RETURNED_RESPONSE_HEADERS: Final = ("request-id", "retry-after", "retry-after-ms", "x-should-retry")
RATELIMIT_PREFIX: Final = "anthropic-ratelimit-"
# A whole answer that came compressed (though `identity` was asked for) is decoded up to
# this: far beyond any message Claude writes, short of what a small body may inflate to.
MAX_DECODED_ANSWER: Final = 64 * 1024 * 1024
_URL_CACHE: Final = 256  # joined URLs remembered (paths may carry client query strings)
_KEY_ERROR_EVERY: Final = 10.0  # seconds between two logs of a refused sidecar key
# When a refusal of the sidecar's key was last logged, by Claude's status (401, 403): a
# steady stream of one kind never hides the first of the other.
_LAST_KEY_ERROR: dict[int, float] = {}
# What Claude says when it refuses the sidecar's key: a 502 for the client (whose own
# credential never reached Claude), in words of the sidecar's, never Claude's text.
_KEY_REFUSED: Final = {
    401: "Claude refused the sidecar's own API credential (claude.api_key)",
    403: "Claude denied the sidecar's own API credential (claude.api_key) permission for this"
    " request",
}
# The answer each refusal becomes: a 401 fails every call (the gateway is misconfigured, a
# 502 SDKs treat as a server fault); a 403 is about what this request asked for (a model
# or beta the key's organization may not use), so the caller gets a 403 it will not retry.
_KEY_REFUSAL_ANSWER: Final = {
    401: ("upstream_credential_refused", "the sidecar is misconfigured: {}; this is not the"
          " caller's credential"),
    403: ("upstream_permission_denied", "{}: the model, beta or resource it asks for is not"
          " enabled for the gateway; this is not the caller's credential"),
}  # fmt: skip

log = logging.getLogger("sidecar.upstream")


@dataclass(slots=True)
class Attempt:
    """What one upstream call needs beyond the body (prepared once per request).

    Not frozen: one is built per Claude call, and a frozen dataclass's `__init__` pays
    an `object.__setattr__` call per field. Its headers are the call's own: the Claude
    call adds its `traceparent` to them before sending (every retry sends the same).
    """

    method: str
    path: str  # path + query, e.g. /v1/messages?beta=true
    headers: dict[str, str]
    # Written to Claude and not answered (yet, or ever: the caller left while Claude
    # worked on it, its connection broke after the write, its head came too late):
    # Claude may be billing it. Set by `ClaudeClient.send` for the latest attempt.
    unanswered: bool = False
    # Set by `ClaudeClient.send` as it goes, so that a call it ends with an exception
    # (Claude unreachable after retries, an answer no client may see, the client gone
    # during a backoff) still reports them: the retries made, and the status of the
    # latest attempt's answer (None while it has none).
    retries: int = 0
    status: int | None = None


class ClaudeClient:
    """Sends requests to Claude (or the built-in fake) with retries before the first byte."""

    def __init__(
        self,
        config: ClaudeConfig,
        base_url: str,
        pool: Pool,
        *,
        on_retry: Callable[[str], None] | None = None,
        on_status: Callable[[int], None] | None = None,
        peer: tuple[str, int] | None = None,
        identity: str | None = None,
    ) -> None:
        self._config = config
        self._base = URL(base_url)
        # Which Claude answers, as the response cache keys it: the same on every replica
        # and start configured alike (default: base_url).
        self.identity = identity or str(self._base)
        self._pool = pool
        self._on_retry = on_retry
        self._on_status = on_status
        # How long Claude may take to answer with its head: a stream's, the idle timeout;
        # a whole message's, the request timeout. One timer per kind, not one per call.
        self._stream_head = Deadlines(config.idle_timeout_seconds)
        self._message_head = Deadlines(config.request_timeout_seconds)
        self._key = config.api_key.get_secret_value() if config.api_key else None
        # What telemetry names as Claude's address and port (default: those of base_url).
        self.server_address, self.server_port = peer or (self._base.host or "", self._base.port)
        # Paths are sent below the base URL's own path (none for Claude's API).
        self._prefix = self._base.raw_path.rstrip("/")

    @property
    def open_connections(self) -> int:
        """Connections to Claude open now, in use or idle."""
        return self._pool.open_connections

    @property
    def base_url(self) -> str:
        """Where calls go (for `builtin:fake`, the fake's real address on this start)."""
        return str(self._base)

    def target(self, path: str) -> str:
        """The request target of `path` (+ query): below the base URL's path, verbatim.

        `path` is canonical already (`sidecar.paths`): it is appended as is, never joined
        or resolved again, so Claude receives exactly the path that was checked.
        """
        return self._prefix + path if self._prefix else path

    def request_headers(self, client: Mapping[str, str]) -> dict[str, str]:
        """Headers for Claude: the sidecar's own key plus the client's version/beta."""
        return request_headers(client, self._config.anthropic_version, self._key)

    def backoff(
        self, attempt: int, retry_after: str | None, retry_after_ms: str | None = None
    ) -> float:
        """Seconds to wait before retry number `attempt` (0-based).

        Claude's `retry-after-ms` (milliseconds, as the official SDKs read it) wins over
        `retry-after`; without a valid one of either (`sidecar.retry_after`: a negative,
        fractional or garbage value is none), exponential backoff with full jitter.
        """
        wait = retry_wait(retry_after, retry_after_ms)
        if wait is not None:
            return wait
        cap = min(self._config.retry_max_seconds, self._config.retry_base_seconds * 2**attempt)
        return random.uniform(0, cap)

    async def send(
        self,
        attempt: Attempt,
        body: bytes | None,
        *,
        stream: bool = True,
        written: Callable[[], object] | None = None,
    ) -> tuple[Response, int]:
        """Send with retries; returns (response, retries used). Raises Rejection if unreachable.

        `written` runs once, right after the first attempt that reaches the wire is
        written (`Pool.request`): work that need not delay the request runs while
        Claude works on it. It does not run if no attempt was ever written.
        `attempt.unanswered` tells, whenever this ends, whether the latest attempt was
        written and got no answer (Claude may bill it; an answered error it does not).

        A stream's headers come at once, so waiting for them longer than the idle timeout
        means trouble; a non-streaming answer sends its headers only when it is complete,
        so its whole call (headers and body) gets `request_timeout_seconds` instead. The
        response's `deadline` is when its body must be in (`read_answer`): the call's
        end for a message, an idle timeout from the head for a stream's error body.
        """
        target = self.target(attempt.path)
        config = self._config
        head = self._stream_head if stream else self._message_head
        loop = self._pool.loop  # the running loop's own lookup costs a getpid() on 3.11
        # A message's whole call (head and body) has `request_timeout_seconds` from here.
        whole = 0.0 if stream else loop.time() + config.request_timeout_seconds
        retries = 0
        while True:
            task = head.start(loop)
            try:
                response = await self._pool.request(
                    attempt.method, target, attempt.headers, body,
                    functools.partial(_wrote, attempt, written),
                )  # fmt: skip
            except asyncio.CancelledError:
                if head.stop(task):  # the head's deadline passed, not the client leaving
                    raise reject("upstream_timeout", "Claude did not answer in time") from None
                raise
            except ClientError as exc:  # no connection, or one lost before an answer
                if not isinstance(exc, ConnectError):
                    written = None  # the request was written: `written` ran
                if retries >= config.max_retries:
                    cause = type(exc).__name__
                    raise reject(
                        "upstream_unreachable", f"Claude is unreachable ({cause})", cause=cause
                    ) from None
                delay = self.backoff(retries, None)
                self._count_retry("connect_error")
            else:
                written = None  # ran with this attempt: a retry does not run it again
                attempt.unanswered = False
                response.deadline = loop.time() + config.idle_timeout_seconds if stream else whole
                attempt.status = status = response.status
                if self._on_status is not None:
                    self._on_status(status)
                if status == 401 or status == 403 or status < 200 or 200 < status < 400:
                    response.close()
                    raise _unusable(status)
                if stream and status == 200 and _coded(response.content_coding):
                    # Relayed event for event, a compressed stream would reach the client
                    # undecodable and hide its usage from quotas: refused before any byte.
                    response.close()
                    raise _undecodable(response.content_coding, "a stream is relayed as sent")
                if status < 400 or not _should_retry(response) or retries >= config.max_retries:
                    return response, retries
                headers = response.headers
                delay = self.backoff(
                    retries, headers.get("retry-after"), headers.get("retry-after-ms")
                )
                if delay > config.retry_max_seconds:
                    return response, retries  # the client backs off itself
                response.close()
                self._count_retry(str(status))
            finally:
                head.stop(task)  # whatever ended the wait (again: no effect)
            attempt.retries = retries = retries + 1
            attempt.status = None  # the next attempt's answer, if one comes
            await asyncio.sleep(delay)

    def _count_retry(self, reason: str) -> None:
        if self._on_retry is not None:
            self._on_retry(reason)


def _wrote(attempt: Attempt, written: Callable[[], object] | None) -> None:
    """An attempt is on the wire: unanswered until its head comes; then the caller's own."""
    attempt.unanswered = True
    if written is not None:
        written()


def _should_retry(response: Response) -> bool:
    """Claude's `x-should-retry` decides when present (as in the official SDKs), else the status."""
    if response.status < 400:
        return False
    verdict = response.headers.get("x-should-retry")
    if verdict == "true":
        return True
    if verdict == "false":
        return False
    return response.status in RETRYABLE_STATUS


def _unusable(status: int) -> Rejection:
    """An answer no client should see as Claude's: the sidecar's key refused (401) or not
    allowed what was asked (403), or a status (1xx, 2xx other than 200) that the Messages
    API never sends and SDKs cannot read, or a 3xx (the sidecar sends no conditional
    header and follows no redirect: a gateway's redirect is no answer to pass on)."""
    refused = _KEY_REFUSED.get(status)
    if refused is not None:
        # The caller passed the sidecar's own auth, and its credential never reaches Claude:
        # this is about `claude.api_key`. Relayed as is, SDKs would blame their own
        # credential (AuthenticationError, PermissionDeniedError) and never tell an operator.
        now = time.monotonic()
        if now - _LAST_KEY_ERROR.get(status, -math.inf) >= _KEY_ERROR_EVERY:
            _LAST_KEY_ERROR[status] = now
            log.log(
                logging.ERROR if status == 401 else logging.WARNING,
                "%s (HTTP %d): %s",
                refused, status,
                "calls fail until it is fixed" if status == 401 else "such calls are refused",
                extra={"event": "claude_api_key_refused", "upstream_status": status},
            )  # fmt: skip
        reason, message = _KEY_REFUSAL_ANSWER[status]
        return reject(
            reason,
            message.format(refused),
            cause=status_error_type(status),  # what Claude answered the sidecar
        )
    return reject("upstream_bad_status", f"Claude answered with an unexpected status ({status})")


async def read_answer(response: Response, limit: int | None = None, *, cut: bool = True) -> bytes:
    """Claude's whole answer (at most `limit` bytes, decoded) by the response's deadline,
    then its connection is let go; 504 if late, 502 if cut or if it cannot be decoded.
    An answer longer than `limit` is cut there (`cut`: an error's text) or refused, a 502
    `upstream_too_large` (not `cut`: JSON the sidecar reads, which a cut would break).

    The sidecar asks for `identity`; an answer compressed all the same (a gateway in front
    of Claude) is decoded here, so clients, usage accounting and the cache all read JSON.
    """
    coding = response.content_coding
    try:
        async with asyncio.timeout_at(response.deadline):
            body = await response.read(limit if cut or limit is None else limit + 1)
    except TimeoutError:
        raise reject("upstream_timeout", "Claude did not answer in time") from None
    except ClientError as exc:
        raise reject(
            "upstream_lost", "the connection to Claude was lost", cause=type(exc).__name__
        ) from None
    finally:
        response.close()  # a body not read to its end closes the connection (never pooled)
    if limit is not None and len(body) > limit:
        raise reject("upstream_too_large", f"Claude's answer is larger than {limit} bytes")
    names = coding_names((coding,)) if coding is not None else None
    if not names:
        return body
    try:
        return decode(body, names, limit or MAX_DECODED_ANSWER)
    except CodingError as exc:
        raise _undecodable(coding, str(exc)) from None


def _coded(coding: str | None) -> bool:
    return coding is not None and bool(coding_names((coding,)))


def _undecodable(coding: str | None, why: str) -> Rejection:
    return reject(
        "upstream_bad_encoding",
        f"Claude answered with Content-Encoding {(coding or '')[:32]!r}, which was not asked "
        f"for: {why}",
    )


def api_error_body(body: bytes, status: int, request_id: str) -> bytes:
    """An error answer for an Anthropic client: Claude's own error JSON unchanged, anything
    else (a gateway's HTML page, an empty body) as Anthropic's error JSON for its status,
    so SDKs and `response.json()` read it as they read Claude's."""
    if _api_error(body) is not None:
        return body
    return anthropic_error_body(*api_error_of(body, status), request_id)


def api_error_of(body: bytes, status: int) -> tuple[str, str]:
    """The error type and message of an error answer: Claude's own, or for a body that holds
    no API error (`api_error_body`), Anthropic's type for its status and a message saying so."""
    error = _api_error(body)
    if error is not None:
        return error["type"], str(error.get("message") or "")
    return (
        status_error_type(status),
        f"Claude answered with status {status} and no API error in its body",
    )


def _api_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of Anthropic's error JSON (`{"type": "error", "error": {"type":
    ...}}`), or None when `body` is no such JSON."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("type") == "error":
        error = value.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str) and error["type"]:
            return error
    return None


def returned_headers(upstream: Response, *, keep_ratelimit: bool) -> dict[str, str]:
    """Claude's response headers the client should see (request id, retry and rate-limit
    info), read from its head without making its header map (held until push mode)."""
    return upstream.pick(RETURNED_RESPONSE_HEADERS, RATELIMIT_PREFIX if keep_ratelimit else None)


def request_headers(client: Mapping[str, str], version: str, key: str | None) -> dict[str, str]:
    """Headers for Claude: `key` (the sidecar's own) plus the client's version and betas,
    `version` when the client names none."""
    # The anthropic-* headers are lists (a beta per item): every line is sent, joined.
    headers = {
        name: value
        for name in FORWARDED_REQUEST_HEADERS
        if (value := header_value(client, name) if name in _LISTS else client.get(name)) is not None
    }
    headers.setdefault("anthropic-version", version)
    headers.setdefault("content-type", "application/json")
    headers["accept-encoding"] = "identity"  # relay bytes as they come, never re-encode
    if key is not None:
        headers["x-api-key"] = key
    return headers
