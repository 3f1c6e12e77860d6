"""The verified caller: what an identity holds, whatever its source wrote."""

from __future__ import annotations

import pytest

from sidecar.identity import ANONYMOUS, Identity


@pytest.mark.parametrize("method", ["jwt", "api_key"])
def test_an_empty_user_or_tenant_is_none(method: str) -> None:
    """`""` names nobody: no tenant shared by every caller whose source wrote it."""
    identity = Identity(method=method, user="", tenant="")  # type: ignore[arg-type]
    assert (identity.user, identity.tenant) == (None, None)
    kept = Identity(method=method, user="alice", tenant="acme")  # type: ignore[arg-type]
    assert (kept.user, kept.tenant) == ("alice", "acme")
    assert (ANONYMOUS.user, ANONYMOUS.tenant) == (None, None)
