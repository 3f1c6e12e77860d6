"""Error closes of the app route's WebSockets linger (`sidecar.handlers.lingering`), over
real sockets: a peer whose frames break off mid-message still reads the close frame."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest

from sidecar.handlers.lingering import lingering_count
from tests.support.apps import running_app, with_app
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds

_JUNK = 8 * 1024 * 1024  # still on its way when the sidecar closes


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (zero mask: the payload as is)."""
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return head + b"\0\0\0\0" + payload


@pytest.mark.parametrize(
    ("opening", "code"),
    [
        (_frame(0x3, b"x"), 1002),  # a reserved opcode: a protocol error
        (_frame(0x1, b"\xff\xfe"), 1007),  # text that is not UTF-8
        (_frame(0x2, b"y" * 70000), 1009),  # over the bound
    ],
    ids=["protocol_error", "invalid_text", "too_big"],
)
async def test_a_client_that_breaks_off_mid_message_still_reads_the_close_frame(
    sidecar_for: SidecarFactory, opening: bytes, code: int
) -> None:
    """The client writes a frame the sidecar refuses, then 8 MB more, and only then reads:
    it gets the close frame with the refusal's code, not a connection reset."""
    async with (
        running_app() as (url, _),
        sidecar_for(with_app(url, websocket_max_message_bytes=65536)) as sidecar,
    ):
        reader, writer = await _websocket(sidecar.port)
        writer.write(opening + _frame(0x2, b"\0" * _JUNK))
        await writer.drain()
        assert await _close_code(reader) == code
        writer.close()


async def test_a_lingering_socket_is_closed_when_the_sidecar_stops(
    sidecar_for: SidecarFactory,
) -> None:
    """A client that read the close frame but keeps its side open is not waited on past
    shutdown: the sidecar's stop ends every linger."""
    async with running_app() as (url, _):
        async with sidecar_for(with_app(url, websocket_max_message_bytes=65536)) as sidecar:
            reader, writer = await _websocket(sidecar.port)
            writer.write(_frame(0x2, b"y" * 70000))
            await writer.drain()
            assert await _close_code(reader) == 1009
            await eventually(lambda: holds(lingering_count() == 1))
        assert lingering_count() == 0
        writer.close()


async def _websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket to the app route's echo."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: sidecar\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def _close_code(reader: asyncio.StreamReader) -> int:
    """The code of the frame the sidecar sends, which must be a close frame."""
    first, length = await asyncio.wait_for(reader.readexactly(2), 30)
    payload = await asyncio.wait_for(reader.readexactly(length & 0x7F), 30)
    assert first == 0x88
    return int(struct.unpack("!H", payload[:2])[0])
