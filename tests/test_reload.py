"""Hot reload over real sockets: file changes, bad files, SIGHUP, TLS, and no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar import loader, readiness
from sidecar import reload as reload_module
from sidecar import server as server_module
from sidecar.fake_claude import FakeServer
from sidecar.reload import keep_restart_only
from sidecar.server import SidecarServer
from tests.support.certs import write_self_signed
from tests.support.policy import AUDIENCE, ISSUER, mint, new_key, public_jwk, running_jwks
from tests.support.redis_server import RedisServer, running_redis
from tests.support.sidecars import BASE, sidecar_process
from tests.support.sockets import free_port
from tests.support.waiting import eventually, holds

pytestmark = pytest.mark.timeout(60)
API_KEY = "sk-client-reload-test"
AUTH = {"auth": {"mode": "required",
                 "api_keys": [{"name": "ci", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]}}  # fmt: skip


def write(path: Path, data: dict[str, Any] | str) -> None:
    """Replace the file atomically (as editors and ConfigMaps do): never half-written."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    os.replace(scratch, path)


@contextlib.asynccontextmanager
async def file_sidecar(path: Path, data: dict[str, Any]) -> AsyncIterator[SidecarServer]:
    """A sidecar started from the file `path` (written from `data`), reloading from it."""
    write(path, data)
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace=1.0)


def config_for(fake: FakeServer, **override: Any) -> dict[str, Any]:
    base = loader.deep_merge(BASE, {"server": {"reload_poll_seconds": 0.05},
                        "claude": {"base_url": fake.url, "api_key": "sk-sidecar"}})  # fmt: skip
    return loader.deep_merge(base, override)


async def reloads(http: aiohttp.ClientSession, server: SidecarServer, result: str) -> float:
    """`sidecar_config_reloads_total{result=...}` from the admin listener."""
    async with http.get(server.admin_url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("sidecar_config_reloads_total{") and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def prompt_status(http: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with http.get(url + "/api/stream-response", params={"prompt": "hi"},
                        headers=headers) as response:  # fmt: skip
        await response.read()
        return response.status


async def test_an_edited_file_applies_to_new_requests_while_a_stream_finishes_on_the_old(
    fake: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "sidecar.yaml"
    async with file_sidecar(path, config_for(fake)) as server, aiohttp.ClientSession() as http:
        old = server.runtime
        params = {"prompt": "[[fake tokens=30 tps=30]] started before the reload"}
        async with http.get(server.url + "/api/stream-response", params=params) as stream:
            head = await stream.content.readuntil(b"\n\n")
            assert b'"token"' in head
            write(path, config_for(fake, **AUTH, screening={"deny_patterns": ["(?i)forbidden"]}))

            async def swapped() -> bool:
                return server.runtime is not old

            await eventually(swapped)
            # New requests see the new policy at once, while the old stream still runs.
            assert await prompt_status(http, server.url) == 401
            assert await prompt_status(http, server.url, **{"x-api-key": API_KEY}) == 200
            async with http.get(
                server.url + "/api/stream-response",
                params={"prompt": "say FORBIDDEN things"},
                headers={"x-api-key": API_KEY},
            ) as denied:
                assert denied.status == 400
            assert old in server.runtimes.live  # still serving the stream it started
            rest = await stream.read()
        events = (head + rest).decode().strip().split("\n\n")
        assert sum('"token"' in event for event in events) == 30
        assert '"done":true' in events[-1].replace(" ", "")

        async def old_closed() -> bool:
            return server.runtimes.live == [server.runtime]

        await eventually(old_closed)
        assert await reloads(http, server, "success") == 1
        async with http.get(server.admin_url + "/readyz") as response:
            body = json.loads(await response.text())
        assert body["config_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_bad_file_keeps_the_old_config_serving_and_is_counted_and_logged(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.reload")
    path = tmp_path / "sidecar.yaml"
    async with file_sidecar(path, config_for(fake)) as server, aiohttp.ClientSession() as http:
        running = server.runtime

        async def failures(count: int) -> bool:
            return await reloads(http, server, "failure") == count

        write(path, "server:\n  listen: [unclosed\n")  # malformed YAML
        await eventually(lambda: failures(1))
        write(path, config_for(fake, screening={"max_prompt_chars": -1}, bogus=True))
        await eventually(lambda: failures(2))
        path.unlink()  # a deleted file is a failed reload too, not a crash
        await eventually(lambda: failures(3))
        assert server.runtime is running
        assert await prompt_status(http, server.url) == 200
        assert await reloads(http, server, "success") == 0

        failed = [r for r in caplog.records if r.getMessage() == "config_reload_failed"]
        assert len(failed) == 3
        yaml_problem, value_problems, missing = (r.__dict__["problems"] for r in failed)
        assert len(yaml_problem) == 1
        assert f"{path}: line 3, column 1: expected ',' or ']'" in yaml_problem[0]
        assert "screening.max_prompt_chars: Input should be greater than 0" in value_problems
        assert "bogus: unknown key" in value_problems  # every problem, not just the first
        assert "cannot read" in missing[0]
        assert all(r.levelno == logging.ERROR for r in failed)

        write(path, config_for(fake, **AUTH))  # fixed: the next change applies
        await eventually(lambda: failures(3))

        async def applied() -> bool:
            return await reloads(http, server, "success") == 1

        await eventually(applied)
        assert await prompt_status(http, server.url) == 401


async def test_restart_only_keys_keep_their_running_value_with_a_warning(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.reload")
    path = tmp_path / "sidecar.yaml"
    data = config_for(fake, server={"reload_poll_seconds": 0})  # SIGHUP / API only
    async with file_sidecar(path, data) as server, aiohttp.ClientSession() as http:
        listen = server.runtime.config.server.listen
        changed = loader.deep_merge(data, {
            "server": {"listen": f"127.0.0.1:{free_port()}", "max_body_bytes": 10,
                       "shutdown_grace_seconds": 7},
            "telemetry": {"service_name": "renamed", "log_format": "text"},
            "screening": {"max_prompt_chars": 5},
        })  # fmt: skip
        write(path, changed)
        assert await server.reload()
        config = server.runtime.config
        assert config.server.listen == listen  # still bound where it was
        assert config.server.max_body_bytes == 1048576
        assert config.telemetry.service_name == "claude-sidecar"
        assert config.server.shutdown_grace_seconds == 7  # the rest applies
        assert config.screening.max_prompt_chars == 5
        assert await prompt_status(http, server.url) == 200  # "hi" fits in 5
        (warning,) = [r for r in caplog.records if r.getMessage() == "config_reload_needs_restart"]
        assert warning.__dict__["keys"] == [
            "server.listen", "server.max_body_bytes", "telemetry.service_name",
            "telemetry.log_format",
        ]  # fmt: skip


def test_turning_tls_on_or_off_needs_a_restart(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    write_self_signed(cert, key, "a")
    plain = loader.validate(BASE, {})
    tls = loader.validate(loader.deep_merge(BASE, {"server": {"tls": {"cert_file": str(cert),
                                                          "key_file": str(key)}}}), {})  # fmt: skip
    effective, keys = keep_restart_only(plain, tls)
    assert keys == ["server.tls.cert_file"]
    assert not effective.server.tls.enabled
    effective, keys = keep_restart_only(tls, plain)
    assert keys == ["server.tls.cert_file"]
    assert effective.server.tls.enabled


async def test_reloads_reuse_unchanged_resources_and_leak_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    data = loader.deep_merge(BASE, {"server": {"reload_poll_seconds": 0},
                        "claude": {"base_url": "builtin:fake",
                                   "fake": {"tokens": 3, "tokens_per_second": 0,
                                            "time_to_first_token_ms": 0}}})  # fmt: skip
    async with file_sidecar(path, data) as server, aiohttp.ClientSession() as http:
        first = server.runtime
        assert await prompt_status(http, server.url) == 200
        baseline_tasks = len(asyncio.all_tasks())
        for _ in range(5):  # an unchanged file: new runtime, same resources
            assert await server.reload()
            assert await prompt_status(http, server.url) == 200
        runtime = server.runtime
        assert runtime is not first
        assert runtime.quotas is first.quotas  # counters and leases carry over
        assert runtime.admission is first.admission  # one process-wide stream limit
        assert runtime.resume is first.resume  # buffers and live generations carry over
        assert runtime.claude.base_url == first.claude.base_url  # the same fake Claude

        write(path, loader.deep_merge(data, {"claude": {"max_concurrent_streams": 9,
                                            "fake": {"tokens": 4}}}))  # fmt: skip
        assert await server.reload()
        assert server.runtime.admission is not first.admission
        assert server.runtime.admission.limit == 9
        assert server.runtime.claude.base_url != first.claude.base_url  # a new fake
        assert await prompt_status(http, server.url) == 200

        async def settled() -> bool:
            return len(server.runtimes.live) == 1

        await eventually(settled)
        shared = server.runtimes.shared
        assert [shared.live(name) for name in ("fake_claude", "admission", "quotas", "auth")] == [
            1, 1, 1, 1
        ]  # fmt: skip
        assert len(asyncio.all_tasks()) <= baseline_tasks


async def test_shutdown_waits_for_streams_on_a_replaced_runtime(
    fake: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "sidecar.yaml"
    write(path, config_for(fake, server={"reload_poll_seconds": 0}))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    async with aiohttp.ClientSession() as http:
        params = {"prompt": "[[fake tokens=20 tps=40]] spans a reload and a shutdown"}
        async with http.get(server.url + "/api/stream-response", params=params) as stream:
            head = await stream.content.readuntil(b"\n\n")
            assert await server.reload()
            await server.shutdown(grace=10)
            rest = await stream.read()
    events = (head + rest).decode().strip().split("\n\n")
    assert sum('"token"' in event for event in events) == 20
    assert server.runtimes.live == []


async def test_a_reload_that_finishes_after_shutdown_began_is_not_installed(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown waits a bounded time for a reload under way; one still running after that
    (its new runtime slow to open) is dropped when it ends, never installed while the
    sidecar drains: the streams, queue and readers shutdown stops stay the only ones."""
    path = tmp_path / "sidecar.yaml"
    write(path, config_for(fake, server={"reload_poll_seconds": 0}))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    first = server.runtime
    gate = asyncio.Event()
    checks = readiness.unready_checks

    async def slow_checks(runtime: Any) -> Any:
        await gate.wait()
        return await checks(runtime)

    monkeypatch.setattr(reload_module, "unready_checks", slow_checks)
    monkeypatch.setattr(server_module, "_RELOAD_STOP_GRACE", 0.1)
    write(path, config_for(fake, server={"reload_poll_seconds": 0},
                           claude={"max_concurrent_streams": 7}))  # fmt: skip
    reloading = asyncio.ensure_future(server.reload())
    await eventually(lambda: holds(len(server.runtimes.live) == 2))  # the new one is open
    shutdown = asyncio.ensure_future(server.shutdown(grace=0.5))
    await eventually(lambda: holds(server.runtimes.draining))
    gate.set()
    assert not await reloading
    assert server.runtime is first
    await shutdown
    assert server.runtimes.live == []


# --------------------------------------------------------------------------- symlinks


async def test_a_configmap_style_symlink_swap_is_seen(fake: FakeServer, tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by re-pointing `..data` at a new directory."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "sidecar.yaml").write_text(yaml.safe_dump(config_for(fake)))
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "sidecar.yaml").symlink_to("..data/sidecar.yaml")
    path = tmp_path / "sidecar.yaml"
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            assert await prompt_status(http, server.url) == 200
            (tmp_path / "v2").mkdir()
            (tmp_path / "v2" / "sidecar.yaml").write_text(yaml.safe_dump(config_for(fake, **AUTH)))
            (tmp_path / "..data_tmp").symlink_to("v2")
            os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap

            async def applied() -> bool:
                return await prompt_status(http, server.url) == 401

            await eventually(applied)
    finally:
        await server.shutdown(grace=1.0)


# --------------------------------------------------------------------------- SIGHUP


async def test_sighup_reloads_a_running_process(tmp_path: Path) -> None:
    data = {"server": {"reload_poll_seconds": 0},  # no watching: only the signal reloads
            "claude": {"base_url": "builtin:fake", "fake": {"tokens": 3, "tokens_per_second": 0,
                                                            "time_to_first_token_ms": 0}}}  # fmt: skip
    async with sidecar_process(data, tmp_path) as running:
        url, admin_url, path, process = (
            running.url,
            running.admin_url,
            running.config_path,
            running.process,
        )
        async with aiohttp.ClientSession() as http:
            assert await prompt_status(http, url) == 200
            write(path, loader.deep_merge(running.data, AUTH))
            assert await prompt_status(http, url) == 200  # not watched: nothing yet
            process.send_signal(signal.SIGHUP)

            async def applied() -> bool:
                return await prompt_status(http, url) == 401

            await eventually(applied)
            assert await prompt_status(http, url, **{"x-api-key": API_KEY}) == 200
            async with http.get(admin_url + "/readyz") as response:
                body = json.loads(await response.text())
            assert body["config_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0
    logs = running.logs()
    reloaded = [json.loads(line) for line in logs.splitlines() if '"config_reloaded"' in line]
    assert [entry["trigger"] for entry in reloaded] == ["signal"]
    assert "Traceback" not in logs


# --------------------------------------------------------------------------- TLS


async def served_name(port: int) -> str:
    """The common name of the certificate a new TLS handshake with 127.0.0.1:`port` gets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    attribute = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )[0]
    return str(attribute.value)


async def test_a_renewed_certificate_is_served_to_new_handshakes(
    fake: FakeServer, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(cert, key, "first")
    tls = {"tls": {"cert_file": str(cert), "key_file": str(key)}}
    path = tmp_path / "sidecar.yaml"
    async with file_sidecar(path, config_for(fake, server=tls)) as server:
        assert await served_name(server.port) == "first"
        write_self_signed(tmp_path / "new.crt", tmp_path / "new.key", "second")
        os.replace(tmp_path / "new.key", key)
        os.replace(tmp_path / "new.crt", cert)

        async def renewed() -> bool:  # the certificate files are watched like the config
            return await served_name(server.port) == "second"

        await eventually(renewed)

        # A key that does not match the certificate fails the reload; the last good pair stays.
        write_self_signed(tmp_path / "other.crt", key, "mismatched")
        assert not await server.reload()
        assert await served_name(server.port) == "second"


async def test_a_reload_rereads_a_replaced_jwt_key_file(fake: FakeServer, tmp_path: Path) -> None:
    key_file = tmp_path / "jwt.pem"

    def new_key() -> ec.EllipticCurvePrivateKey:
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write(key_file, pem.decode())
        return private

    def bearer(private: ec.EllipticCurvePrivateKey) -> str:
        exp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
        token = jwt.encode({"sub": "u", "exp": exp}, private, algorithm="ES256")
        return f"Bearer {token}"

    old_key = new_key()
    auth = {"auth": {"mode": "required",
                     "jwt": {"public_key_file": str(key_file), "algorithms": ["ES256"]}}}  # fmt: skip
    data = config_for(fake, server={"reload_poll_seconds": 0}, **auth)
    async with file_sidecar(tmp_path / "sidecar.yaml", data) as server:
        async with aiohttp.ClientSession() as http:
            assert await prompt_status(http, server.url, Authorization=bearer(old_key)) == 200
            rotated = new_key()  # same path, same config text: only SIGHUP/reload picks it up
            assert await prompt_status(http, server.url, Authorization=bearer(rotated)) == 401
            assert await server.reload()
            assert await prompt_status(http, server.url, Authorization=bearer(rotated)) == 200
            assert await prompt_status(http, server.url, Authorization=bearer(old_key)) == 401


async def test_a_reload_that_changes_only_a_route_secret_uses_the_new_secret(
    fake: FakeServer, tmp_path: Path
) -> None:
    # Resources are reused while their settings are equal: a secret is part of "equal".
    old, new = "o" * 40, "n" * 40

    def data(secret: str) -> dict[str, Any]:
        route = {"path": "/api/stream-response", "handler": "prompt",
                 "auth": {"mode": "required", "jwt": {"secret": secret}}}  # fmt: skip
        return config_for(fake, server={"reload_poll_seconds": 0}, routes=[route])

    def bearer(secret: str) -> str:
        exp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
        return "Bearer " + jwt.encode({"sub": "u", "exp": exp}, secret, algorithm="HS256")

    path = tmp_path / "sidecar.yaml"
    async with file_sidecar(path, data(old)) as server, aiohttp.ClientSession() as http:
        assert await prompt_status(http, server.url, Authorization=bearer(old)) == 200
        write(path, data(new))
        assert await server.reload()
        assert await prompt_status(http, server.url, Authorization=bearer(new)) == 200
        assert await prompt_status(http, server.url, Authorization=bearer(old)) == 401


async def test_an_api_key_is_revoked_by_reload_while_the_jwks_issuer_is_down(
    fake: FakeServer, tmp_path: Path
) -> None:
    """A reload that changes other auth settings keeps the key set it has: it neither
    needs the issuer to answer (a revocation must not wait for it) nor refetches."""
    path = tmp_path / "sidecar.yaml"
    leaked = {"name": "leaked", "sha256": hashlib.sha256(b"sk-leaked-key").hexdigest()}
    signing = new_key("RS256")
    async with running_jwks([public_jwk(signing, "k1")]) as issuer:
        jwt = {"jwks_url": issuer.url, "algorithms": ["RS256"], "issuer": ISSUER,
               "audience": AUDIENCE}  # fmt: skip
        data = config_for(fake, auth={**AUTH["auth"], "jwt": jwt})
        with_leaked = loader.deep_merge(data, {"auth": {"api_keys": [
            *data["auth"]["api_keys"], leaked]}})  # fmt: skip
        token = {"Authorization": f"Bearer {mint(signing, 'RS256', kid='k1')}"}
        async with file_sidecar(path, with_leaked) as server, aiohttp.ClientSession() as http:
            assert await prompt_status(http, server.url, **{"x-api-key": "sk-leaked-key"}) == 200
            issuer.down = True
            fetched = issuer.fetches
            write(path, data)
            assert await server.reload()
            assert await prompt_status(http, server.url, **{"x-api-key": "sk-leaked-key"}) == 401
            assert await prompt_status(http, server.url, **token) == 200
            async with http.get(server.admin_url + "/readyz") as response:
                assert response.status == 200
            assert issuer.fetches == fetched

            async def settled() -> bool:
                return len(server.runtimes.live) == 1

            await eventually(settled)
            assert server.runtimes.shared.live("jwks") == 1


async def test_readiness_names_the_embedded_default_by_its_hash() -> None:
    """With no file, `/readyz` still says which config is live: the embedded text's hash,
    also once a reload served it again."""
    embedded = loader.default_config_text()
    data = loader.deep_merge(yaml.safe_load(embedded), {"server": BASE["server"]})
    server = SidecarServer(loader.validate(data, {}), env={})
    await server.start()
    seen = []
    try:
        async with aiohttp.ClientSession() as http:
            for reloaded in (False, True):  # and after a reload (SIGHUP) of the same text
                if reloaded:
                    assert await server.reload()
                async with http.get(server.admin_url + "/readyz") as response:
                    seen.append(json.loads(await response.text())["config_sha256"])
    finally:
        await server.shutdown(grace=1.0)
    assert seen == [hashlib.sha256(embedded.encode()).hexdigest()] * 2


async def test_a_config_whose_fail_closed_store_is_unreachable_is_refused(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload never swaps a ready sidecar for one that would answer 503: a fail-closed
    quota or resume store that does not answer is a failed reload, the old config serving."""
    caplog.set_level(logging.INFO, logger="sidecar.reload")
    path = tmp_path / "sidecar.yaml"
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with file_sidecar(path, config_for(fake)) as server, aiohttp.ClientSession() as http:
        running = server.runtime
        for section in ("quotas", "resume"):
            write(path, config_for(fake, **{section: {"store": "redis", "redis_url": dead,
                                                      "on_store_error": "fail_closed"}}))  # fmt: skip
            assert not await server.reload()
            assert server.runtime is running
        async with http.get(server.admin_url + "/readyz") as response:
            assert response.status == 200
        assert await prompt_status(http, server.url) == 200
        assert await reloads(http, server, "failure") == 2
        # Open (fail_open) stores are no readiness condition: that reload applies.
        write(path, config_for(fake, quotas={"store": "redis", "redis_url": dead,
                                             "on_store_error": "fail_open"}))  # fmt: skip
        assert await server.reload()
    failed = [r for r in caplog.records if r.getMessage() == "config_reload_failed"]
    assert [r.__dict__["problems"] for r in failed] == [
        ["<readiness>: quota_store: unavailable"],
        ["<readiness>: resume_store: unavailable"],
    ]


async def test_a_reload_whose_token_limit_refuses_every_default_call_keeps_the_old_config(
    fake: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.reload")
    path = tmp_path / "sidecar.yaml"
    async with file_sidecar(path, config_for(fake)) as server, aiohttp.ClientSession() as http:
        running = server.runtime
        write(
            path, config_for(fake, claude={"max_tokens": 4096}, quotas={"tokens_per_minute": 1000})
        )

        async def failed() -> bool:
            return await reloads(http, server, "failure") == 1

        await eventually(failed)
        assert server.runtime is running
        assert await prompt_status(http, server.url) == 200  # not a 400 for every prompt
    (problems,) = (
        r.__dict__["problems"] for r in caplog.records if r.getMessage() == "config_reload_failed"
    )
    assert any(
        p.startswith("quotas.tokens_per_minute: 1000") and "claude.max_tokens (4096)" in p
        for p in problems
    ), problems


def _cancel_listeners() -> int:
    """Redis resume stores listening for cancels in this loop (`RedisResumeStore.listener`)."""
    return sum(
        1
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__name__", "") == "_listen_for_cancels"
    )


async def test_reloads_that_change_the_resume_store_leave_one_cancel_listener(
    fake: FakeServer, tmp_path: Path, redis_server: RedisServer
) -> None:
    """A store swapped by a reload stops listening with its generation: one listener for
    the store in use, none for one a reload refused, none after a stop with Redis down."""
    path = tmp_path / "sidecar.yaml"
    dead = f"redis://127.0.0.1:{free_port()}/0"

    def resume(url: str, on_error: str = "fail_open") -> dict[str, Any]:
        return config_for(fake, resume={"store": "redis", "redis_url": url,
                                        "on_store_error": on_error})  # fmt: skip

    async with running_redis() as other:
        write(path, resume(redis_server.url))
        server = SidecarServer(loader.load(path, {}), config_path=path, env={})
        await server.start()
        try:
            assert _cancel_listeners() == 1
            for config, listening in (
                (resume(other.url), 1), (resume(redis_server.url), 1), (config_for(fake), 0)
            ):  # fmt: skip
                write(path, config)
                assert await server.reload()
                await eventually(lambda: holds(_cancel_listeners() == listening))  # noqa: B023
            write(path, resume(dead, "fail_closed"))
            assert not await server.reload()
            assert _cancel_listeners() == 0
            write(path, resume(redis_server.url))
            assert await server.reload()
            assert _cancel_listeners() == 1
            await redis_server.kill()
        finally:
            await server.shutdown(grace=1.0)
    assert _cancel_listeners() == 0
