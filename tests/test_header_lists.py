"""`header_value`: a list header's lines read as one value, whatever mapping holds them;
`sole_value`: a field that may be given once, refused when given twice differently."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from sidecar.header_lists import RepeatedField, folded_name, header_value, sole_value


def test_repeated_lines_are_one_comma_list_in_order() -> None:
    headers = CIMultiDictProxy(
        CIMultiDict([("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 3.3.3.3")])
    )
    assert header_value(headers, "X-Forwarded-For") == "1.1.1.1, 2.2.2.2, 3.3.3.3"


def test_one_line_is_itself_and_none_when_absent() -> None:
    headers = CIMultiDict([("anthropic-beta", "a,b")])
    assert header_value(headers, "Anthropic-Beta") == "a,b"
    assert header_value(headers, "anthropic-version") is None


def test_a_plain_mapping_has_one_line_per_name() -> None:
    assert header_value({"anthropic-beta": "x"}, "anthropic-beta") == "x"
    assert header_value({}, "anthropic-beta") is None


def test_a_sole_field_is_its_value_repeated_copies_included_and_none_when_absent() -> None:
    headers = CIMultiDict([("x-api-key", "k"), ("X-Api-Key", "k")])
    assert sole_value(headers, "X-API-KEY") == "k"
    assert sole_value(headers, "Authorization") is None
    assert sole_value({"x-api-key": "k"}, "x-api-key") == "k"


def test_a_sole_field_given_twice_differently_is_refused_in_headers_and_queries() -> None:
    with pytest.raises(RepeatedField) as in_header:
        sole_value(CIMultiDict([("Authorization", "Bearer a"), ("authorization", "Bearer b")]),
                   "Authorization")  # fmt: skip
    with pytest.raises(RepeatedField) as in_query:
        sole_value(MultiDict([("access_token", "a"), ("access_token", "b")]), "access_token")
    assert (in_header.value.name, in_query.value.name) == ("Authorization", "access_token")


def test_a_folded_name_is_the_one_an_app_behind_cgi_reads() -> None:
    """WSGI/CGI fold `_` into `-`, PHP and lighttpd `.` too: one spelling for all three."""
    for name in ("X-Real-IP", "x_real_ip", "X.Real.IP", "x-Real_IP"):
        assert folded_name(name) == "x-real-ip"
