"""Image headers as base64 data, as clients send images inline: the formats Claude reads
(PNG, GIF, WebP in its three forms, JPEG) at a given size, and data no header can be read
from."""

from __future__ import annotations

import base64
from collections.abc import Callable


def png(width: int, height: int, size: int = 64) -> str:
    """A PNG of `width` x `height` whose data (header and zero fill) is `size` bytes."""
    head = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR"
    head += width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return base64.b64encode(head + bytes(max(0, size - len(head)))).decode()


def gif(width: int, height: int) -> str:
    head = b"GIF89a" + width.to_bytes(2, "little") + height.to_bytes(2, "little")
    return base64.b64encode(head + bytes(40)).decode()


def webp(chunk: bytes, payload: bytes) -> str:
    return base64.b64encode(b"RIFF\0\0\0\0WEBP" + chunk + b"\0\0\0\0" + payload).decode()


def webp_lossy(width: int, height: int) -> str:
    frame = b"\0\0\0\x9d\x01\x2a" + width.to_bytes(2, "little") + height.to_bytes(2, "little")
    return webp(b"VP8 ", frame)


def webp_lossless(width: int, height: int) -> str:
    bits = (width - 1) | (height - 1) << 14
    return webp(b"VP8L", b"\x2f" + bits.to_bytes(4, "little") + bytes(8))


def webp_extended(width: int, height: int) -> str:
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return webp(b"VP8X", bytes(4) + size + bytes(8))


def jpeg(width: int, height: int, sof: int = 0xC0, exif: int = 40_000) -> str:
    """A JPEG with an APP1 (EXIF-sized) segment, fill bytes and a DQT before its frame."""
    app1 = b"\xff\xe1" + (exif + 2).to_bytes(2, "big") + bytes(exif)
    dqt = b"\xff\xff\xff\xdb" + (67).to_bytes(2, "big") + bytes(65)
    frame = bytes((0xFF, sof)) + (17).to_bytes(2, "big") + b"\x08"
    frame += height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes(12)
    return base64.b64encode(b"\xff\xd8" + app1 + dqt + frame + bytes(100)).decode()


FORMATS: dict[str, Callable[[int, int], str]] = {
    "png": png,
    "gif": gif,
    "webp lossy": webp_lossy,
    "webp lossless": webp_lossless,
    "webp extended": webp_extended,
    "jpeg baseline": jpeg,
    "jpeg progressive": lambda w, h: jpeg(w, h, sof=0xC2),
}


MALFORMED = {
    "not base64": "!!!!" * 10,
    "empty": "",
    "one char": "i",
    "text": base64.b64encode(b"hello, this is not an image at all").decode(),
    "png cut in its header": png(800, 600)[:12],
    "png without IHDR": base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(30)).decode(),
    "png of zero width": png(0, 600),
    "gif cut": base64.b64encode(b"GIF89a\x10").decode(),
    "webp of unknown chunk": webp(b"ABCD", bytes(20)),
    "webp lossy without start code": webp(b"VP8 ", bytes(20)),
    "jpeg cut before its frame": jpeg(800, 600)[:5000],
    "jpeg scan before a frame": base64.b64encode(b"\xff\xd8\xff\xda" + bytes(20)).decode(),
    "jpeg garbage after soi": base64.b64encode(b"\xff\xd8" + bytes(20)).decode(),
    "jpeg endless segments": base64.b64encode(
        b"\xff\xd8" + b"\xff\xe0\x00\x02" * 200 + b"\xff\xc0" + bytes(20)
    ).decode(),
}
