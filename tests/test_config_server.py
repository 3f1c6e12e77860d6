"""The server section: distinct listeners and distinct identity headers."""

from __future__ import annotations

from tests.support.config import problems_of


def test_listeners_must_differ() -> None:
    found = problems_of('server: {listen: "0.0.0.0:80", admin_listen: "0.0.0.0:80"}')
    assert found == ["server: listen and admin_listen must differ"]


def test_identity_header_names_must_differ() -> None:
    headers = {"user": "X-Who", "tenant": "x_who"}  # one name to a WSGI app
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == ["app.identity_headers"]
