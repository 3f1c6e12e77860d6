"""Prompt screening: a length limit over all request text and RE2 deny rules, scanned once.

RE2 runs in linear time, so no prompt can make a rule backtrack catastrophically.
Which texts a request has is `claude_schema`'s business (every field Claude reads);
this module only judges them. Rejections name the rule, never echo the text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any, Final

from sidecar.config import ScreeningConfig, compile_re2_set
from sidecar.errors import reject
from sidecar.policy import lookalikes
from sidecar.policy.claude_schema import Collected, UnknownBlock, collect_texts

# Unicode's Default_Ignorable_Code_Point set: zero-width spaces and joiners, bidi and
# other invisible format controls, variation selectors, tag characters, soft hyphen.
# Renderers (and Claude's reading) skip them, so they split a phrase without showing.
_INVISIBLE: Final = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]+"
)
# Tag characters spelling ASCII (U+E0020-U+E007E): invisible, yet a model may read them as
# the letters they mirror ("ASCII smuggling"). Matched removed and, separately, decoded.
_TAGS: Final = re.compile("[\U000e0020-\U000e007e]+")
_WHITESPACE: Final = re.compile(r"\s+")
_UNUSUAL_SPACING: Final = re.compile(r"\s\s|[^\S ]")  # anything folding would change


def may_change_in_normalize(text: str) -> bool:
    """False when `normalize(text)` is `text` for sure (plain ASCII with single spaces)."""
    return not text.isascii() or _UNUSUAL_SPACING.search(text) is not None


def normalize(text: str) -> str:
    """The text as deny rules see it under `screening.normalize`.

    Invisible characters removed, then Unicode NFKC (full-width, ligatures,
    super/subscripts and the like to their plain forms), then every run of
    whitespace (any Unicode space, tab or line break) folded to one space.
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", _INVISIBLE.sub("", text)))


def fold_lookalikes(text: str) -> str:
    """The text as deny rules also see it under `screening.normalize`: as `normalize` has
    it, with combining marks removed and letters drawn like ASCII read as it too
    (`sidecar.policy.lookalikes`)."""
    return _WHITESPACE.sub(" ", lookalikes.fold(_INVISIBLE.sub("", text)))


def hidden_texts(text: str) -> list[str]:
    """What tag characters in `text` spell, for deny rules under `screening.normalize`:
    the text with them read as ASCII in place, and their letters alone. Empty without any
    (the common case: one regex search)."""
    runs = _TAGS.findall(text)
    if not runs:
        return []
    table = _TAG_TABLE
    return [text.translate(table), " ".join(run.translate(table) for run in runs)]


_TAG_TABLE: Final = {code: code - 0xE0000 for code in range(0xE0020, 0xE007F)}


class Screener:
    """Length and deny-rule checks for one screening policy (compiled once)."""

    def __init__(self, config: ScreeningConfig) -> None:
        self.max_chars = config.max_prompt_chars
        self.max_attachment_bytes = config.max_attachment_bytes
        self.normalize = config.normalize
        if self.normalize:
            lookalikes.table()  # built once per process, at load, not on a request
        self.unknown_blocks = config.unknown_blocks
        self.refuse_remote = config.remote_content == "refuse"
        self._names = [rule.name for rule in config.deny_patterns]
        self._set: Any = None
        if config.deny_patterns:  # validated at load: the set compiles
            self._set = compile_re2_set([rule.pattern for rule in config.deny_patterns])

    def screen_request(self, body: Mapping[str, Any]) -> Collected:
        """Screen every text of a Messages request body; its texts for the token estimate."""
        try:
            collected = collect_texts(body, self.unknown_blocks)
        except UnknownBlock as exc:
            raise reject(
                "screening_unknown_block", f"content type {exc.kind[:64]!r} is not accepted here"
            ) from None
        if self.refuse_remote and collected.remote is not None:
            raise reject(
                "screening_remote_content",
                f"{collected.remote} is not accepted here: Claude would read content "
                "the sidecar cannot screen",
            )
        self.screen(collected.texts, collected.attachment_bytes, collected.joined)
        return collected

    def screen(
        self, texts: Iterable[str], attachment_bytes: int = 0, joined: Iterable[str] = ()
    ) -> None:
        """Raise a 400 Rejection for too much text, too large attachments, or a deny-rule hit.

        `joined` texts are matched but not counted (they repeat texts already counted).
        """
        texts = list(texts)
        chars = sum(map(len, texts))
        if chars > self.max_chars:
            raise reject(
                "screening_length",
                f"prompt too long: {chars} characters, the limit is {self.max_chars}",
            )
        if attachment_bytes > self.max_attachment_bytes:
            raise reject(
                "screening_attachment",
                f"attachments too large: {attachment_bytes} bytes, the limit is "
                f"{self.max_attachment_bytes}",
            )
        if self._set is None:
            return
        # Each distinct text once: tool schemas and inputs repeat the same keys many times.
        for text in dict.fromkeys((*texts, *joined)):
            self._match(text)
            if self.normalize and may_change_in_normalize(text):
                normal = normalize(text)
                if normal != text:
                    self._match(normal)
                self._match_folded(text, normal)
                for hidden in hidden_texts(text):
                    normal = normalize(hidden)
                    self._match(normal)
                    self._match_folded(hidden, normal)

    def _match_folded(self, text: str, normal: str) -> None:
        """Match `text` with look-alikes folded too, past ASCII (`normal` is `normalize(text)`,
        already matched: each reading once)."""
        if normal.isascii():
            return  # nothing past ASCII was left to fold
        folded = fold_lookalikes(text)
        if folded != normal:
            self._match(folded)

    def _match(self, text: str) -> None:
        # Bytes, with lone surrogates passed through: JSON may carry them, RE2 wants UTF-8.
        hits = self._set.Match(text.encode("utf-8", "surrogatepass"))
        if hits:
            name = self._names[min(hits)]
            raise reject("screening_rule", f'prompt matches deny rule "{name}"')


__all__ = [
    "Collected",
    "Screener",
    "collect_texts",
    "fold_lookalikes",
    "hidden_texts",
    "may_change_in_normalize",
    "normalize",
]
