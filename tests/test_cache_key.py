"""The cache key: every answer-changing field counts, metadata does not, scopes never mix."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.cache.key import Scope, cache_key, directives, sampled, scope_key
from sidecar.identity import Identity
from sidecar.scope import scope_of
from sidecar.upstream import request_headers

BODY: dict[str, Any] = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 100,
    "temperature": 0,
    "stream": True,
    "system": "be brief",
    "messages": [{"role": "user", "content": "hi"}],
}


def _scoped(scope: Scope, identity: Identity, client_ip: str) -> str:
    return scope_key(scope, scope_of(identity, client_ip))


def _key(body: dict[str, Any], headers: dict[str, str] | None = None, scope: str = "t") -> str:
    return cache_key("anthropic", body, headers or {}, scope)


def test_the_key_is_a_sha256_of_a_canonical_form() -> None:
    key = _key(BODY)
    assert len(key) == 64
    assert int(key, 16) >= 0
    reordered = dict(reversed(list(BODY.items())))
    assert _key(reordered) == key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "claude-haiku-5-5"),
        ("system", "be verbose"),
        ("messages", [{"role": "user", "content": "hello"}]),
        ("tools", [{"name": "t", "input_schema": {"type": "object"}}]),
        ("tool_choice", {"type": "any"}),
        ("max_tokens", 101),
        ("temperature", 0.5),
        ("top_p", 0.9),
        ("top_k", 5),
        ("stop_sequences", ["END"]),
        ("thinking", {"type": "enabled", "budget_tokens": 1024}),
        ("stream", False),
        ("service_tier", "auto"),  # a field added later still counts
    ],
)
def test_every_answer_changing_field_changes_the_key(field: str, value: Any) -> None:
    assert _key({**BODY, field: value}) != _key(BODY)


def test_spellings_of_one_number_and_one_beta_list_are_one_key() -> None:
    body = {**BODY, "temperature": 0.0, "top_p": 1.0}
    assert _key(body) == _key({**BODY, "temperature": 0, "top_p": 1})
    assert _key({**BODY, "temperature": 0.5}) != _key(BODY)
    assert _key(BODY, {"anthropic-beta": "a, b"}) == _key(BODY, {"anthropic-beta": "b,a,a"})
    assert _key(BODY, {"anthropic-beta": "a"}) != _key(BODY, {"anthropic-beta": "a,b"})
    assert body["temperature"] == 0.0  # the request itself is left as it was
    assert isinstance(body["temperature"], float)


@pytest.mark.parametrize(
    ("written", "other"),
    [
        # Free-form JSON Claude reads as text: a tool's schema, a tool call in the history.
        ({"tools": [{"name": "t", "input_schema": {"type": "number", "minimum": 0.0}}]},
         {"tools": [{"name": "t", "input_schema": {"type": "number", "minimum": 0}}]}),
        ({"messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "t", "input": {"n": 2.0}}]}]},
         {"messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "t", "input": {"n": 2}}]}]}),
        ({"top_k": 5.0}, {"top_k": 5}),  # an integer field: `5.0` the API may refuse
    ],
)  # fmt: skip
def test_numbers_claude_may_read_apart_are_keyed_as_written(
    written: dict[str, Any], other: dict[str, Any]
) -> None:
    assert _key({**BODY, **written}) != _key({**BODY, **other})


def test_metadata_does_not_change_the_key() -> None:
    assert _key({**BODY, "metadata": {"user_id": "u-1"}}) == _key(BODY)


def test_route_kind_and_api_headers_change_the_key() -> None:
    assert cache_key("prompt", BODY, {}, "t") != _key(BODY)
    assert _key(BODY, {"anthropic-beta": "x"}) != _key(BODY)
    assert _key(BODY, {"anthropic-version": "2023-06-01"}) != _key(BODY)
    assert _key(BODY, {"x-request-id": "abc"}) == _key(BODY)


def test_the_path_and_query_claude_is_sent_change_the_key() -> None:
    """`/v1/messages?beta=true` (the SDK's beta client) is another request to Claude."""
    plain = cache_key("anthropic", BODY, {}, "t", "/v1/messages")
    assert cache_key("anthropic", BODY, {}, "t", "/v1/messages?beta=true") != plain
    assert cache_key("anthropic", BODY, {}, "t", "/v1/messages") == plain


def test_query_parameters_in_any_order_or_escaping_are_one_target() -> None:
    """Claude reads a query as its decoded parameters: their order and percent-escapes
    are spellings. Values, names, a repeated name's order and the path still count."""

    def key(target: str) -> str:
        return cache_key("anthropic", BODY, {}, "t", target)

    one = key("/v1/messages?beta=true&x=1")
    assert key("/v1/messages?x=1&beta=true") == one
    assert key("/v1/messages?%62eta=%74rue&x=1") == one
    assert key("/v1/messages?x=1&&beta=true") == one
    assert key("/v1/messages?a+b=1") == key("/v1/messages?a%20b=1")
    assert key("/v1/messages") == key("/v1/messages?")
    assert key("/v1/messages?beta") == key("/v1/messages?beta=")
    different = [
        "/v1/messages?beta=false&x=1", "/v1/messages?beta=true&x=2", "/v1/messages?beta=true",
        "/v1/messages?beta=true&y=1", "/v1/messages/count_tokens?beta=true&x=1",
        "/v1/messages?a%2Bb=1",
    ]  # fmt: skip
    assert len({one, *map(key, different), key("/v1/messages?a+b=1")}) == len(different) + 2
    assert key("/v1/messages?x=1&x=2") != key("/v1/messages?x=2&x=1")
    # Bytes that are no UTF-8 stay apart: decoding never folds two queries into one.
    assert key("/v1/messages?q=%FF") != key("/v1/messages?q=%FE")


@pytest.mark.parametrize(
    ("field", "default"),
    [("stream", False), ("stop_sequences", [])],
)
def test_a_field_at_its_fixed_default_is_the_field_left_out(field: str, default: Any) -> None:
    body = {name: value for name, value in BODY.items() if name != field}
    assert _key({**body, field: default}) == _key(body)


def test_tool_choice_auto_is_the_default_only_with_tools() -> None:
    tools = {**BODY, "tools": [{"name": "t", "input_schema": {"type": "object"}}]}
    auto = {"type": "auto"}
    assert _key({**tools, "tool_choice": auto}) == _key(tools)
    parallel = {"type": "auto", "disable_parallel_tool_use": False}
    assert _key({**tools, "tool_choice": parallel}) == _key(tools)
    serial = {"type": "auto", "disable_parallel_tool_use": True}
    assert _key({**tools, "tool_choice": serial}) != _key(tools)
    assert _key({**tools, "tool_choice": {"type": "any"}}) != _key(tools)
    # Without tools Claude refuses a tool_choice: another request than none.
    assert _key({**BODY, "tool_choice": auto}) != _key(BODY)
    assert _key({**BODY, "tools": [], "tool_choice": auto}) != _key({**BODY, "tools": []})


def test_defaults_match_as_json_and_model_dependent_ones_are_kept() -> None:
    """`0` is no `false` to Claude; `temperature`, `top_p`, `top_k` and `thinking` mean
    what the model makes of them, so a written default still counts."""
    body = {name: value for name, value in BODY.items() if name != "stream"}
    assert _key({**body, "stream": 0}) != _key(body)
    assert _key({**body, "stop_sequences": {}}) != _key(body)
    without = {name: value for name, value in BODY.items() if name != "temperature"}
    assert _key({**without, "temperature": 1}) != _key(without)
    assert _key({**BODY, "thinking": {"type": "disabled"}}) != _key(BODY)
    assert _key({**BODY, "top_k": 0}) != _key(BODY)


def test_spellings_never_merge_tenants() -> None:
    body = {name: value for name, value in BODY.items() if name != "stream"}
    spelled = {**body, "stream": False}
    target = "/v1/messages?b=1&a=2"
    assert cache_key("anthropic", body, {}, "tenant\0a", target) != cache_key(
        "anthropic", spelled, {}, "tenant\0b", "/v1/messages?a=2&b=1"
    )
    assert cache_key("anthropic", body, {}, "tenant\0a", target) == cache_key(
        "anthropic", spelled, {}, "tenant\0a", "/v1/messages?a=2&b=1"
    )


def test_the_claude_an_answer_came_from_changes_the_key() -> None:
    """Another base URL (a reload, replicas configured apart sharing one Redis) is another
    Claude: its answers are its own."""
    one = cache_key("anthropic", BODY, {}, "t", "/v1/messages", "https://api.anthropic.com")
    other = cache_key("anthropic", BODY, {}, "t", "/v1/messages", "http://10.0.0.7:8080")
    assert one != other


def test_the_version_claude_receives_is_keyed_whoever_set_it() -> None:
    """The key reads the headers as sent to Claude: a client naming the configured version
    and one naming none ask the same; another configured version asks something else."""

    def sent(client: dict[str, str], version: str) -> dict[str, str]:
        return request_headers(client, version, "sk-sidecar")

    base = _key(BODY, sent({}, "2023-06-01"))
    assert _key(BODY, sent({"anthropic-version": "2023-06-01"}, "2023-06-01")) == base
    assert _key(BODY, sent({}, "2099-01-01")) != base


def test_callers_without_a_tenant_never_share_under_tenant_scope() -> None:
    """`tenant` scope: a caller without a tenant is scoped as under `user` (its key, its
    user, or its IP when nobody is verified), never pooled with every other such caller."""
    alice = Identity("api_key", user="alice", tenant=None, api_key_name="a")
    bob = Identity("api_key", user="bob", tenant=None, api_key_name="b")
    nobody = Identity("anonymous")
    assert _scoped("tenant", alice, "1.1.1.1") != _scoped("tenant", bob, "1.1.1.1")
    assert _scoped("tenant", alice, "1.1.1.1") == _scoped("user", alice, "1.1.1.1")
    assert _scoped("tenant", nobody, "1.1.1.1") != _scoped("tenant", nobody, "1.1.1.2")
    acme = Identity("api_key", user="carol", tenant="acme", api_key_name="c")
    assert _scoped("tenant", acme, "1.1.1.1") not in {
        _scoped("tenant", who, "1.1.1.1") for who in (alice, bob, nobody)
    }


def test_scopes_keep_tenants_and_users_apart() -> None:
    a = Identity("api_key", user="alice", tenant="acme", api_key_name=None)
    b = Identity("api_key", user="bob", tenant="acme", api_key_name=None)
    c = Identity("api_key", user="alice", tenant="other", api_key_name=None)
    assert _scoped("tenant", a, "1.1.1.1") == _scoped("tenant", b, "2.2.2.2")
    assert _scoped("tenant", a, "1.1.1.1") != _scoped("tenant", c, "1.1.1.1")
    assert _scoped("user", a, "1.1.1.1") != _scoped("user", b, "1.1.1.1")
    assert _scoped("user", a, "1.1.1.1") != _scoped("user", c, "1.1.1.1")
    assert _scoped("global", a, "1.1.1.1") == _scoped("global", c, "9.9.9.9")
    nobody = Identity("api_key", user=None, tenant=None, api_key_name=None)
    assert _scoped("user", nobody, "1.1.1.1") != _scoped("user", nobody, "2.2.2.2")
    assert _key(BODY, scope=_scoped("tenant", a, "")) != _key(BODY, scope=_scoped("tenant", c, ""))


@pytest.mark.parametrize(
    ("body", "expected"),
    [({}, True), ({"temperature": 1}, True), ({"temperature": 0.2}, True),
     ({"temperature": 0}, False), ({"temperature": 0.0}, False), ({"temperature": True}, True),
     ({"temperature": "0"}, True)],
)  # fmt: skip
def test_sampled_means_temperature_unset_or_above_zero(
    body: dict[str, Any], expected: bool
) -> None:
    assert sampled(body) is expected


def test_cache_control_directives_are_parsed_loosely() -> None:
    assert directives(None) == frozenset()
    assert directives("No-Cache, no-store") == {"no-cache", "no-store"}
    assert directives("max-age=0, private, ,") == {"max-age", "private"}


def test_a_directive_after_a_long_one_is_still_read() -> None:
    assert "no-store" in directives(f'x="{"a" * 2000}", no-store')


def test_a_tenant_or_user_is_scoped_with_who_vouches_for_it() -> None:
    """A tenant or user named alike by another issuer or key source (another route's JWT
    block, another deployment sharing the store, a reload with other keys:
    `Identity.source`) never shares an entry; the same source's callers of one tenant do."""
    top = Identity("jwt", user="alice", tenant="acme", source="jwt:a", tenant_source="jwt:a")
    other = Identity("jwt", user="alice", tenant="acme", source="jwt:b", tenant_source="jwt:b")
    third = Identity("jwt", user="alice", tenant="acme", source="jwt:c", tenant_source="jwt:c")
    for scope in ("tenant", "user"):
        scopes = {_scoped(scope, who, "1.1.1.1") for who in (top, other, third)}
        assert len(scopes) == 3, scope
    bob = Identity("jwt", user="bob", tenant="acme", source="jwt:a", tenant_source="jwt:a")
    assert _scoped("tenant", top, "1.1.1.1") == _scoped("tenant", bob, "2.2.2.2")


def test_an_api_key_caller_is_its_key_not_its_name() -> None:
    """Two keys with one display name (two deployments' `ci`) are two callers, and a
    tenant named by other keys is another tenant; the name itself is not keyed."""
    ours = Identity("api_key", user="ci", tenant="acme", api_key_name="ci", source="api_key:1",
                    tenant_source="api_keys:1")  # fmt: skip
    theirs = Identity("api_key", user="ci", tenant="acme", api_key_name="ci",
                      source="api_key:2", tenant_source="api_keys:2")  # fmt: skip
    renamed = Identity("api_key", user="ci", tenant="acme", api_key_name="build",
                       source="api_key:1", tenant_source="api_keys:1")  # fmt: skip
    for scope in ("tenant", "user"):
        assert _scoped(scope, ours, "1.1.1.1") != _scoped(scope, theirs, "1.1.1.1"), scope
        assert _scoped(scope, ours, "1.1.1.1") == _scoped(scope, renamed, "1.1.1.1"), scope
