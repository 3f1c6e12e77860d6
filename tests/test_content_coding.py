"""Content codings undone within a bound: names as headers list them, and each way a body
cannot be decoded said by kind (each caller answers it in its own terms)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from sidecar.content_coding import CodingError, coding_names, decode


def test_coding_names_follow_the_headers_in_order_without_identity() -> None:
    assert coding_names(["gzip, identity", " Deflate "]) == ["gzip", "deflate"]
    assert coding_names(["identity", ""]) == []


def test_codings_are_undone_last_applied_first() -> None:
    stacked = gzip.compress(zlib.compress(b"inner"))
    assert decode(stacked, ["deflate", "gzip"], 100) == b"inner"


@pytest.mark.parametrize(
    ("raw", "names", "kind"),
    [
        (b"x", ["br"], "unsupported"),
        (gzip.compress(b"a" * 1000), ["gzip"], "too_large"),
        (gzip.compress(b"abc")[:-4], ["gzip"], "corrupt"),
        (b"not gzip", ["gzip"], "corrupt"),
    ],
)
def test_what_cannot_be_decoded_says_why(raw: bytes, names: list[str], kind: str) -> None:
    with pytest.raises(CodingError) as caught:
        decode(raw, names, 100)
    assert caught.value.kind == kind
