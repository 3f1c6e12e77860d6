"""Which methods read a resource: a HEAD is checked as the GET it stands for."""

from __future__ import annotations

import pytest

from sidecar.methods import asks_override, reads


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_get_and_head_read(method: str) -> None:
    assert reads(method)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "head"])
def test_other_methods_and_other_spellings_do_not(method: str) -> None:
    # Method names are case-sensitive (RFC 9110 9.1): `get` is not GET.
    assert not reads(method)


@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X_HTTP_Method_Override",
     "x_http-method", "X-METHOD_OVERRIDE", "X.HTTP.Method.Override", "x.http_method"],
)  # fmt: skip
def test_every_spelling_of_a_method_override_is_one(name: str) -> None:
    assert asks_override(["Host", name])


def test_other_headers_are_no_override() -> None:
    assert not asks_override(["Host", "X-HTTP-Host-Override", "X-Method", "Method", "X-Override"])
