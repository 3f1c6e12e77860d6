"""The int64 bound is one named constant, `sidecar.int64.INT64`, and nothing spells it again."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.int64 import INT64

_SPELLED = re.compile(r"2\s*\*\*\s*6[34]|9223372036854775|18446744073709551")


def test_int64_is_the_signed_64_bit_range() -> None:
    assert INT64 - 1 == 0x7FFF_FFFF_FFFF_FFFF


def test_no_module_spells_the_bound_again() -> None:
    """Each place that bounds a number to an int64 (span attributes, a request's
    `max_tokens`, config defaults) names INT64: a second spelling could drift from it."""
    package = Path(__file__).parent.parent / "sidecar"
    spelled = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "int64.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _SPELLED.search(line.split("#")[0])
    ]
    assert spelled == []
