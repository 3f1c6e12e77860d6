"""Reading an inline image's size from its first bytes, and Claude's charge for a size."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

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
