"""Which methods read a resource: a HEAD is checked as the GET it stands for."""

from __future__ import annotations

import pytest

from sidecar.methods import asks_override, query_asks_override, reads


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


@pytest.mark.parametrize(
    "query",
    ["_method=DELETE", "%5Fmethod=PUT", "%5fmethod=PUT", "_METHOD=x", "_Method", "_method",
     "_method[]=DELETE", "_method%5B%5D=DELETE", "_method[0]=x", "a=1&_method=DELETE",
     "a=1;_method=DELETE", "_%6Dethod=x", ".method=x", "%2Emethod=x", "+_method=x",
     "%20_method=x", "_method%00junk=x", "a=%26&_method=x"],
)  # fmt: skip
def test_every_spelling_of_a_method_query_parameter_is_an_override(query: str) -> None:
    # Percent-decoded as every framework does; PHP (Laravel, Symfony) also reads ` ` and `.`
    # as `_`, drops leading spaces and stops at a NUL; `_method[]` is the array form.
    assert query_asks_override(query)


@pytest.mark.parametrize(
    "query",
    ["", "a=1", "method=DELETE", "x_method=1", "_methods=1", "_method_x=1", "q=_method",
     "q=%5Fmethod", "a%ZZ=1", "%=1", "&&;;"],
)  # fmt: skip
def test_other_query_strings_are_no_override(query: str) -> None:
    assert not query_asks_override(query)
