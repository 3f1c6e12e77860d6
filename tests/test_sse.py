"""SSE framing: boundaries across reads, all three line endings, parsing, encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.sse import EventScanner, encode, event_name, parse_block
from tests.support.claude_streams import STREAM


def names(blocks: list[bytes]) -> list[bytes]:
    return [event_name(block) for block in blocks]


def test_one_event_per_read() -> None:
    scanner = EventScanner()
    out = []
    for part in STREAM.split(b"\n\n")[:-1]:
        out += scanner.feed(part + b"\n\n")
    assert names(out) == [
        b"message_start",
        b"content_block_delta",
        b"ping",
        b"message_delta",
        b"message_stop",
    ]
    assert scanner.pending == b""


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20))
def test_any_split_yields_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    scanner = EventScanner()
    out = [block for piece in pieces for block in scanner.feed(piece)]
    assert out == [block for block in STREAM.split(b"\n\n") if block]


def test_crlf_and_cr_line_endings_split_across_reads() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    scanner = EventScanner()
    out = [b for i in range(0, len(crlf), 7) for b in scanner.feed(crlf[i : i + 7])]
    assert len(out) == 5
    cr = STREAM.replace(b"\n", b"\r")
    scanner = EventScanner()
    out = [b for i in range(0, len(cr), 5) for b in scanner.feed(cr[i : i + 5])]
    assert names(out)[-1] == b"message_stop"
    assert len(out) == 5


def test_parse_block_multiline_data_comments_and_no_space() -> None:
    name, data = parse_block(b": comment\nevent:custom\ndata: a\ndata:b\nid: 7")
    assert (name, data) == (b"custom", b"a\nb")
    assert parse_block(b"data: x") == (b"message", b"x")


def test_encode() -> None:
    assert encode({"token": "é"}, event_id=3) == b'id: 3\ndata: {"token":"\\u00e9"}\n\n'
    assert encode({"a": 1}, event="e") == b'event: e\ndata: {"a":1}\n\n'


def test_reads_of_one_byte_and_of_a_lone_blank_line() -> None:
    """A one-byte read is never a whole event; a read that is only a blank line ends none."""
    scanner = EventScanner()
    assert [b for byte in b"data: 1\n\n" for b in scanner.feed(bytes([byte]))] == [b"data: 1"]
    assert scanner.feed(b"x") == []
    assert scanner.feed(b"\n\n") == [b"x"]
    assert scanner.feed(b"\n\n") == []
    assert scanner.pending == b""


STOP_HEAD = b"event: message_stop\n"
STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _last_block_after(carry: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    scanner = EventScanner()
    scanner.feed(carry)
    return scanner.feed(chunk), scanner.pending


@pytest.mark.parametrize(
    ("carry", "chunk", "expected"),
    [
        (b"", STOP_EVENT, True),  # the stop event alone, at an event boundary
        (b"", b"event: ping\ndata: {}\n\n" + STOP_EVENT, True),
        (b"event: ping\ndata: {}\n\n", STOP_EVENT, True),
        (b"event: ping\ndata: {}\n", b"\n" + STOP_EVENT, False),  # a boundary split: cautious
        (b"event: ping\ndata: {}", STOP_EVENT, False),  # the same event as the carried bytes
        (b"event: ping\ndata: {}\n", b"\n\n" + STOP_EVENT, False),  # a run of blank lines
        (b"", b"event: ping\n\n\n" + STOP_EVENT, False),
        (b"", STOP_EVENT[:-1], False),  # not whole yet
        (b"", STOP_EVENT + b"\n", False),
        (b"", STOP_EVENT.replace(b"\n", b"\r\n"), False),  # line ends to normalise
        (b"", b"event: message_stopped\ndata: {}\n\n", False),
        (b"", STOP_EVENT + b"event: ping\ndata: {}\n\n", False),  # not the last event
        (b"", b"", False),
    ],
)
def test_ends_with_event_looks_ahead_of_the_scan(
    carry: bytes, chunk: bytes, expected: bool
) -> None:
    scanner = EventScanner()
    scanner.feed(carry)
    assert scanner.ends_with_event(chunk, STOP_HEAD) is expected
    blocks, pending = _last_block_after(carry, chunk)
    if expected:  # what the scan then finds: that event last, nothing left over
        assert blocks[-1].startswith(STOP_HEAD)
        assert event_name(blocks[-1]) == b"message_stop"
        assert pending == b""


@given(
    st.lists(
        st.sampled_from([b"event: ping\n", b"data: {}\n", b"\n", b"\r", b": c\n", STOP_HEAD]),
        max_size=12,
    ),
    st.integers(min_value=0, max_value=60),
)
def test_ends_with_event_never_promises_what_the_scan_does_not_find(
    parts: list[bytes], cut: int
) -> None:
    stream = b"".join(parts)
    carry, chunk = stream[:cut], stream[cut:]
    scanner = EventScanner()
    scanner.feed(carry)
    if scanner.ends_with_event(chunk, STOP_HEAD):
        blocks, pending = _last_block_after(carry, chunk)
        assert event_name(blocks[-1]) == b"message_stop"
        assert pending == b""
