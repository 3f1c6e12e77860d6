"""Reading an inline image's size from its first bytes, and Claude's charge for a size."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.quotas.image_size import LEGACY_MAX_TOKENS, MAX_PATCHES, image_tokens, tokens_for
from tests.support.images import FORMATS, MALFORMED


@pytest.mark.parametrize("encode", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize(
    ("width", "height"), [(200, 100), (1000, 1000), (1092, 1092), (1568, 300), (4000, 3000)]
)
def test_an_image_header_gives_claudes_charge_for_its_size(
    encode: Callable[[int, int], str], width: int, height: int
) -> None:
    assert image_tokens(encode(width, height)) == tokens_for(width, height)


@pytest.mark.parametrize(
    ("width", "height", "least"),
    [
        # (size, Claude's charge under both published rules: width x height / 750 up to
        # Opus 4.6, 28 px patches from Opus 4.7, after each one's resize)
        (200, 100, max(math.ceil(200 * 100 / 750), 8 * 4)),
        (1000, 1000, max(1334, 36 * 36)),
        (1092, 1092, max(1590, 39 * 39)),
        (2576, 1456, 4784),  # Opus 4.7's largest: 92 x 52 patches
        (8000, 8000, 4761),  # resized to ~1932 px a side: 69 x 69 patches
        (1, 1, 1),
    ],
)
def test_the_charge_is_never_under_either_published_rule(
    width: int, height: int, least: int
) -> None:
    tokens = tokens_for(width, height)
    assert least <= tokens <= MAX_PATCHES
    assert tokens <= max(least, LEGACY_MAX_TOKENS) + 60  # and not far over the larger


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_header_that_cannot_be_read_gives_no_size(data: str) -> None:
    assert image_tokens(data) is None


def _decoded_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bytes each base64 decode of the header reader gave."""
    from sidecar.quotas import image_size

    sizes: list[int] = []
    real = base64.b64decode

    def counting(chunk: str, validate: bool = False) -> bytes:
        out = real(chunk, validate=validate)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(image_size, "b64decode", counting)
    return sizes


# What the reader decodes at most: the 30-byte head, then per JPEG segment one 4-byte
# marker window and the frame's 4 bytes (each window rounded out to whole base64 quads).
_MOST_DECODED = 33 + 64 * 6 + 6


_HEADS = st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8X", b"\xff\xd8"]
)


@given(head=_HEADS, tail=st.binary(max_size=3000))
@settings(max_examples=400, deadline=None)
def test_any_bytes_are_read_from_a_small_window_without_raising(head: bytes, tail: bytes) -> None:
    """Any image data (a real format's magic then anything): a charge within the bounds or
    None, from a few hundred decoded bytes at most, whatever the data's length."""
    with pytest.MonkeyPatch.context() as patch:
        sizes = _decoded_bytes(patch)
        tokens = image_tokens(base64.b64encode(head + tail).decode())
    assert tokens is None or 1 <= tokens <= MAX_PATCHES
    assert sum(sizes) <= _MOST_DECODED


@given(
    st.one_of(
        st.text(max_size=400),
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n\r",
            max_size=400,
        ),
        st.binary(max_size=300).map(lambda raw: "/9j/" + base64.b64encode(raw).decode()),
    )
)
@settings(max_examples=400, deadline=None)
def test_any_text_as_base64_data_never_raises(data: str) -> None:
    """Text that is no base64 (other alphabets, padding inside, whitespace, any code point)
    is None or a charge, never an exception."""
    with pytest.MonkeyPatch.context() as patch:
        sizes = _decoded_bytes(patch)
        tokens = image_tokens(data)
    assert tokens is None or 1 <= tokens <= MAX_PATCHES
    assert sum(sizes) <= _MOST_DECODED


def test_a_jpeg_of_many_large_segments_is_read_by_windows_only() -> None:
    """Each segment is skipped by its length: a 4 MB run of 64 kB segments costs a few
    hundred decoded bytes, not the segments."""
    segment = b"\xff\xe1\xff\xff" + bytes(0xFFFD)
    data = base64.b64encode(
        b"\xff\xd8" + segment * 63 + b"\xff\xc0\x00\x11\x08\x02\x00\x03\x00"
    ).decode()
    with pytest.MonkeyPatch.context() as patch:
        sizes = _decoded_bytes(patch)
        assert image_tokens(data) == tokens_for(0x300, 0x200)
    assert sum(sizes) <= _MOST_DECODED
