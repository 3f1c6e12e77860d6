"""Whom a request is answered for: names together with who vouches for them, so two
deployments sharing one Redis never answer (nor resume) each other's `acme` or `alice`,
while the replicas of one deployment share their entries."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from sidecar.fake_claude import FakeServer
from sidecar.identity import Identity
from sidecar.scope import scope_of
from tests.support.policy import ISSUER, mint
from tests.support.redis_server import RedisServer
from tests.support.sidecars import SidecarProcess, sidecar_command, sidecar_process
from tests.support.waiting import eventually

SECRETS = ("a" * 32 + "-deployment-a-secret", "b" * 32 + "-deployment-b-secret")
KEYS = ("sk-deployment-a-client-key-0001", "sk-deployment-b-client-key-0002")
QUESTION = {
    "model": "claude-sonnet-5-5", "max_tokens": 30, "temperature": 0, "stream": True,
    "messages": [{"role": "user", "content": "what is our plan?"}],
}  # fmt: skip


def _jwt(name: str, source: str) -> Identity:
    return Identity("jwt", user=name, tenant="acme", source=source, tenant_source=source)


def test_a_name_is_keyed_with_who_vouches_for_it() -> None:
    """The caller and the tenant carry their sources: alike names of two sources are two
    keys, one source's callers of one tenant share the tenant's key."""
    ours, theirs, bob = _jwt("alice", "jwt:a"), _jwt("alice", "jwt:b"), _jwt("bob", "jwt:a")
    assert scope_of(ours, "1.1.1.1").caller != scope_of(theirs, "1.1.1.1").caller
    assert scope_of(ours, "1.1.1.1").tenant != scope_of(theirs, "1.1.1.1").tenant
    assert scope_of(ours, "1.1.1.1").tenant == scope_of(bob, "2.2.2.2").tenant
    assert scope_of(ours, "1.1.1.1").caller == scope_of(ours, "2.2.2.2").caller


def test_an_anonymous_caller_is_its_address_under_the_policy_that_let_it_in() -> None:
    here, there = (
        Identity("anonymous", source="anonymous:a"),
        Identity("anonymous", source="anonymous:b"),
    )
    assert scope_of(here, "10.0.0.5").caller != scope_of(there, "10.0.0.5").caller
    assert scope_of(here, "10.0.0.5").caller != scope_of(here, "10.0.0.6").caller
    assert scope_of(here, "10.0.0.5").tenant is None


def test_a_key_is_named_by_its_source_not_its_display_name() -> None:
    ci = Identity("api_key", user="u", tenant="acme", api_key_name="ci", source="api_key:1")
    build = Identity("api_key", user="u", tenant="acme", api_key_name="build", source="api_key:1")
    other = Identity("api_key", user="u", tenant="acme", api_key_name="ci", source="api_key:2")
    assert scope_of(ci, "").caller == scope_of(build, "").caller
    assert scope_of(ci, "").caller != scope_of(other, "").caller


def _deployment(variant: str, which: int, fake: FakeServer, redis: RedisServer) -> dict[str, Any]:
    """One deployment's config: its own JWT secret, or its own key under a shared name."""
    auth: dict[str, Any]
    if variant == "jwt":
        jwt = {"secret": SECRETS[which], "issuer": ISSUER, "audience": "claude-sidecar",
               "tenant_claim": "org"}  # fmt: skip
        auth = {"mode": "required", "jwt": jwt}
    else:
        digest = hashlib.sha256(KEYS[which].encode()).hexdigest()
        auth = {"mode": "required", "api_keys": [
            {"name": "acme-app", "user": "alice", "tenant": "acme", "sha256": digest}
        ]}  # fmt: skip
    return {
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar"},
        "auth": auth,
        "cache": {"enabled": True, "store": "redis", "redis_url": redis.url},
        "resume": {"store": "redis", "redis_url": redis.url, "detach_grace_seconds": 10},
    }


def _credential(variant: str, which: int) -> dict[str, str]:
    if variant == "jwt":
        return {"Authorization": f"Bearer {mint(key=SECRETS[which], sub='alice', org='acme')}"}
    return {"x-api-key": KEYS[which]}


async def _ask(running: SidecarProcess, headers: Mapping[str, str]) -> str | None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(running.url + "/v1/messages", json=QUESTION, headers=headers) as response,
    ):
        await response.read()
        assert response.status == 200, response.status
        return response.headers.get("X-Cache")


async def _started(running: SidecarProcess, headers: Mapping[str, str]) -> str:
    """A resumable prompt stream read to its end: its stream id."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(running.url + "/api/stream-response", json={"prompt": "hi"},
                  headers=headers) as response,
    ):  # fmt: skip
        await response.read()
        assert response.status == 200, response.status
        return response.headers["Sidecar-Stream-Id"]


async def _resumed(running: SidecarProcess, headers: Mapping[str, str], stream_id: str) -> int:
    resume = {**headers, "Last-Event-ID": f"{stream_id}:0"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(running.url + "/api/stream-response", headers=resume) as response,
    ):
        await response.read()
        return response.status


@contextlib.asynccontextmanager
async def _client(redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def _everything(client: Redis) -> bytes:
    """Every key and string value in Redis, as one blob to search."""
    found = b""
    async for key in client.scan_iter(count=1000):
        found += key + b"\n"
        if await client.type(key) == b"string":
            value = await client.get(key)
            found += (value if isinstance(value, bytes) else b"") + b"\n"
    return found


@pytest.mark.parametrize("variant", ["jwt", "api_key"])
async def test_two_deployments_sharing_a_redis_never_answer_each_others_tenant(
    variant: str, fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Deployments A (two replicas) and B name a caller `alice` of tenant `acme` alike, with
    another JWT secret, or another API key under the same name: B's identical request is a
    miss and B's `alice` cannot resume A's stream (a GET answered 204, as for an unknown
    id), while A's second replica hits A's entry
    and resumes A's stream. No secret reaches Redis, the logs, the metrics or `check`."""
    ours, theirs = (
        _deployment(variant, 0, fake, redis_server),
        _deployment(variant, 1, fake, redis_server),
    )
    async with (
        sidecar_process(ours, tmp_path, name="a1") as a1,
        sidecar_process(ours, tmp_path, name="a2") as a2,
        sidecar_process(theirs, tmp_path, name="b") as b,
        _client(redis_server) as client,
    ):
        first = await _ask(a1, _credential(variant, 0))

        async def stored() -> bool:
            return len([key async for key in client.scan_iter("sidecar:cache:*")]) == 1

        await eventually(stored)
        other = await _ask(b, _credential(variant, 1))
        replica = await _ask(a2, _credential(variant, 0))
        stream_id = await _started(a1, _credential(variant, 0))
        foreign = await _resumed(b, _credential(variant, 1), stream_id)
        own = await _resumed(a2, _credential(variant, 0), stream_id)
        async with aiohttp.ClientSession() as http, http.get(a1.admin_url + "/metrics") as got:
            metrics = await got.text()
        seen = (await _everything(client)).decode(errors="replace")
        logs = a1.logs() + a2.logs() + b.logs()
    assert (first, other, replica, foreign, own) == ("MISS", "MISS", "HIT", 204, 200)
    checked = sidecar_command("check", "-c", str(a1.config_path))
    shown = checked.stdout + checked.stderr
    for secret in (*SECRETS, *KEYS):
        for where, text in (("redis", seen), ("logs", logs), ("metrics", metrics),
                            ("check", shown)):  # fmt: skip
            assert secret not in text, where
