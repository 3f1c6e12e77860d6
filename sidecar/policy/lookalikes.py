"""Look-alike folding for deny rules under `screening.normalize`: combining marks removed
and letters from other scripts read as the ASCII they are drawn like.

`ignore` spelled `і` (Cyrillic), `ı` (dotless), `i̇` (`i` plus a combining dot) or with an
accent on any letter reads as `ignore` to a person and to Claude, yet no rule written
in ASCII matches it. `fold` gives the text such a rule can match (screening removes
invisible characters first and folds whitespace after):

- canonical decomposition (NFD), then every combining mark (Unicode categories `Mn`
  and `Me`: accents, overlays such as U+0336, enclosing circles) removed;
- every character past ASCII that Unicode's confusables data (UTS #39, as shipped by
  the `confusable-homoglyphs` package) puts in one class with an ASCII character
  replaced by it: the class's ASCII letter of the same case when it has one (Cyrillic
  `І` is `I`, `і` is `i`, Greek `Ο` is `O`), else a letter of the other case, a digit,
  any ASCII character, or an ASCII sequence (`rn`);
- NFKC (full-width forms, ligatures and the like to their plain forms), then the two
  steps above once more for what NFKC gave, then NFC, so what is left (Hangul, other
  scripts) is composed again.

ASCII is never changed: UTS #39's skeleton also folds `m` to `rn` and `l`, `I`, `1` into
one, which would keep plain ASCII rules from matching plain ASCII text. The table is
built once, on the first screening policy that asks for it (config load), never when
`normalize` is off; applying it is one `str.translate`.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from typing import Final

# Combining marks are in planes 0 and 1 and in plane 14's variation selectors only.
_MARK_PLANES: Final = (range(0x80, 0x20000), range(0xE0000, 0xE1000))
_MARKS: Final = frozenset({"Mn", "Me"})


def fold(text: str) -> str:
    """`text` with combining marks removed and look-alikes read as ASCII, then in NFKC;
    `text` itself when it is ASCII."""
    if text.isascii():
        return text
    folding = table()
    # Before NFKC, which moves some look-alikes out of their class (lunate sigma `ϲ`,
    # drawn like `c`, is final sigma `ς` in NFKC), and after it, for what NFKC gives.
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFD", text).translate(folding))
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).translate(folding))


@cache
def table() -> dict[int, str | None]:
    """The `str.translate` table: each combining mark to nothing, each look-alike to its
    ASCII (see the module)."""
    folded: dict[int, str | None] = dict(_lookalikes())
    for plane in _MARK_PLANES:
        for code in plane:
            if unicodedata.category(chr(code)) in _MARKS:
                folded[code] = None
    return folded


def _lookalikes() -> dict[int, str]:
    from confusable_homoglyphs.confusables import confusables_data  # loaded on first use

    data: dict[str, list[dict[str, str]]] = confusables_data
    # The data lists each source with its prototype and each prototype with its sources,
    # so a class (one prototype and every character drawn like it) is a connected part.
    linked: dict[str, set[str]] = {}
    for key, entries in data.items():
        for entry in entries:
            linked.setdefault(key, set()).add(entry["c"])
            linked.setdefault(entry["c"], set()).add(key)
    folded: dict[int, str] = {}
    done: set[str] = set()
    for start in linked:
        if start in done:
            continue
        members: set[str] = set()
        todo = [start]
        while todo:
            member = todo.pop()
            if member not in members:
                members.add(member)
                todo.extend(linked[member])
        done |= members
        ascii_members = sorted(m for m in members if m.isascii())
        if not ascii_members:
            continue
        for member in members:
            if len(member) == 1 and not member.isascii():
                folded[ord(member)] = _pick(member, ascii_members)
    return folded


def _pick(char: str, ascii_members: list[str]) -> str:
    """The ASCII a look-alike is read as (see the module), from its class's members."""
    singles = [m for m in ascii_members if len(m) == 1]
    category = unicodedata.category(char)
    preferences = (
        (lambda m: m.isupper()) if category == "Lu" else (lambda m: m.islower()),
        str.isalpha,
        str.isdigit,
    )
    if category.startswith("L"):
        for wanted in preferences:
            chosen = [m for m in singles if wanted(m)]
            if chosen:
                return chosen[0]
    elif category == "Nd":
        digits = [m for m in singles if m.isdigit()]
        if digits:
            return digits[0]
    return singles[0] if singles else ascii_members[0]


__all__ = ["fold", "table"]
