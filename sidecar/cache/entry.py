"""A cached answer and its stored form.

An entry is Claude's answer exactly as it arrived: the body chunks of a completed stream
with the gap before each (for paced replay), or a whole non-streaming message. The
route's own output is made from it by the route's translator on every replay, as for a
live stream. The stored form starts with a magic and a format version; anything that
does not decode (an older format, a truncated or foreign value) is `Undecodable`, which
the cache treats as a miss and overwrites.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Final

CACHE_HEADER: Final = "X-Cache"  # HIT, MISS or BYPASS (`sidecar.cache.step`)
MAGIC: Final = b"SCC"
VERSION: Final = 1
_HEAD: Final = struct.Struct(">3sBI")  # magic, version, length of the JSON header


class Undecodable(ValueError):
    """A stored value that is not an entry of this format."""


@dataclass(slots=True)
class Entry:
    """One answer: `stream` chunks with their gaps (seconds), or one message body."""

    stream: bool
    chunks: list[bytes]
    gaps: list[float] = field(default_factory=list)  # before each chunk; the first is 0
    created: float = 0.0  # unix time it was stored (the `Age` header)
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    @property
    def tokens(self) -> int:
        """Tokens a replay saves (input, cache reads and writes, and output)."""
        return self.input_tokens + self.output_tokens


def encode(entry: Entry) -> bytes:
    """Version header, JSON metadata, then the chunks back to back."""
    meta = {
        "stream": entry.stream,
        "created": entry.created,
        "in": entry.input_tokens,
        "out": entry.output_tokens,
        "sizes": [len(chunk) for chunk in entry.chunks],
        "gaps": [round(gap, 6) for gap in entry.gaps],
    }
    head = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join([_HEAD.pack(MAGIC, VERSION, len(head)), head, *entry.chunks])


def decode(data: bytes) -> Entry:
    """The entry in `data`; `Undecodable` for anything else."""
    try:
        magic, version, length = _HEAD.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise Undecodable("not an entry of this format version")
        start = _HEAD.size + length
        meta = json.loads(data[_HEAD.size : start])
        sizes = [int(size) for size in meta["sizes"]]
        gaps = [float(gap) for gap in meta["gaps"]]
        stream = meta["stream"]
        created = float(meta["created"])
        input_tokens, output_tokens = int(meta["in"]), int(meta["out"])
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise Undecodable(type(exc).__name__) from None
    if not isinstance(stream, bool) or len(gaps) != len(sizes) or start + sum(sizes) != len(data):
        raise Undecodable("inconsistent entry")
    if not stream and len(sizes) != 1:
        raise Undecodable("a message entry holds one body")
    chunks = []
    offset = start
    for size in sizes:
        chunks.append(data[offset : offset + size])
        offset += size
    return Entry(stream, chunks, gaps, created, input_tokens, output_tokens)
