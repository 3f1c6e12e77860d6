"""`Expect: 100-continue`: the interim `100 Continue` is sent when the body is first read.

A client that sends the expectation waits for it before uploading the body. A request
the sidecar refuses without reading its body (no credential, a path or origin refused, a
method not allowed) gets its final answer instead, and no body is invited that would be
read for nothing; as the client may then send the body or not, the connection ends with
that answer (`unanswered`: the caller closes it).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

# Set in the request's own storage once `100 Continue` is sent.
_CONTINUED: Final = web.RequestKey("sidecar.continued", bool)


def expects_continue(request: web.BaseRequest) -> bool:
    """Whether the request asks for `100 Continue` (HTTP/1.1, `Expect: 100-continue`)."""
    expect = request.headers.get("Expect")
    return expect is not None and request.version >= (1, 1) and expect.lower() == "100-continue"


async def answer(request: web.BaseRequest) -> None:
    """Send `100 Continue` if the request expects it and it was not sent yet: call it
    right before reading the body."""
    if expects_continue(request) and not request.get(_CONTINUED):
        request[_CONTINUED] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the response's first byte


def unanswered(request: web.BaseRequest) -> bool:
    """Whether the request expected `100 Continue`, never got it, and has a body still to
    come: its answer must end the connection."""
    return (
        expects_continue(request)
        and not request.get(_CONTINUED)
        and request.content_length != 0
        and not request.content.is_eof()
    )
