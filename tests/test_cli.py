"""The `sidecar` command as a user runs it: check, schema, run with signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.support.certs import write_self_signed
from tests.support.sidecars import ROOT, sidecar_command
from tests.support.sockets import free_port


def test_check_prints_the_effective_config_with_secrets_redacted() -> None:
    result = sidecar_command(
        "check",
        "-c",
        "config/sidecar.example.yaml",
        env={"ANTHROPIC_API_KEY": "sk-very-secret", "JWT_SECRET": "j" * 32},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sk-very-secret" not in result.stdout
    assert "j" * 32 not in result.stdout
    assert "api_key: '***'" in result.stdout


def test_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "server:\n  listen: nope\n  max_body_bytes: 0\nclaude: {api_key: '${UNSET_X}'}\n"
    )
    result = sidecar_command("check", "-c", str(path), env={"UNSET_X": ""})
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert "server.listen: must be host:port, got 'nope'" in lines
    assert "server.max_body_bytes: Input should be greater than 0" in lines
    assert "Traceback" not in result.stdout + result.stderr


REFUSED_ENVIRONMENT = pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        # Read by the SDK when it is imported: before the sidecar's logging is set up.
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc", "must be a non-negative integer but got abc"),
        # Read when the providers are built: a log line.
        ("OTEL_TRACES_EXPORTER", "zipkin", "Requested component 'zipkin' not found"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "Unsupported OTLP protocol 'http/json'"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0", "schedule_delay_millis must be positive"),
        ("OTEL_PROPAGATORS", "tracecontext,b3", "Propagator b3 not found"),
    ],
)


def _exporting_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f'server: {{listen: "127.0.0.1:{free_port()}", admin_listen: "127.0.0.1:{free_port()}"}}\n'
        "claude: {base_url: 'builtin:fake'}\n"
        "telemetry: {otlp_endpoint: 'http://127.0.0.1:9'}\n"
    )
    return path


def _without_otel(**variables: str) -> dict[str, str]:
    return {**{name: "" for name in os.environ if name.startswith("OTEL_")}, **variables}


@REFUSED_ENVIRONMENT
def test_run_refuses_an_otel_value_the_sdk_refuses_with_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    path = _exporting_config(tmp_path)
    result = sidecar_command("run", "-c", str(path), env=_without_otel(**{variable: value}))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if problem in line]
    assert "invalid OpenTelemetry environment" in line


@REFUSED_ENVIRONMENT
def test_check_reports_the_otel_value_run_would_refuse(
    tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    """A rollout's `check` step fails where `run` would not start, not later in the pod."""
    path = _exporting_config(tmp_path)
    result = sidecar_command("check", "-c", str(path), env=_without_otel(**{variable: value}))
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = result.stdout.splitlines()  # the problem alone, no effective config
    assert line.startswith("invalid OpenTelemetry environment: ")
    assert problem in line


def test_check_accepts_the_otel_environment_run_accepts(tmp_path: Path) -> None:
    path = _exporting_config(tmp_path)
    env = _without_otel(
        OTEL_TRACES_EXPORTER="otlp,console",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_PROPAGATORS="tracecontext,baggage",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.25",
    )
    result = sidecar_command("check", "-c", str(path), env=env)
    assert result.returncode == 0, result.stdout
    assert "otlp_endpoint: http://127.0.0.1:9" in result.stdout


def test_check_with_no_file_uses_the_embedded_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0
    assert "base_url: builtin:fake" in result.stdout
    assert "listen: 127.0.0.1:8080" in result.stdout


def test_schema_is_json_schema_of_the_config() -> None:
    result = sidecar_command("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert {
        "server",
        "claude",
        "auth",
        "cors",
        "screening",
        "quotas",
        "telemetry",
        "routes",
    } <= set(schema["properties"])
    # What the loader takes, the schema takes (an editor flags nothing in a good config):
    # the shipped configs, and a route override with both spellings of a deny rule.
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("config/sidecar.example.yaml", "config/minimal.yaml"):
        data = yaml.safe_load((ROOT / name).read_text())
        assert [error.message for error in validator.iter_errors(data)] == [], name
    screening = {"deny_patterns": ["(?i)secret", {"name": "key", "pattern": "PRIVATE KEY"}]}
    route = {"path": "/", "handler": "prompt", "screening": screening}
    assert list(validator.iter_errors({"screening": screening, "routes": [route]})) == []
    assert not validator.is_valid({"screening": {"deny_patterns": [3]}})


@pytest.mark.parametrize(
    ("args", "code"),
    [(("schema",), 0), (("check",), 0), (("check", "-c", "{bad}"), 2)],
    ids=["schema", "check", "check-refused"],
)
def test_output_to_a_reader_that_went_away_ends_quietly_with_the_commands_code(
    tmp_path: Path, args: tuple[str, ...], code: int
) -> None:
    # `sidecar schema | head -1`: the reader is gone before the output is written.
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {listen: nope}\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", *(a.format(bad=bad) for a in args)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)
    assert result.returncode == code
    assert result.stderr == ""


def test_help_for_each_command() -> None:
    for args in (["--help"], ["run", "--help"], ["check", "--help"], ["schema", "--help"]):
        result = sidecar_command(*args)
        assert result.returncode == 0
        assert "usage: sidecar" in result.stdout


def test_run_with_a_bad_config_exits_2_without_binding(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "bad.yaml"
    path.write_text(f'server: {{listen: "127.0.0.1:{port}", bogus: true}}\n')
    result = sidecar_command("run", "-c", str(path))
    assert result.returncode == 2
    assert "server.bogus: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_then_exits_0_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "c.yaml"
    path.write_text(
        f'server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}"}}\n'
        "claude: {base_url: 'builtin:fake', fake: {tokens: 5, tokens_per_second: 0, "
        "time_to_first_token_ms: 0}}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _get(f"http://127.0.0.1:{admin}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert _get(f"http://127.0.0.1:{admin}/readyz")[0] == 200
        status, body = _get(f"http://127.0.0.1:{port}/api/stream-response?prompt=hi")
        assert status == 200
        assert b'"done":true' in body
        process.send_signal(sig)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = process.stderr.read().decode() if process.stderr else ""
    assert "Traceback" not in logs


def test_check_redacts_secrets_at_every_level(tmp_path: Path) -> None:
    secrets = {
        "CLAUDE_KEY": "sk-claude-top-secret",
        "TOP_JWT": "t" * 40,
        "ROUTE_JWT": "r" * 40,
        "NESTED_JWT": "n" * 40,
        "REDIS_PASSWORD": "redis-pass-secret",
        "APP_PASSWORD": "app-pass-secret",
        "OTLP_PASSWORD": "otlp-pass-secret",
        "USER_HASH_KEY": "pseudonym-key-" + "h" * 30,
    }
    config = tmp_path / "secrets.yaml"
    config.write_text(
        """
app: {url: "http://user:${APP_PASSWORD}@127.0.0.1:3000"}
claude: {api_key: "${CLAUDE_KEY}"}
auth: {mode: required, jwt: {secret: "${TOP_JWT}"}}
quotas: {store: redis, redis_url: "redis://:${REDIS_PASSWORD}@127.0.0.1:6379/0"}
telemetry:
  otlp_endpoint: "https://otel:${OTLP_PASSWORD}@collector.example:4318"
  user_hash_key: "${USER_HASH_KEY}"
routes:
  - {path: /v1/, handler: anthropic, auth: {jwt: {secret: "${ROUTE_JWT}"}}}
  - path: /api
    handler: app
    auth: {mode: optional, jwt: {secret: "${NESTED_JWT}", algorithms: [HS256]}}
  - {path: /, handler: app}
"""
    )
    result = sidecar_command("check", "-c", str(config), env=secrets)
    assert result.returncode == 0, result.stdout + result.stderr
    for value in secrets.values():
        assert value not in result.stdout + result.stderr
    # key, two route secrets, top secret, redis URL, pseudonym key
    assert result.stdout.count("'***'") == 6
    assert "user_hash_key: '***'" in result.stdout
    assert "http://user:***@127.0.0.1:3000" in result.stdout


def test_check_redacts_credentials_in_url_query_strings(tmp_path: Path) -> None:
    """A token in a URL's query (no userinfo) is a secret too: `check` never prints it."""
    config = tmp_path / "query.yaml"
    config.write_text(
        """
claude: {base_url: "https://api.example/", api_key: "SECRET-KEY"}
auth: {mode: required, jwt: {jwks_url: "https://idp.example/jwks?token=SECRET-JWKS", algorithms: [RS256]}}
"""
    )
    result = sidecar_command("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SECRET-" not in result.stdout + result.stderr
    assert "token=***" in result.stdout
    # An OTLP endpoint, Claude's base URL and the app's take no query at all (credentials
    # go in OTEL_EXPORTER_OTLP_HEADERS, claude.api_key, the app URL's userinfo): refused,
    # and the refusal does not repeat the value either.
    config.write_text(
        'telemetry: {otlp_endpoint: "https://otel.example:4318/?api_key=SECRET-OTLP"}\n'
        'claude: {base_url: "https://api.example/?key=SECRET-BASE", api_key: "SECRET-KEY"}\n'
        'app: {url: "http://127.0.0.1:3000/?key=SECRET-APP"}\n'
    )
    result = sidecar_command("check", "-c", str(config))
    assert result.returncode == 2
    assert "telemetry.otlp_endpoint" in result.stdout
    assert "claude.base_url" in result.stdout
    assert "app.url" in result.stdout
    assert "SECRET-" not in result.stdout + result.stderr


def test_check_refuses_a_short_user_hash_key_without_printing_it(tmp_path: Path) -> None:
    config = tmp_path / "short-key.yaml"
    config.write_text('telemetry: {user_hash_key: "${USER_HASH_KEY}"}\n')
    result = sidecar_command("check", "-c", str(config), env={"USER_HASH_KEY": "TooShortKey42"})
    assert result.returncode == 2
    assert "telemetry.user_hash_key: must be at least 32 bytes" in result.stdout
    assert "TooShortKey42" not in result.stdout + result.stderr


def test_config_errors_do_not_echo_url_passwords(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text('app: {url: "ftp://user:url-pass-secret@app:21"}\n')
    result = sidecar_command("check", "-c", str(config))
    assert result.returncode == 2
    assert "app.url" in result.stdout
    assert "url-pass-secret" not in result.stdout + result.stderr


def _tls_files(tmp_path: Path, case: str) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key)
    if case == "not PEM":
        cert.write_text("not a certificate\n")
    elif case == "key of another certificate":
        write_self_signed(tmp_path / "other.pem", key)
    elif case == "key file is the certificate":
        key = cert
    elif case == "encrypted key":  # refused, never a passphrase prompt
        private = serialization.load_pem_private_key(key.read_bytes(), None)
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
    return cert, key


@pytest.mark.parametrize(
    "case",
    ["not PEM", "key of another certificate", "key file is the certificate", "encrypted key"],
)
def test_tls_files_that_cannot_serve_are_a_config_problem(tmp_path: Path, case: str) -> None:
    """`check` reports them as `server.tls: ...` and `run` exits 2 with that one line,
    before binding: the same refusal as any other bad config, not a listener failure."""
    cert, key = _tls_files(tmp_path, case)
    port = free_port()
    path = tmp_path / "tls.yaml"
    path.write_text(
        yaml.safe_dump(
            {"server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}",
                        "tls": {"cert_file": str(cert), "key_file": str(key)}}}
        )
    )  # fmt: skip
    checked = sidecar_command("check", "-c", str(path))
    assert checked.returncode == 2
    assert checked.stdout.startswith("server.tls: cannot load cert_file/key_file:"), checked.stdout
    ran = sidecar_command("run", "-c", str(path))
    assert ran.returncode == 2
    assert ran.stderr.splitlines() == checked.stdout.splitlines()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nothing was left bound


_URL_KEYS = {
    "app.url": ({"app": {"url": "{}"}}),
    "claude.base_url": ({"claude": {"base_url": "{}", "api_key": "sk-test"}}),
    "auth.jwt.jwks_url": ({"auth": {"mode": "required", "jwt": {"jwks_url": "{}"}}}),
    "telemetry.otlp_endpoint": ({"telemetry": {"otlp_endpoint": "{}"}}),
}


@pytest.mark.parametrize("key", sorted(_URL_KEYS))
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://[::1/x", "http://:80/"]
)
def test_a_url_the_proxy_cannot_parse_is_refused_by_check(
    tmp_path: Path, key: str, url: str
) -> None:
    """Accepted, it would start and answer every request on it with a 500 and a traceback."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(_URL_KEYS[key]).replace('"{}"', json.dumps(f"{url}")))
    result = sidecar_command("check", "-c", str(path))
    assert result.returncode == 2, result.stdout
    assert result.stdout.startswith(f"{key}: "), result.stdout


def test_run_refuses_an_app_url_with_a_port_out_of_range(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(
        f'server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{free_port()}"}}\n'
        'app: {url: "http://127.0.0.1:99999"}\n'
    )
    result = sidecar_command("run", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("app.url: "), result.stderr
    assert "Traceback" not in result.stderr


def test_an_unset_variable_is_one_problem_not_also_its_empty_value(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        'telemetry: {log_format: "${SIDECAR_TEST_UNSET}", log_level: LOUD}\n'
        'server: {shutdown_grace_seconds: "${SIDECAR_TEST_UNSET}"}\n'
    )
    result = sidecar_command("check", "-c", str(path))
    assert result.returncode == 2
    assert sorted(result.stdout.splitlines()) == [
        "server.shutdown_grace_seconds: environment variable SIDECAR_TEST_UNSET is not set",
        "telemetry.log_format: environment variable SIDECAR_TEST_UNSET is not set",
        "telemetry.log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
    ]


def _health(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "health", "-c", str(path), *args],
        capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        env={**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"},
    )  # fmt: skip


async def test_health_asks_the_admin_listener_the_config_names(tmp_path: Path) -> None:
    """The image's HEALTHCHECK: 0 while the sidecar answers (the wildcard address read as
    loopback, a proxy in the environment not used), 1 with one line when it does not."""
    from tests.support.sidecars import sidecar_process

    async with sidecar_process({}, tmp_path, name="s") as running:
        path = tmp_path / "wildcard.yaml"
        admin_port = running.admin_url.rsplit(":", 1)[1]
        path.write_text(yaml.safe_dump({"server": {"admin_listen": f"0.0.0.0:{admin_port}"}}))
        alive = _health(path)
        ready = _health(path, "--ready")
    gone = _health(path, "--timeout", "1")
    assert (alive.returncode, alive.stdout) == (
        0,
        f"healthy: http://127.0.0.1:{admin_port}/healthz\n",
    )
    assert (ready.returncode, ready.stdout) == (0, f"ready: http://127.0.0.1:{admin_port}/readyz\n")
    assert gone.returncode == 1
    assert gone.stdout.startswith(f"unhealthy: http://127.0.0.1:{admin_port}/healthz: ")
    assert gone.stdout.count("\n") == 1
    assert gone.stderr == ""


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e10", "1e300"])
def test_health_refuses_a_timeout_that_is_no_wait(tmp_path: Path, timeout: str) -> None:
    """A usage error (exit 2, one line), not a verdict: such a timeout would call a healthy
    sidecar unhealthy (`0`, `-1`, `nan`) or end in a traceback (`inf`, and a finite one
    past what a socket timeout holds)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"server": {"admin_listen": f"127.0.0.1:{free_port()}"}}))
    result = _health(path, "--timeout", timeout)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "sidecar health: error: argument --timeout: must be a finite number of seconds > 0"
        f" and <= 1000000000, got {timeout!r}"
    )


def test_check_refuses_a_token_limit_no_default_call_fits(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("claude: {max_tokens: 4096}\nquotas: {tokens_per_day: 2000}\n")
    result = sidecar_command("check", "-c", str(path))
    assert result.returncode == 2
    first = result.stdout.strip().splitlines()[0]
    assert first.startswith("quotas.tokens_per_day: 2000 is less than a call left at the ")
    assert "claude.max_tokens (4096)" in first
