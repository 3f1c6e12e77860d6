"""`header_value`: a list header's lines read as one value, whatever mapping holds them."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.header_lists import header_value


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
