"""Span attributes to protobuf's wire format: the `Span.attributes` entries the SDK's encoder writes.

A pair of key and value that recurs (the sidecar's labels: route, model, provider,
outcome, status code) is encoded once and kept in a bounded cache keyed by (key, type,
value): the hits are found by C iterators, no Python call per attribute. A value that
does not recur (an id, a token count, a timing) is written here directly, after the
cached `KeyValue` of its key: a str, int, bool or float as protobuf writes it. A key
that has had `WIDE_KEY` values kept is wide: its values are written each time and
no longer kept, so ids and counts leave the cache to the labels instead of filling it
(a full cache would start over, labels and all). Anything else (tuples, bytes,
mappings, None, odd types, values or keys protobuf refuses) goes through the SDK's
`_encode_attributes`, which logs and drops exactly as in the SDK.
`tests/test_span_encoder.py` holds every value type, edge and odd key to the SDK's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.int64 import INT64

# Encoded (key, value) pairs kept (~100-200 KiB when full): far more than the sidecar's
# labels; a full cache is emptied and refills with what recurs (float values, timings,
# are never kept).
PAIR_CACHE_SIZE: Final = 1024
# Distinct values of one key kept per filling of that cache: a key past it (an id, a
# count) has its values written each time, and leaves the room to the labels.
WIDE_KEY: Final = 32
ONE_BYTE: Final = [bytes((n,)) for n in range(0x80)]
TWO_BYTES: Final = struct.Struct("<H").pack  # a varint of 0x80 to 0x3FFF, given its bits
_DOUBLE: Final = struct.Struct("<d").pack
# An attribute: `Span.attributes` holds `KeyValue(key, value=AnyValue)` messages; a
# value's field is `KeyValue.value`'s tag, the length of the `AnyValue`, the `AnyValue`.
_ATTRIBUTE: Final[bytes] = Span(attributes=[KeyValue()]).SerializeToString()[:1]
_VALUE: Final[bytes] = KeyValue(value=AnyValue()).SerializeToString()[:1]
_STRING: Final[bytes] = AnyValue(string_value="").SerializeToString()[:1]
_INT: Final[bytes] = AnyValue(int_value=0).SerializeToString()[:1]
_BOOLS: Final[tuple[bytes, ...]] = tuple(
    KeyValue(value=AnyValue(bool_value=v)).SerializeToString() for v in (False, True)
)
_SMALL_INTS: Final[list[bytes]] = [
    KeyValue(value=AnyValue(int_value=n)).SerializeToString() for n in range(0x80)
]
_DOUBLE_FIELD: Final[bytes] = KeyValue(value=AnyValue(double_value=1.0)).SerializeToString()[:3]
_UINT64: Final = 2 * INT64  # an int64 below 0 is encoded as this plus it
_STR: Final = frozenset({str})


def bytes_format(*pieces: bytes) -> bytes:
    """A bytes format: `pieces` with a `%b` between two."""
    return b"%b".join(piece.replace(b"%", b"%%") for piece in pieces)


# Formats of an attribute (tag, the `KeyValue`'s length, the key, the value's field) and
# of pieces of one: a string's (the `AnyValue`'s length, the string's tag and length, the
# string), a double's field after its tag and length, an int's value field.
_PAIR: Final = bytes_format(_ATTRIBUTE, b"", b"", b"")
_STRING_PAIR: Final = bytes_format(_ATTRIBUTE, b"", _VALUE, _STRING, b"", b"")
_DOUBLE_PAIR: Final = bytes_format(_ATTRIBUTE, b"", _DOUBLE_FIELD, b"")
_INT_FIELD: Final = bytes_format(_VALUE, _INT, b"")


def varint(value: int) -> bytes:
    """`value` (≥ 0) as a protobuf varint."""
    if value < 0x80:
        return ONE_BYTE[value]
    if value < 0x4000:
        return TWO_BYTES(value & 0x7F | 0x80 | (value >> 7) << 8)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pair(keyed: bytes, field: bytes) -> bytes:
    """An attribute: its tag, the length of its `KeyValue`, the key, the value's field."""
    size = len(keyed) + len(field)
    return _PAIR % (ONE_BYTE[size] if size < 0x80 else varint(size), keyed, field)


class AttributeEncoder:
    """Attributes to the `Span.attributes` entries of their span, as the SDK encodes them.

    Not thread-safe: its caches are the caller's to guard (`SpanEncoder`'s lock).
    """

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, type, object], bytes] = {}
        self._distinct: dict[str, int] = {}  # values of a key kept in `_pairs`
        self._wide: set[str] = set()  # keys with `WIDE_KEY` values kept: no more kept
        self._keys: dict[str, bytes] = {}  # a `KeyValue` with just the key, encoded

    def cached_keys(self) -> list[str]:
        """The key of each attribute pair kept in the cache (a key once per value kept)."""
        return [key for key, _, _ in self._pairs]

    def wide_keys(self) -> frozenset[str]:
        """Keys with `WIDE_KEY` values kept: their values are encoded each time, not kept."""
        return frozenset(self._wide)

    def encode(self, attributes: Mapping[str, Any]) -> bytes:
        """A `Span` holding just `attributes`, encoded: the SDK's `_encode_attributes` alike."""
        values = attributes.values()
        # The type is part of the key: True == 1 == 1.0 as dict keys. Keys are built and
        # looked up by C iterators (zip reuses its tuple: nothing kept, nothing allocated);
        # only pairs not cached take a Python call each.
        get = self._pairs.get
        try:
            encoded: list[bytes | None] = list(
                map(get, zip(attributes, map(type, values), values, strict=True))
            )
        except TypeError:  # a value that cannot be hashed (a list, a mapping): one at a time
            encoded = []
            for key, value in attributes.items():
                try:
                    encoded.append(get((key, type(value), value)))
                except TypeError:
                    encoded.append(None)
        misses = encoded.count(None)
        if misses:
            items = list(attributes.items())
            index = -1
            miss = self._miss
            for _ in range(misses):  # found by C, not by a Python loop over every attribute
                index = encoded.index(None, index + 1)
                encoded[index] = miss(*items[index])
        return b"".join(encoded)  # type: ignore[arg-type]  # no None left

    def _miss(self, key: str, value: Any) -> bytes:
        """One attribute the cache did not answer: encoded, and kept if a plain label.

        A str, int, bool or float is written here as protobuf writes it, after the
        cached `KeyValue` of its key; anything else, or what protobuf would refuse,
        goes through the SDK's function (which logs and drops what it cannot encode).
        """
        keyed = self._keys.get(key)
        if keyed is None:
            keyed = self._key(key)
            if keyed is None:  # a key protobuf refuses
                return self._sdk_pair(key, value)
        kind = type(value)
        if kind is str:
            try:
                data = value.encode()
            except UnicodeEncodeError:  # a lone surrogate: to the SDK, out of this handler
                data = None
            if data is None:
                return self._sdk_pair(key, value)
            size = len(data)
            total = len(keyed) + size + 4  # the `KeyValue`'s length
            if total < 0x80:  # and so those of the `AnyValue` and of the string
                pair = _STRING_PAIR % (
                    ONE_BYTE[total],
                    keyed,
                    ONE_BYTE[size + 2],
                    ONE_BYTE[size],
                    data,
                )
            else:
                any_value = _STRING + varint(size) + data
                pair = _pair(keyed, _VALUE + varint(len(any_value)) + any_value)
        elif kind is int:
            if 0 <= value < 0x80:
                pair = _pair(keyed, _SMALL_INTS[value])
            elif -INT64 <= value < INT64:
                number = varint(value if value >= 0 else value + _UINT64)
                pair = _pair(keyed, _INT_FIELD % (ONE_BYTE[len(number) + 1], number))
            else:  # out of int64: the SDK logs it and drops it
                return self._sdk_pair(key, value)
        elif kind is float:  # timings: never kept
            size = len(keyed) + 11  # the value's field: 3 bytes, then the double
            return _DOUBLE_PAIR % (
                ONE_BYTE[size] if size < 0x80 else varint(size),
                keyed,
                _DOUBLE(value),
            )
        elif kind is bool:
            pair = _pair(keyed, _BOOLS[value])
        elif kind is tuple and _STR.issuperset(map(type, value)):  # finish reasons: rare
            pair = self._sdk_pair(key, value)
            if not pair:  # refused: logged by the SDK's function each time, as the SDK
                return pair
        else:  # only those are kept: other values could equal a kept one ((1,) == (True,))
            return self._sdk_pair(key, value)
        if key not in self._wide:  # ids and counts: written each time, not kept
            self._keep(key, kind, value, pair)
        return pair

    def _keep(self, key: str, kind: type, value: Any, pair: bytes) -> None:
        """Keep a pair; at its `WIDE_KEY`th value kept, its key is wide (none kept after)."""
        pairs = self._pairs
        if len(pairs) >= PAIR_CACHE_SIZE:  # start over: the labels come back
            pairs.clear()
            self._distinct.clear()
            self._wide.clear()
        seen = self._distinct.get(key, 0) + 1
        self._distinct[key] = seen
        if seen >= WIDE_KEY:
            self._wide.add(key)
        pairs[key, kind, value] = pair

    def _key(self, key: str) -> bytes | None:
        """A `KeyValue` holding just `key`, encoded (None when protobuf refuses the key)."""
        keys = self._keys
        try:
            keyed: bytes = KeyValue(key=key).SerializeToString()
        except (TypeError, ValueError):  # not text, or not UTF-8 (a lone surrogate)
            return None
        if len(keys) >= PAIR_CACHE_SIZE:
            keys.clear()
        keys[key] = keyed
        return keyed

    @staticmethod
    def _sdk_pair(key: str, value: Any) -> bytes:
        encoded: bytes = Span(attributes=_encode_attributes({key: value})).SerializeToString()
        return encoded
