"""Loading the config: YAML errors with their place, interpolation, every problem at once
with its path, route policies merged from overrides, redaction, the files it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from sidecar import loader
from sidecar.config import Config
from tests.support.config import problems_of


def test_embedded_default_is_fake_claude_on_loopback() -> None:
    config = loader.load(None, env={})
    assert config.claude.is_fake
    assert config.server.listen == "127.0.0.1:8080"
    assert config.server.admin_listen == "127.0.0.1:9090"
    assert config.auth.mode == "none"
    assert config.quotas.store == "memory"
    assert [r.handler for r in config.routes] == ["prompt", "anthropic", "ui"]
    assert config.browser.demo  # the demo page is on in the embedded default only
    assert not loader.validate({}, {}).browser.demo


def test_sidecar_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("claude: {model: claude-haiku-5-5}\n")
    assert loader.load(None, env={"SIDECAR_CONFIG": str(path)}).claude.model == "claude-haiku-5-5"


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(loader.ConfigError) as caught:
        loader.parse_yaml("server:\n  listen: [1, 2\n", "bad.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("bad.yaml: line ")
    assert "column" in problem


def test_duplicate_keys_are_errors() -> None:
    with pytest.raises(loader.ConfigError) as caught:
        loader.parse_yaml("server: {}\nserver: {}\n", "dup.yaml")
    assert "duplicate key 'server'" in caught.value.problems[0]
    assert "line 2" in caught.value.problems[0]


@pytest.mark.parametrize("text", ["server: {[1]: 2}\n", "server: {? {a: 1} : 2}\n"])
def test_a_list_or_mapping_as_a_key_is_an_error_with_its_place(text: str) -> None:
    with pytest.raises(loader.ConfigError) as caught:
        loader.parse_yaml(text, "keys.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("keys.yaml: line 1, column ")
    assert "a mapping key must be a plain value" in problem


@pytest.mark.parametrize(
    ("value", "kind"),
    [("!!int 0x", "int"), ("!!int ''", "int"), ("9" * 5000, "int"), ("!!float x", "float"),
     ("!!bool maybe", "bool"), ("!!timestamp 2001-13-45", "timestamp")],
)  # fmt: skip
def test_a_value_its_yaml_type_cannot_hold_is_a_problem_at_its_place(value: str, kind: str) -> None:
    """PyYAML lets a constructor's ValueError or IndexError out (`!!int 0x`, an integer past
    Python's 4300 digits): each is told like a syntax error, never a traceback."""
    with pytest.raises(loader.ConfigError) as caught:
        loader.parse_yaml(f"server:\n  max_body_bytes: {value}\n", "typed.yaml")
    assert caught.value.problems == [
        f"typed.yaml: line 2, column 19: not a value a YAML {kind} can hold"
    ]


def _laughs(levels: int) -> str:
    """Nested aliases, ten of the level below per level: 10**levels values from a few lines."""
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, levels)]
    return "\n".join([*lines, f"screening: {{deny_patterns: *l{levels - 1}}}"]) + "\n"


def test_aliases_that_expand_past_the_bound_are_refused_before_anything_walks_them() -> None:
    """A "billion laughs" file is one problem at once, not a `check` (or a reload) that
    hangs filling the memory: every later step (interpolation, validation) expands it."""
    with pytest.raises(loader.ConfigError) as caught:
        loader.parse_yaml(_laughs(6), "laughs.yaml")  # 10**6 values from 7 lines
    assert caught.value.problems == [
        f"laughs.yaml: its aliases (*name) expand it to more than "
        f"{loader.MAX_EXPANDED_VALUES} values; write the repeated parts out, or fewer of them"
    ]


def test_aliases_a_config_uses_to_repeat_itself_are_read_as_written() -> None:
    text = """
cors: {allow_origins: &origins ["https://a.example", "https://b.example"]}
routes:
  - {path: /v1/, handler: anthropic, cors: {allow_origins: *origins}}
"""
    config = loader.validate(loader.parse_yaml(text, "x"))
    (route,) = loader.route_policies(config)
    assert route.cors.allow_origins == config.cors.allow_origins == [
        "https://a.example", "https://b.example"
    ]  # fmt: skip


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_nesting_deeper_than_the_parser_goes_is_a_problem_not_a_traceback(opening: str) -> None:
    depth = 2000
    if opening == "- ":  # block style: one level per line
        text = "".join(f"{'  ' * level}- \n" for level in range(depth)) + "  " * depth + "x\n"
    else:
        text = opening * depth + "x" + ("]" if opening == "[" else "}") * depth + "\n"
    with pytest.raises(loader.ConfigError) as caught:
        loader.parse_yaml(text, "deep.yaml")
    assert caught.value.problems == [
        "deep.yaml: lists and mappings nested too deeply (no config nests a hundred levels)"
    ]


def test_a_union_field_is_reported_at_its_key_once() -> None:
    """A value no branch of a union takes is one line at the file's own path, naming what
    each branch wanted, never pydantic's branch tags."""
    found = problems_of({"server": {"trusted_proxies": ["10.0.0.0/8", "nope"]},
                         "routes": [{"path": "/x", "handler": "prompt",
                                     "quotas": {"requests_per_minute": "many"}}]})  # fmt: skip
    assert found[0] == (
        "server.trusted_proxies.1: Input is not a valid IPv4 network, "
        "or Input is not a valid IPv6 network"
    )
    assert found[1].startswith("routes.0.quotas.requests_per_minute: ")
    assert not any("[" in problem.split(":")[0] for problem in found)
    assert len(found) == 2
    # A plain string tried as a rule object too: its place is the string's, not a field's.
    (bad,) = problems_of({"screening": {"deny_patterns": ["ok", "("]}})
    assert bad.startswith("screening.deny_patterns.1: does not compile")


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    found = problems_of(
        """
server:
  listen: "0.0.0.0:80x"
  max_body_bytes: -1
  bogus: 1
claude:
  idle_timeout_seconds: "soon"
cors: {allow_origins: ["*"], allow_credentials: true}
screening: {deny_patterns: ["ok", "(?<=x)y"]}
quotas: {store: redis}
unknown_section: {}
"""
    )
    joined = "\n".join(found)
    assert "server.listen: must be host:port, got '0.0.0.0:80x'" in found
    assert "server.max_body_bytes: Input should be greater than 0" in found
    assert "server.bogus: unknown key" in found
    assert any(p.startswith("claude.idle_timeout_seconds: ") for p in found)
    assert any(p.startswith("cors: ") and "allow_credentials" in p for p in found)
    assert any(p.startswith("screening.deny_patterns.1: does not compile") for p in found)
    assert "quotas: store 'redis' needs redis_url" in found
    assert "unknown_section: unknown key" in found
    assert "Traceback" not in joined


def test_root_must_be_a_mapping() -> None:
    assert problems_of("- a\n- b\n") == ["<root>: the config must be a mapping of sections"]


def test_no_data_validates_as_the_defaults() -> None:
    """`validate` of nothing is every default; `load` refuses a named file with no config."""
    assert loader.validate(loader.parse_yaml("", "empty.yaml"), {}) == loader.validate({}, {})


def test_interpolation_with_defaults_and_escapes() -> None:
    config = loader.validate(
        {
            "claude": {
                "api_key": "${KEY}",
                "model": "${MODEL:-claude-haiku-5-5}",
                "anthropic_version": "$${literal}",
            }
        },
        {"KEY": "sk-test"},
    )
    assert config.claude.api_key is not None
    assert config.claude.api_key.get_secret_value() == "sk-test"
    assert config.claude.model == "claude-haiku-5-5"
    assert config.claude.anthropic_version == "${literal}"


def test_unset_variable_names_the_field() -> None:
    found = problems_of('claude: {api_key: "${ANTHROPIC_API_KEY}"}')
    assert found == ["claude.api_key: environment variable ANTHROPIC_API_KEY is not set"]


def test_an_unset_variable_is_not_also_told_as_the_section_checks_that_read_it() -> None:
    """The field was read as "": the key "needed" and the secret "too short" are that one
    problem again, which the operator would chase instead of the variable. Other sections'
    problems are still all told at once."""
    found = problems_of(
        'claude: {base_url: "https://api.anthropic.com", api_key: "${ANTHROPIC_API_KEY}"}\n'
        'auth: {mode: required, jwt: {secret: "${JWT_SECRET}", algorithms: [HS256]}}\n'
        "server: {listen: 8080}\n"
    )
    assert found == [
        "claude.api_key: environment variable ANTHROPIC_API_KEY is not set",
        "auth.jwt.secret: environment variable JWT_SECRET is not set",
        "server.listen: Input should be a valid string",
    ]


@pytest.mark.parametrize(
    ("written", "at"),
    [
        ("${JWT_SECRET:?JWT_SECRET must be set in production}", 1),  # the shell's :? form
        ("${JWT_SECRET:=a-default-that-is-long-enough-to-pass}", 1),
        ("${JWT_SECRET-a-default-that-is-long-enough-to-pass!}", 1),
        ("${JWT-SECRET}", 1),
        ("${ JWT_SECRET }", 1),
        ("${1SECRET}", 1),
        ("${}", 1),
        ("prefix-${JWT_SECRET", 8),  # unterminated
        ("${JWT_SECRET:-${FALLBACK_SECRET}}", 1),  # nested: not supported, never half-read
        ("${SET}-${JWT_SECRET:?x}", 8),
    ],
)
def test_a_dollar_brace_that_is_no_reference_is_an_error_never_the_literal_text(
    written: str, at: int
) -> None:
    # Kept as text, such a value would be an HS256 secret anyone who reads the file knows.
    data = {"auth": {"mode": "required", "jwt": {"secret": written, "algorithms": ["HS256"]}}}
    found = problems_of(data, {"SET": "x" * 40, "FALLBACK_SECRET": "y" * 40})
    # (first: a value too short as text is also refused for its length)
    assert found[0] == (
        f"auth.jwt.secret: '${{' at character {at} starts no ${{VAR}} or ${{VAR:-default}} "
        "reference (a name is letters, digits and _, a default holds no '${'; "
        "write $${ for a literal '${')"
    )


@pytest.mark.parametrize(
    "pattern",
    [
        r"\${jndi:",  # RE2: an escaped $ and a literal {
        r"(?i)\${(jndi|env|lower):",
        r"\${[^}]*}",
        r"\${7\*7}",
        "${{ user_input }}",
        r"\${jndi:ldap://[^}]+}",
    ],
)
def test_a_dollar_brace_written_as_no_reference_is_text_as_it_always_was(pattern: str) -> None:
    # Such a `${` cannot be taken for a mistyped secret reference: configs written before
    # the reference check (a deny pattern for template injection) still load, unchanged.
    config = loader.validate({"screening": {"deny_patterns": [pattern]}}, {})
    assert [rule.pattern for rule in config.screening.deny_patterns] == [pattern]


def test_a_default_reads_dollars_as_the_text_around_it_does() -> None:
    config = loader.validate(
        {"claude": {"model": "${M:-a$$b$c}", "anthropic_version": "x$y$${z}"}}, {}
    )
    assert config.claude.model == "a$b$c"
    assert config.claude.anthropic_version == "x$y${z}"


def test_interpolated_numbers_are_coerced() -> None:
    config = loader.validate({"server": {"max_body_bytes": "${SIZE}"}}, {"SIZE": "2048"})
    assert config.server.max_body_bytes == 2048


def _bool_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every boolean key of the config's sections (not of routes or list items)."""
    keys: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        if field.annotation is bool:
            keys.append((*prefix, name))
        for arg in (field.annotation, *get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and name != "routes":
                keys.extend(_bool_keys(arg, (*prefix, name)))
    return keys


@pytest.mark.parametrize("flag", [True, False])
def test_every_boolean_key_takes_an_interpolated_value(flag: bool) -> None:
    keys = _bool_keys(Config)
    assert ("cache", "enabled") in keys
    assert ("server", "tls", "hsts") in keys
    data: dict[str, Any] = {}
    for key in keys:
        node = data
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = "${FLAG}"
    route = {"path": "/v1/", "handler": "anthropic", "resume": {"enabled": "${FLAG}"}}
    data["routes"] = [route, {"path": "/", "handler": "prompt"}]
    data["resume"]["enabled"] = "true"  # a route may only turn resume on under it
    config = loader.validate(data, {"FLAG": str(flag).lower()})
    for key in keys:
        value: Any = config
        for part in key:
            value = getattr(value, part)
        assert value is (True if key == ("resume", "enabled") else flag), key
    resume = config.routes[0].resume
    assert resume is not None
    assert resume.enabled is flag


def test_route_overrides_merge_and_validate_with_field_paths() -> None:
    config = loader.validate(
        {
            "quotas": {"requests_per_minute": 60},
            "routes": [
                {"path": "/api", "handler": "prompt", "quotas": {"requests_per_minute": 5}},
                {"path": "/v1/", "handler": "anthropic"},
            ],
        },
        {},
    )
    first, second = loader.route_policies(config)
    assert first.quotas.requests_per_minute == 5
    assert first.quota_scope == "/api"
    assert second.quotas.requests_per_minute == 60
    assert second.quota_scope == "global"
    found = problems_of(
        """
routes:
  - {path: /api, handler: prompt, quotas: {requests_per_minute: -1, store: redis}}
  - {path: /x, handler: prompt, cors: {allow_origins: ["*"], allow_credentials: true}}
  - {path: /y, handler: prompt, quotas: {redis_timeout_seconds: 3, on_store_error: fail_open}}
"""
    )
    assert "routes.0.quotas.store: can only be set at the top level" in found
    assert "routes.2.quotas.redis_timeout_seconds: can only be set at the top level" in found
    assert "routes.2.quotas.on_store_error: can only be set at the top level" in found
    assert "routes.0.quotas.requests_per_minute: Input should be greater than 0" in found
    assert any(p.startswith("routes.1.cors: ") for p in found)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(loader.ConfigError) as caught:
        loader.load(tmp_path / "missing.yaml", env={})
    assert "cannot read" in caught.value.problems[0]


def test_redacted_hides_every_secret() -> None:
    config = loader.validate(
        {
            "claude": {"api_key": "sk-secret"},
            "auth": {"jwt": {"secret": "s" * 40}},
            "quotas": {"store": "redis", "redis_url": "redis://:pw@host/0"},
        },
        {},
    )
    text = repr(loader.redacted(config))
    assert "sk-secret" not in text
    assert "s" * 40 not in text
    assert "pw@" not in text
    assert loader.redacted(config)["claude"]["api_key"] == "***"


def test_example_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "config"
    env = {"ANTHROPIC_API_KEY": "sk-x", "JWT_SECRET": "j" * 32, "REDIS_URL": "redis://r:6379/0"}
    for path in sorted(root.glob("*.yaml")):
        assert isinstance(loader.load(path, env=env), Config), path


def test_route_policies_are_built_once_per_config() -> None:
    config = loader.validate({"routes": [{"path": "/v1/", "handler": "anthropic"}]}, {})
    assert loader.route_policies(config) is loader.route_policies(config)


def test_cache_redis_needs_a_url_its_own_or_the_quota_stores() -> None:
    found = problems_of({"cache": {"enabled": True, "store": "redis"}})
    assert any(p.startswith("cache.store:") for p in found), found
    config = loader.validate(
        {"cache": {"enabled": True, "store": "redis"},
         "quotas": {"store": "redis", "redis_url": "redis://127.0.0.1:6379/0"}}
    )  # fmt: skip
    assert config.cache_redis_url is not None
    # Off everywhere: a store that is never opened needs no URL.
    loader.validate({"cache": {"store": "redis"}})


def test_a_route_cache_override_is_merged_and_checked() -> None:
    routes = [
        {"path": "/v1/", "handler": "anthropic", "cache": {"enabled": True, "scope": "user"}},
        {"path": "/api/stream-response", "handler": "prompt"},
    ]
    config = loader.validate({"routes": routes, "cache": {"ttl_seconds": 60}})
    first, second = loader.route_policies(config)
    assert (first.cache.enabled, first.cache.scope, first.cache.ttl_seconds) == (True, "user", 60)
    assert not second.cache.enabled
    assert config.cache_used
    bad = [{"path": "/v1/", "handler": "anthropic", "cache": {"scope": "everyone"}}]
    assert any(p.startswith("routes.0.cache.scope:") for p in problems_of({"routes": bad}))
    store = [{"path": "/v1/", "handler": "anthropic", "cache": {"store": "redis"}}]
    assert "routes.0.cache.store: can only be set at the top level" in problems_of(
        {"routes": store}
    )


def test_a_route_cache_without_a_usable_store_is_an_error() -> None:
    routes = [{"path": "/v1/", "handler": "anthropic", "cache": {"enabled": True}}]
    found = problems_of({"routes": routes, "cache": {"store": "redis"}})
    assert any(p.startswith("routes.0.cache.enabled:") for p in found), found


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "~\n", "null\n", "---\n"])
def test_a_file_with_no_config_is_an_error_not_the_defaults(tmp_path: Path, text: str) -> None:
    """An empty file (a truncated write, a ConfigMap without its key) would otherwise turn
    auth off and Claude into the fake; `{}` still asks for the defaults on purpose."""
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    with pytest.raises(loader.ConfigError) as caught:
        loader.load(path, {})
    assert caught.value.problems == [
        f"{path}: the file has no config (empty); write {{}} for the defaults"
    ]
    path.write_text("{}\n")
    assert loader.load(path, {}).claude.is_fake


def test_a_ui_route_refusing_remote_content_cannot_offer_a_fetching_tool() -> None:
    """`ui.tools` are the operator's and not screened per call: a web fetch tool there with a
    ui route that refuses remote content would be refused on every turn, so it is a config
    error, named at the route; other routes and client tools are fine."""
    fetch = {"type": "web_fetch_20250910", "name": "web_fetch"}
    routes = [{"path": "/api/chat", "handler": "ui", "screening": {"remote_content": "refuse"}},
              {"path": "/v1/", "handler": "anthropic", "screening": {"remote_content": "refuse"}},
              {"path": "/open/chat", "handler": "ui"}]  # fmt: skip
    (problem,) = problems_of({"ui": {"tools": [fetch]}, "routes": routes})
    assert problem.startswith("routes.0.screening.remote_content: 'refuse' on a ui route")
    assert "tool type 'web_fetch_20250910'" in problem
    client_tool = {"name": "web_fetch", "input_schema": {"type": "object"}}
    loader.validate({"ui": {"tools": [client_tool]}, "routes": routes}, {})
    loader.validate({"ui": {"tools": [fetch]}, "routes": routes[1:]}, {})


# Every key whose validator quotes the value it refuses, with a variable put where it
# does not belong: an API key as a URL, a header, an address, an origin (a route's too).
_MISPLACED: list[str] = [
    'server: {listen: "${SECRET}"}',
    'server: {admin_listen: "127.0.0.1:${SECRET}"}',
    'server: {request_id_header: "Bearer ${SECRET}"}',
    'app: {url: "http://127.0.0.1:3000", identity_headers: {user: "${SECRET}:"}}',
    'claude: {base_url: "${SECRET}", api_key: "x"}',
    'app: {url: "${SECRET}"}',
    'cors: {allow_origins: ["${SECRET}"]}',
    'routes: [{path: /x, handler: anthropic, cors: {allow_origins: ["https://${SECRET}/"]}}]',
    'telemetry: {otlp_endpoint: "${SECRET}"}',
]


@pytest.mark.parametrize("text", _MISPLACED)
@pytest.mark.parametrize(
    "secret", ["sk-ant-api03-Zq9Vx", 'it\'s a \\secret\\ "key"', "clé-sécrète-ü"]
)
def test_a_value_from_the_environment_is_never_quoted_in_a_problem(text: str, secret: str) -> None:
    found = problems_of(text, {"SECRET": secret})
    assert found, text
    assert all("${SECRET}" in problem for problem in found), found
    for problem in found:
        for spelling in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]):
            assert spelling not in problem, problem


def test_a_short_value_from_the_environment_is_still_quoted() -> None:
    # `0`, `true`, `info`: no secret, and hiding them would mask words of the messages.
    assert problems_of('server: {listen: "${LISTEN}"}', {"LISTEN": "80"}) == [
        "server.listen: must be host:port, got '80'"
    ]


def test_a_token_limit_below_a_default_call_is_refused_naming_both_keys() -> None:
    found = problems_of({"claude": {"max_tokens": 4096}, "quotas": {"tokens_per_minute": 1000}})
    # The prompt route (routes.0) and the ui route (routes.2) use the default; the
    # anthropic route (routes.1) has none: each request names its max_tokens.
    assert [p.split(" reserves on ")[1].split(":")[0] for p in found] == [
        "routes.0 (/api/stream-response)",
        "routes.2 (/api/chat)",
    ]
    assert found[0].startswith("quotas.tokens_per_minute: 1000 is less than a call left at ")
    assert "claude.max_tokens (4096)" in found[0]
    assert "at least 4105 tokens" in found[0]  # max_tokens + a one-character prompt's estimate
    assert "lower claude.max_tokens or raise quotas.tokens_per_minute" in found[0]


def test_the_ui_routes_own_max_tokens_system_and_tools_count_against_a_routes_limit() -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    routes = [{"path": "/api/chat", "handler": "ui", "quotas": {"tokens_per_day": 1000}}]
    found = problems_of({"ui": {"max_tokens": 500, "tools": tools}, "routes": routes})
    assert len(found) == 1
    # 500 + 8 + the tool-use system prompt (530) + the tools' own text
    assert found[0].startswith("routes.0.quotas.tokens_per_day: 1000 is less than ")
    assert "ui.max_tokens (500)" in found[0]
    assert "raise routes.0.quotas.tokens_per_day" in found[0]
    loader.validate({"ui": {"max_tokens": 500}, "routes": routes})  # 508 fits


def test_a_default_call_that_fits_or_a_route_without_a_default_is_not_refused() -> None:
    loader.validate({"claude": {"max_tokens": 991}, "quotas": {"tokens_per_minute": 1000}})
    problems_of({"claude": {"max_tokens": 992}, "quotas": {"tokens_per_minute": 1000}})
    loader.validate(
        {"claude": {"max_tokens": 4096}, "quotas": {"tokens_per_minute": 1000},
         "routes": [{"path": "/v1/", "handler": "anthropic"}]}
    )  # fmt: skip
