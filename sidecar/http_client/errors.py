"""What can go wrong talking to Claude over HTTP/1.1, as exception classes.

All are `ClientError`s: the Claude client (`sidecar.upstream`) retries the ones that
come before an answer, and the relay ends a stream with an `api_error` event on the
ones that cut a body short. Messages name the failure, never the bytes that caused it.
"""

from __future__ import annotations


class ClientError(Exception):
    """Any failure of a call to the upstream HTTP server."""


class ConnectError(ClientError):
    """No connection could be opened (refused, unresolvable, TLS failed, or too slow)."""


class Disconnected(ClientError):
    """The connection closed before the answer was complete."""


class MalformedResponse(ClientError):
    """The answer broke HTTP/1.1 (its status line, headers or chunked framing)."""
