"""A lean HTTP/1.1 client for Claude: a keep-alive pool, llhttp parsing, push-mode bodies."""

from sidecar.http_client.errors import ClientError, ConnectError, Disconnected, MalformedResponse
from sidecar.http_client.pool import Pool
from sidecar.http_client.response import Response, Sink

__all__ = [
    "ClientError",
    "ConnectError",
    "Disconnected",
    "MalformedResponse",
    "Pool",
    "Response",
    "Sink",
]
