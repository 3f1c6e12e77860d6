"""Cache entries: the stored form round-trips, and anything else is `Undecodable`, never a crash."""

from __future__ import annotations

import pytest

from sidecar.cache.entry import VERSION, Entry, Undecodable, decode, encode


def _entry() -> Entry:
    return Entry(
        stream=True,
        chunks=[b"event: message_start\ndata: {}\n\n", b"", b"\xff\x00 binary-safe"],
        gaps=[0.0, 0.0125, 0.5],
        created=1_700_000_000.25,
        input_tokens=11,
        output_tokens=42,
    )


def test_an_entry_round_trips_byte_for_byte() -> None:
    entry = _entry()
    assert decode(encode(entry)) == entry
    assert entry.tokens == 53


def test_a_message_entry_round_trips() -> None:
    entry = Entry(stream=False, chunks=[b'{"type":"message"}'], gaps=[0.0], created=1.0)
    assert decode(encode(entry)) == entry


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",  # empty
        lambda data: b"not an entry at all",
        lambda data: data[:-1],  # truncated body
        lambda data: data + b"x",  # trailing bytes
        lambda data: data[:3] + bytes([VERSION + 1]) + data[4:],  # a newer format
        lambda data: data[:12] + b"{" + data[13:],  # broken JSON header
        lambda data: data.replace(b'"stream":true', b'"stream":"yes"'),
        lambda data: data.replace(b'"gaps":[', b'"gaps":[1,'),  # gaps and sizes disagree
    ],
)
def test_a_damaged_or_foreign_value_is_undecodable(damage: object) -> None:
    assert callable(damage)
    with pytest.raises(Undecodable):
        decode(damage(encode(_entry())))


def test_a_message_entry_with_two_bodies_is_undecodable() -> None:
    entry = Entry(stream=False, chunks=[b"a", b"b"], gaps=[0.0, 0.0])
    with pytest.raises(Undecodable):
        decode(encode(entry))
