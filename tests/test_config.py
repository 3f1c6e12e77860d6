"""Config loading: YAML errors, interpolation, validation paths, route overrides, redaction,
and values checked at load (header names, Redis URLs) rather than on the first request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar import loader
from sidecar.config import Config, TelemetryConfig, redact_url, split_host_port
from tests.support.apps import echoed_headers, running_app
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory


def problems_of(source: str | dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The problems validation reports for a config given as YAML text or as plain data."""
    data = loader.parse_yaml(source, "test.yaml") if isinstance(source, str) else source
    with pytest.raises(loader.ConfigError) as caught:
        loader.validate(data, env or {})
    return caught.value.problems


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


def test_interpolated_numbers_are_coerced() -> None:
    config = loader.validate({"server": {"max_body_bytes": "${SIZE}"}}, {"SIZE": "2048"})
    assert config.server.max_body_bytes == 2048


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:8080", ("0.0.0.0", 8080)), ("[::1]:9", ("::1", 9)), (":80", ("0.0.0.0", 80))],
)
def test_host_port(value: str, expected: tuple[str, int]) -> None:
    assert split_host_port(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:", "host:99999", "a:b:c", "host:port"])
def test_bad_host_port(value: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|port must be"):
        split_host_port(value)


def test_listeners_must_differ() -> None:
    found = problems_of('server: {listen: "0.0.0.0:80", admin_listen: "0.0.0.0:80"}')
    assert found == ["server: listen and admin_listen must differ"]


def test_app_route_needs_app_section() -> None:
    found = problems_of('routes: [{path: "/", handler: app}]')
    assert any("needs the app section" in p for p in found)


def test_default_routes_include_the_app_when_configured() -> None:
    config = loader.validate({"app": {"url": "http://127.0.0.1:3000"}}, {})
    assert [(r.path, r.handler) for r in config.routes] == [
        ("/api/stream-response", "prompt"),
        ("/v1/", "anthropic"),
        ("/api/chat", "ui"),
        ("/", "app"),
    ]


def test_auth_required_needs_credentials() -> None:
    assert problems_of("auth: {mode: required}") == ["auth: mode 'required' needs jwt or api_keys"]


def test_jwt_rules() -> None:
    found = problems_of(
        """
auth:
  jwt: {secret: short, algorithms: [HS256, none]}
"""
    )
    assert any("alg 'none' is never allowed" in p for p in found)
    found = problems_of("auth: {jwt: {secret: short}}")
    assert any("at least 32 bytes" in p for p in found)
    found = problems_of("auth: {jwt: {algorithms: [RS256], secret: '" + "x" * 40 + "'}}")
    assert any("need public_key_file or jwks_url" in p for p in found)


def test_api_key_hash_must_be_sha256_hex() -> None:
    found = problems_of("auth: {api_keys: [{name: ci, sha256: nothex}]}")
    assert found == ["auth.api_keys.0.sha256: must be the 64-character hex SHA-256 of the key"]


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


def test_route_paths_are_absolute_and_unique() -> None:
    found = problems_of('routes: [{path: "api", handler: prompt}]')
    assert found == ["routes.0.path: must start with '/'"]
    found = problems_of('routes: [{path: "/a", handler: prompt}, {path: "/a", handler: prompt}]')
    assert any("paths must be unique" in p for p in found)


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


# ------------------------------------------------------------------ header names, Redis URLs


@pytest.mark.parametrize("name", ["X Request Id", "X-Request-Id\n", "X-Id:", ""])
def test_request_id_header_must_be_a_header_name(name: str) -> None:
    problems = problems_of({"server": {"request_id_header": name}})
    assert [p.split(":")[0] for p in problems] == ["server.request_id_header"]


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"user": "X Sidecar User"}, "user"),
        ({"tenant": "Host"}, "tenant"),
        ({"api_key_name": "x-forwarded-for"}, "api_key_name"),
        ({"user": "Content-Length"}, "user"),
    ],
)
def test_identity_header_names_are_checked(headers: dict[str, str], field: str) -> None:
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == [f"app.identity_headers.{field}"]


def test_identity_header_names_must_differ() -> None:
    headers = {"user": "X-Who", "tenant": "x_who"}  # one name to a WSGI app
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == ["app.identity_headers"]


async def test_a_header_name_that_validates_serves(sidecar_for: SidecarFactory) -> None:
    async with running_app() as (url, _):
        config = {
            "server": {"request_id_header": "X-Trace_Id"},
            "app": {"url": url, "identity_headers": {"user": "X-Auth-User"}},
            "auth": {"api_keys": [{"name": "ci", "sha256": API_KEY_SHA256, "user": "ci-bot"}]},
        }
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers={"x-api-key": API_KEY}) as r:
                assert r.status == 200
                assert r.headers["X-Trace_Id"]
                seen = echoed_headers(await r.json())
    assert seen["x-auth-user"] == "ci-bot"


@pytest.mark.parametrize(
    "url", ["localhost:6379", "http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0"]
)
def test_redis_url_that_redis_cannot_use_is_a_config_error(url: str) -> None:
    secret = "s3cret-password"
    url = url.replace("127.0.0.1", f"user:{secret}@127.0.0.1")
    problems = problems_of({"quotas": {"store": "redis", "redis_url": url}})
    assert [p.split(":")[0] for p in problems] == ["quotas.redis_url"]
    assert secret not in " ".join(problems)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380", "unix:///run/redis.sock"]
)
def test_redis_urls_redis_accepts_validate(url: str) -> None:
    config = loader.validate({"quotas": {"store": "redis", "redis_url": url}})
    assert config.quotas.redis_url is not None


def test_route_overrides_are_typed_and_in_the_schema() -> None:
    schema = Config.model_json_schema()
    defs = schema["$defs"]
    auth_ref = defs["RouteConfig"]["properties"]["auth"]["anyOf"][0]["$ref"]
    assert auth_ref == "#/$defs/AuthOverride"
    assert {"mode", "jwt", "api_keys", "allowed_tenants"} <= set(defs["AuthOverride"]["properties"])
    assert "required" not in defs["AuthOverride"]  # every key optional
    assert "secret" in defs["JWTOverride"]["properties"]
    for name in ("CorsOverride", "ScreeningOverride", "QuotaOverride"):
        assert "required" not in defs[name]
    found = problems_of(
        """
routes:
  - {path: /a, handler: prompt, auth: {jwt: {secrett: x}}}
  - {path: /b, handler: prompt, screening: {deny_patterns: ["(?i)plain string rule"]}}
"""
    )
    assert found == ["routes.0.auth.jwt.secrett: unknown key"]


def test_route_policies_are_built_once_per_config() -> None:
    config = loader.validate({"routes": [{"path": "/v1/", "handler": "anthropic"}]}, {})
    assert loader.route_policies(config) is loader.route_policies(config)


def test_resume_settings_are_checked_with_their_paths() -> None:
    cases = [
        ({"resume": {"store": "redis"}}, "resume.redis_url or quotas.redis_url"),
        ({"resume": {"ttl_seconds": 0}}, "resume.ttl_seconds"),
        ({"resume": {"on_store_error": "maybe"}}, "resume.on_store_error"),
        ({"resume": {"redis_url": "http://x"}}, "resume.redis_url"),
        ({"routes": [{"path": "/x", "handler": "prompt", "resume": {"ttl_seconds": 3}}]},
         "routes.0.resume.ttl_seconds"),
    ]  # fmt: skip
    for data, where in cases:
        with pytest.raises(loader.ConfigError) as failed:
            loader.validate(data, {})
        assert any(where in problem for problem in failed.value.problems), failed.value.problems
    # The Redis store falls back to the quota store's URL.
    config = loader.validate(
        {"quotas": {"redis_url": "redis://r:6379/0"}, "resume": {"store": "redis"}}, {}
    )
    assert config.resume_redis_url is not None
    assert config.resume_redis_url.get_secret_value() == "redis://r:6379/0"


# --------------------------------------------------------------------------- cache


def test_cache_defaults_are_off_memory_tenant_scoped() -> None:
    cache = loader.validate({}).cache
    assert (cache.enabled, cache.store, cache.scope, cache.replay) == (
        False, "memory", "tenant", "instant",
    )  # fmt: skip
    assert (cache.ttl_seconds, cache.max_entries, cache.max_bytes) == (3600, 1000, 67108864)
    assert not cache.include_sampled
    assert not cache.charge_hits
    assert cache.redis_url is None


def test_cache_bad_values_are_errors_with_their_path() -> None:
    found = problems_of({"cache": {"scope": "team", "replay": "slow", "max_entries": 0, "ttl": 5}})
    assert any(p.startswith("cache.scope:") for p in found), found
    assert any(p.startswith("cache.replay:") for p in found), found
    assert any(p.startswith("cache.max_entries:") for p in found), found
    assert any(p.startswith("cache.ttl:") for p in found), found


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


def test_the_flush_delay_is_a_checked_config_key() -> None:
    assert TelemetryConfig().log_flush_seconds == 0.02
    for bad in (-1, 11, "soon"):
        with pytest.raises(ValueError, match="log_flush_seconds"):
            TelemetryConfig(log_flush_seconds=bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://issuer.example/jwks", "https://issuer.example/jwks"),
        ("https://user:pass@issuer.example/jwks", "https://user:***@issuer.example/jwks"),
        ("redis://:pass@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("https://tok3n@api.example/x", "https://***@api.example/x"),
        (
            "https://h.example/jwks?token=T0K&v=2&flag",
            "https://h.example/jwks?token=***&v=***&flag",
        ),
        ("https://u:p@h.example/a?k=s#frag", "https://u:***@h.example/a?k=***#***"),
        ("https://h.example/a/b@c", "https://h.example/a/b@c"),  # an @ in the path: no userinfo
    ],
)
def test_redact_url_hides_every_credential_a_url_can_carry(url: str, shown: str) -> None:
    assert redact_url(url) == shown


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
