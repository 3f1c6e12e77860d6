"""The verified caller: what an identity holds, whatever its source wrote."""

from __future__ import annotations

import pytest

from sidecar.identity import ANONYMOUS, Identity, is_name


@pytest.mark.parametrize("method", ["jwt", "api_key"])
def test_an_empty_user_or_tenant_is_none(method: str) -> None:
    """`""` names nobody: no tenant shared by every caller whose source wrote it."""
    identity = Identity(method=method, user="", tenant="")  # type: ignore[arg-type]
    assert (identity.user, identity.tenant) == (None, None)
    kept = Identity(method=method, user="alice", tenant="acme")  # type: ignore[arg-type]
    assert (kept.user, kept.tenant) == ("alice", "acme")
    assert (ANONYMOUS.user, ANONYMOUS.tenant) == (None, None)


@pytest.mark.parametrize(
    ("value", "named"),
    [("alice", True), ("Zoë 名前", True), ("a\xa0b", True), ("a\x00b", False),
     ("a\r\nb", False), ("a\x7f", False), ("a\x85b", False), ("a\x9fb", False),
     ("a\u2028b", False), ("a\u2029b", False)],
)  # fmt: skip
def test_a_name_has_no_control_character_nor_line_separator(value: str, named: bool) -> None:
    """What may name a user, tenant or API key (it goes into the app's identity headers):
    any printable text, never a character that ends a line for a header or a text reader."""
    assert is_name(value) is named
