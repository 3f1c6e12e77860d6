"""The no-decoding delta pattern: exactly the shape Anthropic writes, its string copied verbatim."""

from __future__ import annotations

import json
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar import deltas

# The string literal spelled one byte at a time (a plain byte, or a backslash and any byte
# but a line end): the definition the unrolled `deltas.LITERAL` must keep, byte for byte.
PER_BYTE = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(\d+),'
    rb'"delta":\{"type":"(text_delta","text|thinking_delta","thinking|input_json_delta",'
    rb'"partial_json)":("(?:[^"\\\n]|\\.)*")\}\}\Z'
)
KINDS = [
    ("text_delta", "text"),
    ("thinking_delta", "thinking"),
    ("input_json_delta", "partial_json"),
]
# The bytes that decide a string literal's end, and a few that must not matter.
PIECES = [
    b'"',
    b"\\",
    b"\n",
    b"\r",
    b"a",
    b" ",
    b"}",
    b"u",
    b"\x00",
    b"\t",
    b"\xe2\x80\xa8",
    b"\xff",
    # Either side of each edge of the byte ranges the pattern spells its classes with.
    b"\x09",
    b"\x0b",
    b"!",
    b"#",
    b"[",
    b"]",
    b"\x7f",
    b"\x80",
]
GROUP = {"text_delta": deltas.TEXT, "thinking_delta": deltas.THINKING,
         "input_json_delta": deltas.TOOL_INPUT}  # fmt: skip
PROPERTY = settings(max_examples=400, deadline=None)


def head(index: int, kind: str, field: str) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
        b'"delta":{"type":"%b","%b":' % (index, kind.encode(), field.encode())
    )


@PROPERTY
@given(
    st.integers(0, 300),
    st.sampled_from(KINDS),
    st.lists(st.sampled_from(PIECES), max_size=24).map(b"".join),
    st.sampled_from([b'"}}', b'"}} ', b'"}', b"}}", b'"}}\n', b'","x":1}}', b""]),
)
@example(0, KINDS[0], b'\\"', b'"}}')
@example(0, KINDS[0], b"\\", b'"}}')
@example(0, KINDS[0], b'a\\"}}', b"")
def test_the_pattern_accepts_exactly_what_the_per_byte_spelling_accepts(
    index: int, kind: tuple[str, str], body: bytes, end: bytes
) -> None:
    block = head(index, *kind) + b'"' + body + end
    assert_same_match(block, kind[0])


@PROPERTY
@given(st.integers(0, 300), st.sampled_from(KINDS), st.binary(max_size=40), st.binary(max_size=4))
def test_any_bytes_in_the_string_are_accepted_exactly_as_the_per_byte_spelling_does(
    index: int, kind: tuple[str, str], body: bytes, end: bytes
) -> None:
    """Every byte value (the classes are spelled as byte ranges), closed or not."""
    assert_same_match(head(index, *kind) + b'"' + body + b'"}}' + end, kind[0])
    assert_same_match(head(index, *kind) + b'"' + body + end, kind[0])


def assert_same_match(block: bytes, kind: str) -> None:
    """`DELTA` matches where the per-byte spelling does, with the literal in its kind's group."""
    ours, reference = deltas.DELTA.match(block), PER_BYTE.match(block)
    assert (ours is None) == (reference is None), block
    if ours is not None and reference is not None:
        groups: list[bytes | None] = [None, None, None]
        groups[GROUP[kind] - 2] = reference[3]
        assert ours.groups() == (reference[1], *groups)


@PROPERTY
@given(st.text(), st.sampled_from(KINDS), st.booleans(), st.integers(0, 300))
@example('\u2028\u2029 "quoted" \\ back\\slash \n\t\x00 \U0001f389 é', KINDS[0], False, 0)
def test_every_string_anthropic_writes_is_matched_and_copied_verbatim(
    text: str, kind: tuple[str, str], ensure_ascii: bool, index: int
) -> None:
    """Whatever the text (quotes, escapes, control characters, U+2028, astral characters)
    and however it is escaped, the compact delta matches and its kind's group is its literal."""
    literal = json.dumps(text, ensure_ascii=ensure_ascii).encode()
    payload = {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": kind[0], kind[1]: text},
    }
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
    match = deltas.DELTA.match(b"event: content_block_delta\ndata: " + data)
    assert match is not None
    assert match[1] == str(index).encode()
    assert match[GROUP[kind[0]]] == literal
    assert json.loads(match[GROUP[kind[0]]]) == text
    assert match.groups().count(None) == 2  # the other kinds' groups


def test_other_shapes_are_left_to_decoding() -> None:
    text = b'"delta":{"type":"text_delta","text":"hi"}}'
    for block in (
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}',
        b'event: content_block_delta\ndata: {"index":0,"type":"content_block_delta",' + text,
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":-1,' + text,
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi","x":1}}',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\nb"}}',
        b'id: 7\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,' + text,
    ):
        assert deltas.DELTA.match(block) is None, block
