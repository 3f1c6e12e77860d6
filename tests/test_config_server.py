"""The server section: distinct listeners and distinct identity headers."""

from __future__ import annotations

import pytest

from sidecar import loader
from tests.support.config import problems_of


def test_listeners_must_differ() -> None:
    found = problems_of('server: {listen: "0.0.0.0:80", admin_listen: "0.0.0.0:80"}')
    assert found == ["server: listen and admin_listen must differ"]


@pytest.mark.parametrize("other", ["x_who", "X.Who"])  # one name to a WSGI / PHP app
def test_identity_header_names_must_differ(other: str) -> None:
    headers = {"user": "X-Who", "tenant": other}
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == ["app.identity_headers"]


def test_the_app_url_is_a_base_without_a_query_or_fragment() -> None:
    """Each request's path and query are appended to `app.url`: a query in it would land
    inside every path (`/base?k=v/a/b`), a fragment would cut each request's path off (all
    to `/base`). Refused, the query's values hidden; its credentials stay allowed."""
    for url in ("http://app:3000/base?key=SECRET", "http://app:3000/base#frag", "http://app/?"):
        (problem,) = problems_of({"app": {"url": url}})
        assert problem.startswith("app.url: must be a base URL without a query or fragment")
        assert "SECRET" not in problem
    config = loader.validate({"app": {"url": "http://u:p@app:3000/base/"}}, {})
    assert config.app is not None
    assert config.app.url == "http://u:p@app:3000/base"
