"""The server section: distinct listeners and distinct identity headers."""

from __future__ import annotations

import pytest

from tests.support.config import problems_of


def test_listeners_must_differ() -> None:
    found = problems_of('server: {listen: "0.0.0.0:80", admin_listen: "0.0.0.0:80"}')
    assert found == ["server: listen and admin_listen must differ"]


@pytest.mark.parametrize("other", ["x_who", "X.Who"])  # one name to a WSGI / PHP app
def test_identity_header_names_must_differ(other: str) -> None:
    headers = {"user": "X-Who", "tenant": other}
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == ["app.identity_headers"]
