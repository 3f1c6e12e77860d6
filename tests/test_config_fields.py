"""Config field checks: host:port, header names (checked at load, served as written) and
URLs redacted of every credential."""

from __future__ import annotations

import math

import aiohttp
import pytest
from pydantic import ValidationError

from sidecar import loader
from sidecar.config import redact_url, split_host_port
from sidecar.config.fields import Section
from tests.support.apps import echoed_headers, running_app
from tests.support.config import problems_of
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.0.0.0:8080", ("0.0.0.0", 8080)), ("[::1]:9", ("::1", 9)), (":80", ("0.0.0.0", 80))],
)
def test_host_port(value: str, expected: tuple[str, int]) -> None:
    assert split_host_port(value) == expected


@pytest.mark.parametrize(
    "value",
    ["8080", "host:", "host:99999", "a:b:c", "host:port",
     "host:\uff18\uff10", "host:\u0668\u0660", "[::1]:\u0669"],  # digits of other scripts
)  # fmt: skip
def test_bad_host_port(value: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|port must be"):
        split_host_port(value)


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
        # Written without a scheme (refused, and the refusal names the value): still hidden.
        ("otuser:S3CRET@127.0.0.1:4318", "otuser:***@127.0.0.1:4318"),
        ("//u:S3CRET@h.example/x", "//u:***@h.example/x"),
        ("tok3n@h.example", "***@h.example"),
    ],
)
def test_redact_url_hides_every_credential_a_url_can_carry(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def _sections(base: type[Section]) -> list[type[Section]]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_sections(sub)]
    return found


def _number_fields() -> list[tuple[type[Section], str]]:
    """Every field of every config section whose value may be a float."""
    return [
        (section, name)
        for section in _sections(Section)
        for name, field in section.model_fields.items()
        if "float" in str(field.annotation)
    ]


def test_the_config_has_number_fields_to_check() -> None:
    names = {name for _, name in _number_fields()}
    assert {"shutdown_grace_seconds", "read_timeout_seconds", "time_to_first_token_ms"} <= names


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(("section", "name"), _number_fields())
def test_no_number_field_takes_inf_or_nan(section: type[Section], name: str, value: float) -> None:
    """YAML's `.inf` and `.nan` are floats: as a duration or rate they would wait forever,
    pace nothing or fail in the event loop's timers, so every section refuses them."""
    with pytest.raises(ValidationError) as refused:
        section.model_validate({name: value})
    assert {"loc": (name,), "type": "finite_number"} in [
        {"loc": error["loc"][:1], "type": error["type"]} for error in refused.value.errors()
    ]


def _duration_fields() -> list[tuple[type[Section], str]]:
    """Every duration field of every section (a route's overrides are validated merged into
    their section, below)."""
    return [
        (section, name)
        for section, name in _number_fields()
        if name.endswith(("_seconds", "_ms")) and not section.__name__.endswith("Override")
    ]


def test_the_config_has_duration_fields_to_check() -> None:
    names = {name for _, name in _duration_fields()}
    assert {"shutdown_grace_seconds", "lease_seconds", "time_to_first_token_ms"} <= names


@pytest.mark.parametrize(("section", "name"), _duration_fields())
def test_no_duration_field_takes_more_than_the_platform_timers_hold(
    section: type[Section], name: str
) -> None:
    """A finite duration too long for a `threading.Timer`, a socket timeout (a C `time_t`)
    or a Redis expiry (int64 milliseconds) would be accepted, then fail at shutdown (the exit
    watchdog's traceback) or on every call: each is refused when loaded."""
    with pytest.raises(ValidationError) as refused:
        section.model_validate({name: 1e300})
    assert {"loc": (name,), "type": "less_than_equal"} in [
        {"loc": error["loc"][:1], "type": error["type"]} for error in refused.value.errors()
    ]


def test_a_duration_past_the_bound_is_one_problem_naming_the_field() -> None:
    config = "server: {shutdown_grace_seconds: 1e10}\nclaude: {retry_max_seconds: 1e300}\n"
    assert sorted(problems_of(config)) == [
        "claude.retry_max_seconds: Input should be less than or equal to 1000000000",
        "server.shutdown_grace_seconds: Input should be less than or equal to 1000000000",
    ]
    # A route's override, validated merged into its section.
    config = "routes: [{path: /x, handler: prompt, quotas: {lease_seconds: 1e300}}]\n"
    assert problems_of(config) == [
        "routes.0.quotas.lease_seconds: Input should be less than or equal to 1000000000"
    ]
    taken = loader.validate({"server": {"shutdown_grace_seconds": 1_000_000_000}}, {})
    assert taken.server.shutdown_grace_seconds == 1_000_000_000


def test_a_yaml_inf_is_one_problem_naming_the_field() -> None:
    config = (
        "server: {shutdown_grace_seconds: .inf}\nclaude: {fake: {time_to_first_token_ms: .NaN}}\n"
    )
    assert sorted(problems_of(config)) == [
        "claude.fake.time_to_first_token_ms: Input should be a finite number",
        "server.shutdown_grace_seconds: Input should be a finite number",
    ]
