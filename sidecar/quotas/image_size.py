"""The tokens Claude charges for an inline image, read from its header: the first bytes of
its base64 data (PNG IHDR, GIF screen descriptor, WebP VP8/VP8L/VP8X, JPEG SOF), decoded a
few bytes at a time, never the whole image.

Claude resizes an image larger than its model's native resolution (aspect ratio kept) and
charges by what is left. Two rules are published: up to Claude Opus 4.6, a long edge of
at most 1568 px and about 1.15 megapixels, at width × height / 750 tokens (~1600 at
most); from Claude Opus 4.7, a long edge of at most 2576 px and 4784 visual tokens, each a
28 × 28 px patch (⌈width / 28⌉ × ⌈height / 28⌉, the image padded to whole patches). The
sidecar does not tie the estimate to a model name: it reserves the larger of the two,
which is never under either charge.
"""

from __future__ import annotations

import binascii
import math
from base64 import b64decode
from typing import Final

# Up to Claude Opus 4.6: long edge and total tokens (width × height / 750) after resizing.
LEGACY_LONG_EDGE: Final = 1568
LEGACY_MAX_TOKENS: Final = 1600
# From Claude Opus 4.7: long edge and visual tokens (28 × 28 px patches) after resizing.
PATCH: Final = 28
LONG_EDGE: Final = 2576
MAX_PATCHES: Final = 4784  # 2576 × 1456 px: 92 × 52 patches, ~3.75 megapixels
# How many JPEG segments (APPn, tables, comments) are skipped looking for the frame header.
_JPEG_SEGMENTS: Final = 64
# SOFn markers: every C0..CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_tokens(data: str) -> int | None:
    """What Claude charges at most for the image whose base64 data is `data`, or None when
    its header is not one of the four formats Claude takes or is malformed."""
    try:
        size = _dimensions(data)
    except (binascii.Error, ValueError, IndexError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return tokens_for(*size)


def tokens_for(width: int, height: int) -> int:
    """The larger of the two published charges for an image of `width` × `height` px."""
    scale = min(1.0, LEGACY_LONG_EDGE / max(width, height))
    scale = min(scale, math.sqrt(LEGACY_MAX_TOKENS * 750 / (width * height)))
    legacy = min(LEGACY_MAX_TOKENS, math.ceil(width * scale * height * scale / 750))
    scale = min(1.0, LONG_EDGE / max(width, height))
    scale = min(scale, math.sqrt(MAX_PATCHES * PATCH * PATCH / (width * height)))
    patches = math.ceil(width * scale / PATCH) * math.ceil(height * scale / PATCH)
    return max(legacy, min(MAX_PATCHES, patches))


def _read(data: str, offset: int, size: int) -> bytes:
    """`size` bytes of the decoded data from `offset`: only the base64 quads holding them
    are decoded. Short when the data ends first."""
    first = offset // 3
    last = -(-(offset + size) // 3)
    chunk = data[first * 4 : last * 4]
    if len(chunk) % 4:  # the data ends: pad what is left, the tail is checked below
        chunk += "=" * (-len(chunk) % 4)
    decoded = b64decode(chunk, validate=True)
    start = offset - first * 3
    return decoded[start : start + size]


def _dimensions(data: str) -> tuple[int, int] | None:
    head = _read(data, 0, 30)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg(data)
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and head[20:21] == b"\x2f" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a" and len(head) >= 30:
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        return width, int.from_bytes(head[28:30], "little") & 0x3FFF
    return None


def _jpeg(data: str) -> tuple[int, int] | None:
    """The frame header's size: segment lengths are followed from marker to marker, each
    segment skipped without decoding it."""
    offset = 2
    for _ in range(_JPEG_SEGMENTS):
        marker = _read(data, offset, 4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker[1] in _SOF:
            frame = _read(data, offset + 5, 4)  # after length (2) and precision (1)
            if len(frame) < 4:
                return None
            return int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[0:2], "big")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:  # no length
            offset += 2
            continue
        if marker[1] in (0xD9, 0xDA):  # end of image, or scan data before any frame
            return None
        offset += 2 + int.from_bytes(marker[2:4], "big")
    return None
