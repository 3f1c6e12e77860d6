"""Look-alike folding for deny rules: combining marks removed, letters from other scripts
read as the ASCII they are drawn like (UTS #39 confusables), ASCII never changed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy.lookalikes import fold
from tests.support.sidecars import ROOT

# The reference: characters a person reads as the ASCII letter beside them (chosen by
# hand from Unicode's confusables, not taken from the code under test).
LOOKALIKES: dict[str, list[str]] = {
    "a": ["\u0430", "\u0251", "\u03b1"],  # Cyrillic а, Latin alpha ɑ, Greek α
    "c": ["\u0441", "\u03f2", "\u1d04"],  # Cyrillic с, lunate sigma ϲ, small capital ᴄ
    "d": ["\u0501"],  # Cyrillic ԁ
    "e": ["\u0435"],  # Cyrillic е
    "h": ["\u04bb", "\u0570"],  # Cyrillic һ, Armenian հ
    "i": ["\u0456", "\u0131"],  # Cyrillic і, dotless ı
    "l": ["\u01c0"],  # dental click ǀ
    "n": ["\u0578"],  # Armenian ո
    "o": ["\u043e", "\u03bf", "\u0585"],  # Cyrillic о, Greek ο, Armenian օ
    "s": ["\u0455"],  # Cyrillic ѕ
    "u": ["\u057d", "\u028b"],  # Armenian ս, ʋ
    "A": ["\u0391", "\u0410"],  # Greek Α, Cyrillic А
    "C": ["\u0421"],  # Cyrillic С
    "E": ["\u0415"],  # Cyrillic Е
    "I": ["\u0406", "\u0399"],  # Cyrillic І, Greek Ι
    "O": ["\u039f", "\u041e"],  # Greek Ο, Cyrillic О
    "S": ["\u0405"],  # Cyrillic Ѕ
}
# Combining marks: accents, a dot above, a stroke overlay, an enclosing circle (Me).
MARKS = ["\u0301", "\u0307", "\u0308", "\u0336", "\u0338", "\u20dd"]


@pytest.mark.parametrize(
    ("letter", "lookalike"), [(k, v) for k, vs in LOOKALIKES.items() for v in vs]
)
def test_each_lookalike_is_read_as_its_ascii_letter(letter: str, lookalike: str) -> None:
    assert fold(f"x{lookalike}y") == f"x{letter}y"


@pytest.mark.parametrize("mark", MARKS)
def test_combining_marks_are_removed(mark: str) -> None:
    assert fold(f"i{mark}gno{mark}re") == "ignore"


def test_precomposed_letters_lose_their_marks_and_other_scripts_stay() -> None:
    assert fold("ignóre résumé Ä") == "ignore resume A"
    assert (
        fold("\ud55c\uad6d\uc5b4 \u4e2d\u6587") == "\ud55c\uad6d\uc5b4 \u4e2d\u6587"
    )  # composed again


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_ascii_is_never_changed(text: str) -> None:
    """UTS #39 folds `m` to `rn` and `l` with `I`: an ASCII rule must still match ASCII."""
    assert fold(text) == text


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_any_text_folds_without_error_and_folding_is_stable(text: str) -> None:
    folded = fold(text)
    assert fold(folded) == folded


def test_the_table_is_not_loaded_while_normalize_is_off() -> None:
    """Screening without `normalize` neither imports the confusables data nor builds the table."""
    code = (
        "import sys\n"
        "from sidecar.config import ScreeningConfig\n"
        "from sidecar.policy import Screener\n"
        "Screener(ScreeningConfig(deny_patterns=['x'])).screen(['\u0456gnore'])\n"
        "from sidecar.policy import lookalikes\n"
        "assert 'confusable_homoglyphs' not in sys.modules\n"
        "assert lookalikes.table.cache_info().currsize == 0\n"
        "Screener(ScreeningConfig(deny_patterns=['x'], normalize=True))\n"
        "assert lookalikes.table.cache_info().currsize == 1\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
