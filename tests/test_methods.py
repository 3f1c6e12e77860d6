"""Which methods read a resource: a HEAD is checked as the GET it stands for."""

from __future__ import annotations

import pytest

from sidecar.methods import reads


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_get_and_head_read(method: str) -> None:
    assert reads(method)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "head"])
def test_other_methods_and_other_spellings_do_not(method: str) -> None:
    # Method names are case-sensitive (RFC 9110 9.1): `get` is not GET.
    assert not reads(method)
