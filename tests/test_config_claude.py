"""The claude section: the upstream it names and the API paths it forwards."""

from __future__ import annotations

import pytest

from sidecar.config import ClaudeConfig
from tests.support.config import problems_of


def test_the_builtin_fake_is_the_default_and_a_url_is_the_real_api() -> None:
    assert ClaudeConfig().is_fake
    assert not ClaudeConfig(base_url="https://api.anthropic.com", api_key="sk-x").is_fake


@pytest.mark.parametrize("key", [None, "", "   "])
def test_a_real_claude_needs_the_sidecars_key(key: str | None) -> None:
    """Without it every call would be Claude's 401, a 502 to each client: refused up front."""
    with pytest.raises(ValueError, match="api_key: needed when base_url is not builtin:fake"):
        ClaudeConfig(base_url="https://api.anthropic.com", api_key=key)
    assert ClaudeConfig(api_key=key).is_fake  # the built-in fake needs none


@pytest.mark.parametrize("url", ["api.anthropic.com", "ftp://api.anthropic.com", "builtin:real"])
def test_a_base_url_is_the_fake_or_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="base_url") as caught:
        ClaudeConfig(base_url=url)
    # The refusal names both things it would take (a typo of the fake is not "a URL").
    assert "http:// or https:// URL" in str(caught.value)
    assert "builtin:fake" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["https://gw.example/anthropic?key=abcdef", "https://gw.example/?", "https://gw.example/a#b",
     "https://user:secret@gw.example", "https://token@gw.example/anthropic"],
)  # fmt: skip
def test_a_base_url_has_nothing_that_would_be_accepted_and_never_sent(url: str) -> None:
    """Only its scheme, host, port and path reach Claude: credentials, a query or a
    fragment in it would be dropped unseen (a gateway's key among them), so they are
    refused, with the secret parts hidden from what `check` prints."""
    (problem,) = problems_of({"claude": {"base_url": url, "api_key": "sk-x"}})
    assert problem.startswith("claude.base_url: must be a base URL without credentials, ")
    for secret in ("secret", "abcdef", "token"):
        assert secret not in problem
    kept = ClaudeConfig(base_url="https://gw.example:8443/anthropic/", api_key="sk-x")
    assert kept.base_url == "https://gw.example:8443/anthropic"


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v2/files", "files"])
def test_forwarded_paths_are_anthropic_api_paths_below_v1(path: str) -> None:
    with pytest.raises(ValueError, match="not an Anthropic API path below /v1/"):
        ClaudeConfig(forward_paths=["/v1/models", path])


def test_forwarded_paths_below_v1_are_kept() -> None:
    paths = ["/v1/models", "/v1/files/"]
    assert ClaudeConfig(forward_paths=paths).forward_paths == paths


def test_a_default_max_tokens_is_one_a_request_may_send() -> None:
    """Requests take `max_tokens` up to 2**63 - 1 (an int64): a default beyond it would
    make every call that leaves it out a 400."""
    assert ClaudeConfig(max_tokens=2**63 - 1).max_tokens == 2**63 - 1
    with pytest.raises(ValueError, match="max_tokens"):
        ClaudeConfig(max_tokens=2**63)
