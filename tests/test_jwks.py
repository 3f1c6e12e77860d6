"""JWKS against a local issuer: rotation, rate-limited refetch on unknown kid, outages, readiness."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sidecar.fake_claude import FakeServer
from sidecar.policy.jwks import MAX_JWKS_BYTES, JwksCache, read_jwks
from tests.support.apps import serving
from tests.support.policy import (
    AUDIENCE,
    ISSUER,
    claims_text,
    mint,
    new_key,
    public_jwk,
    running_jwks,
    sign_text,
)
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually

PROMPT = "/api/stream-response"
KEY_1 = new_key("RS256")
KEY_2 = new_key("RS256")
EC_KEY = new_key("ES256")


def jwks_config(url: str, min_refresh: float, refresh: float = 300, **jwt: Any) -> dict[str, Any]:
    return {
        "auth": {
            "jwt": {
                "jwks_url": url, "algorithms": ["RS256", "ES256"], "issuer": ISSUER,
                "audience": AUDIENCE, "jwks_refresh_seconds": refresh,
                "jwks_min_refresh_seconds": min_refresh, **jwt,
            }
        }
    }  # fmt: skip


async def status_of(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + PROMPT, json={"prompt": "hi"}, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            await response.read()
            return response.status


async def test_unknown_kid_refetch_is_rate_limited(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=3600)) as sidecar:
            assert issuer.fetches == 1  # fetched once at start
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 200
            statuses = await asyncio.gather(
                *(status_of(sidecar.url, mint(KEY_2, "RS256", kid=f"bad{i}")) for i in range(20))
            )
            assert set(statuses) == {401}
            assert issuer.fetches == 1  # 20 unknown kids could not hammer the issuer
    assert fake.state.counters["requests"] == 1


async def test_rotated_key_is_picked_up_on_unknown_kid(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=0.001)) as sidecar:
            issuer.keys = [public_jwk(KEY_2, "k2")]  # the issuer rotates
            assert await status_of(sidecar.url, mint(KEY_2, "RS256", kid="k2")) == 200
            assert issuer.fetches == 2
            # The old key is gone from the issuer and, after the refetch, from the sidecar.
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 401


async def test_a_key_set_that_arrives_in_pieces_is_read_to_its_end(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A key set larger than one network read (an issuer with many keys, TLS records)."""
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        issuer.in_pieces = True
        async with sidecar_for(jwks_config(issuer.url, min_refresh=300)) as sidecar:
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 200
            assert issuer.fetches == 1


async def test_a_key_set_over_the_size_limit_is_refused(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    padding = {"kty": "none", "pad": "x" * MAX_JWKS_BYTES}
    async with running_jwks([public_jwk(KEY_1, "k1"), padding]) as issuer:
        issuer.in_pieces = True
        async with sidecar_for(jwks_config(issuer.url, min_refresh=300)) as sidecar:
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 401


async def test_tokens_waiting_on_a_refetch_use_the_keys_it_brought(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """After a rotation, every caller with the new kid gets in, not only the one whose
    token started the refetch (the others wait for it and must not be turned away by the
    refetch rate limit)."""
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=0.2)) as sidecar:
            issuer.keys = [public_jwk(KEY_2, "k2")]
            await asyncio.sleep(0.25)  # past the start fetch's rate limit: one refetch is due
            issuer.in_pieces = True  # the refetch takes a moment: the others arrive during it
            token = mint(KEY_2, "RS256", kid="k2")
            statuses = await asyncio.gather(*(status_of(sidecar.url, token) for _ in range(8)))
            assert statuses == [200] * 8
            assert issuer.fetches == 2


async def test_a_slow_issuer_is_fetched_once_however_many_tokens_wait(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Tokens arriving while a refetch is in flight join it: they never queue a fetch each
    (with an issuer that hangs, that was one fetch timeout per waiting token, in a row)."""
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=0.2)) as sidecar:
            await asyncio.sleep(0.25)  # past the start fetch's rate limit: one refetch is due
            issuer.keys = [public_jwk(KEY_2, "k2")]
            issuer.held = asyncio.Event()
            seen = issuer.fetches
            token = mint(KEY_2, "RS256", kid="k2")
            calls = asyncio.gather(*(status_of(sidecar.url, token) for _ in range(5)))

            async def fetching() -> bool:
                return issuer.fetches > seen

            await eventually(fetching)
            await asyncio.sleep(0.3)  # the fetch outlasts the rate limit
            issuer.held.set()
            assert await calls == [200] * 5
            assert issuer.fetches == seen + 1


async def test_outage_keeps_the_last_good_keys(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        config = jwks_config(issuer.url, min_refresh=0.01, refresh=0.02)
        async with sidecar_for(config) as sidecar:
            issuer.down = True
            seen = issuer.fetches

            async def refetched_twice() -> bool:
                return issuer.fetches >= seen + 2

            await eventually(refetched_twice)  # scheduled refreshes hit the outage
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 200
            issuer.down = False
            issuer.keys = [{"kty": "RSA", "kid": "broken"}]  # a set with nothing usable
            seen = issuer.fetches
            await eventually(refetched_twice)
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 200


async def test_a_failed_fetch_logs_the_url_without_its_credentials(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The JWKS URL's password and query values (a token) never reach a log line."""
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        url = issuer.url.replace("://", "://jwks-user:JWKSPASS5@", 1) + "?token=JWKSTOKEN6"
        async with sidecar_for(jwks_config(url, min_refresh=0.01, refresh=0.02)):
            issuer.down = True
            seen = issuer.fetches

            async def refetched() -> bool:
                return issuer.fetches > seen

            await eventually(refetched)
            await asyncio.sleep(0.05)
    lines = [r for r in caplog.records if r.name == "sidecar.auth.jwks"]
    assert lines, "the failed fetch is logged"
    for record in lines:
        text = record.getMessage() + repr(vars(record))
        assert "JWKSPASS5" not in text
        assert "JWKSTOKEN6" not in text
    assert any(getattr(r, "url", "").endswith("?token=***") for r in lines)


async def test_readyz_waits_for_the_first_keys(sidecar_for: SidecarFactory) -> None:
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        issuer.down = True
        async with (
            sidecar_for(jwks_config(issuer.url, min_refresh=0.02)) as sidecar,
            aiohttp.ClientSession() as http,
        ):

            async def ready() -> bool:
                async with http.get(sidecar.admin_url + "/readyz") as response:
                    return response.status == 200

            async with http.get(sidecar.admin_url + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["checks"]["jwks"] == "no keys loaded"
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 401
            issuer.down = False
            await eventually(ready)
            assert await status_of(sidecar.url, mint(KEY_1, "RS256", kid="k1")) == 200


SECRET_ONLY = {"secret": "k" * 32, "algorithms": ["HS256"]}


@pytest.mark.parametrize(
    ("config", "used"),
    [
        ({}, True),
        ({"mode": "none"}, False),  # no token is verified
        (SECRET_ONLY, False),  # every token meets the secret
        ({"secret": "k" * 32, "algorithms": ["HS256", "RS256"]}, True),  # RS256 tokens meet it
        ({"routes": [{"path": "/", "handler": "anthropic", "auth": {"mode": "none"}}]}, False),
        ({"routes": [{"path": "/api/", "handler": "prompt"},
                     {"path": "/", "handler": "anthropic", "auth": {"mode": "none"}}]}, True),
    ],
    ids=["rs", "mode_none", "secret_only", "secret_and_rs", "route_without_auth",
         "one_route_with_auth"],
)  # fmt: skip
async def test_readyz_waits_only_for_a_key_set_some_route_verifies_tokens_with(
    sidecar_for: SidecarFactory, config: dict[str, Any], used: bool
) -> None:
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        issuer.down = True
        routes = config.pop("routes", None)
        settings = jwks_config(issuer.url, min_refresh=3600)
        if "mode" in config:
            settings["auth"]["mode"] = config.pop("mode")
        settings["auth"]["jwt"].update(config)
        if routes is not None:
            settings["routes"] = routes
        async with (
            sidecar_for(settings) as sidecar,
            aiohttp.ClientSession() as http,
            http.get(sidecar.admin_url + "/readyz") as response,
        ):
            status, body = response.status, await response.json()
    assert (status, body.get("checks")) == (
        (503, {"jwks": "no keys loaded"}) if used else (200, None)
    )
    assert issuer.fetches == (1 if used else 0)  # a key set no token meets is not fetched


async def test_key_pinned_algorithm_and_key_type_are_enforced(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    keys = [public_jwk(KEY_1, "rsa", alg="RS256"), public_jwk(EC_KEY, "ec", alg="ES256"),
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]  # fmt: skip
    async with running_jwks(keys) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=3600)) as sidecar:
            good_rs = await status_of(sidecar.url, mint(KEY_1, "RS256", kid="rsa"))
            good_es = await status_of(sidecar.url, mint(EC_KEY, "ES256", kid="ec"))
            # An ES256 token naming the RSA key, and an RS256 token naming the EC key.
            cross_1 = await status_of(sidecar.url, mint(EC_KEY, "ES256", kid="rsa"))
            cross_2 = await status_of(sidecar.url, mint(KEY_1, "RS256", kid="ec"))
            no_kid = await status_of(sidecar.url, mint(KEY_1, "RS256"))  # ambiguous: 2 keys
    assert (good_rs, good_es, cross_1, cross_2, no_kid) == (200, 200, 401, 401, 401)
    assert fake.state.counters["requests"] == 2


async def test_a_token_naming_a_member_twice_is_refused_whatever_key_set_signs_it(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    keys = [public_jwk(KEY_1, "rsa", alg="RS256"), public_jwk(EC_KEY, "ec", alg="ES256")]
    async with running_jwks(keys) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=3600)) as sidecar:
            statuses = [
                await status_of(sidecar.url, sign_text(header, claims, key, alg))
                for key, alg, kid in ((KEY_1, "RS256", "rsa"), (EC_KEY, "ES256", "ec"))
                for header, claims in (
                    (f'{{"alg": "{alg}", "kid": "{kid}"}}', claims_text()),
                    (f'{{"alg": "{alg}", "kid": "{kid}"}}', claims_text('"sub": "root"')),
                    (f'{{"alg": "{alg}", "kid": "other", "kid": "{kid}"}}', claims_text()),
                )
            ]
    assert statuses == [200, 401, 401, 200, 401, 401]
    assert fake.state.counters["requests"] == 2


@pytest.mark.parametrize(
    "document",
    [None, [], "keys", {"keys": "x"}, {"keys": [1, "a", None]}, {"keys": [{"kty": "RSA"}]},
     {"keys": [{"kty": "EC", "crv": "P-256", "x": "!!", "y": "??"}]},
     {"keys": [{"kty": "RSA", "kid": 5, "n": "AQAB", "e": "AQAB"}]}],
)  # fmt: skip
def test_malformed_key_sets_yield_no_keys(document: Any) -> None:
    assert read_jwks(document)[0] == {}


def test_usable_keys_survive_next_to_broken_ones() -> None:
    keys, _ = read_jwks({"keys": [{"kty": "RSA", "kid": "bad"}, public_jwk(KEY_1, "good"),
                                  {**public_jwk(KEY_2, "enc"), "use": "enc"}]})  # fmt: skip
    assert list(keys) == ["good"]


def no_kid(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name != "kid"}


async def test_a_kid_shared_by_two_keys_verifies_no_token_until_the_issuer_fixes_it(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two keys under one `kid` (or two without one) are ambiguous: no token naming it is
    verified, whichever key signed it (the last one listed used to win, silently); the other
    keys still work, a warning says so, and one key per kid again is picked up."""
    caplog.set_level(logging.WARNING, logger="sidecar.auth.jwks")
    keys = [public_jwk(KEY_1, "dup"), public_jwk(KEY_2, "dup"), public_jwk(EC_KEY, "ec"),
            no_kid(public_jwk(KEY_1, "x")), no_kid(public_jwk(KEY_2, "x"))]  # fmt: skip
    async with running_jwks(keys) as issuer:
        async with sidecar_for(jwks_config(issuer.url, min_refresh=0.01)) as sidecar:
            first = await status_of(sidecar.url, mint(KEY_1, "RS256", kid="dup"))
            last = await status_of(sidecar.url, mint(KEY_2, "RS256", kid="dup"))
            kidless = await status_of(sidecar.url, mint(KEY_2, "RS256"))
            other = await status_of(sidecar.url, mint(EC_KEY, "ES256", kid="ec"))
            assert (first, last, kidless, other) == (401, 401, 401, 200)
            issuer.keys = [public_jwk(KEY_2, "dup"), public_jwk(EC_KEY, "ec")]
            fixed = mint(KEY_2, "RS256", kid="dup")

            async def verified() -> bool:  # the unknown kid refetches the corrected set
                return await status_of(sidecar.url, fixed) == 200

            await eventually(verified)
    assert fake.state.counters["requests"] == 2
    warned = [r for r in caplog.records if "sharing a kid" in r.getMessage()]
    assert warned
    assert {getattr(r, "ambiguous_keys", None) for r in warned} == {4}


def test_a_kid_shared_by_two_keys_is_left_out_of_the_set() -> None:
    keys, _ = read_jwks({"keys": [public_jwk(KEY_1, "a"), public_jwk(KEY_2, "a"),
                                  public_jwk(KEY_1, "b"), {**public_jwk(KEY_2, "b"), "use": "enc"},
                                  public_jwk(EC_KEY, "a")]})  # fmt: skip
    assert list(keys) == ["b"]  # "a" three times; "b" once as a signing key


class _NamesOnLoopback(AbstractResolver):
    """Every host name resolves to 127.0.0.1: `http://issuer.test` is plain HTTP to a host
    that is no loopback name, served by a local test server."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
        ]  # fmt: skip

    async def close(self) -> None:
        return None


async def test_a_redirect_to_plain_http_off_the_loopback_is_not_followed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`jwks_url` must be https (http only on a loopback host); a redirect must not lead
    the fetch where the URL could not point: that key set is anyone's on the path."""
    async with running_jwks([public_jwk(KEY_1, "k1")]) as issuer:
        target = {"location": f"http://issuer.test:{URL(issuer.url).port}/jwks.json"}

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(target["location"])

        app = web.Application()
        app.router.add_get("/jwks", redirect)
        connector = aiohttp.TCPConnector(resolver=_NamesOnLoopback())
        async with serving(app) as url, aiohttp.ClientSession(connector=connector) as session:
            cache = JwksCache(url + "/jwks", session, refresh_seconds=300, min_refresh_seconds=0)
            assert not await cache.refresh()
            assert not cache.ready
            assert issuer.fetches == 0  # the plain-HTTP hop was never requested
            refused = [r for r in caplog.records if r.name == "sidecar.auth.jwks"]
            assert [getattr(r, "error", None) for r in refused] == ["RedirectRefused"]
            target["location"] = issuer.url  # a loopback issuer: followed as the URL would be
            assert await cache.refresh()
            assert cache.ready
            assert await cache.key_for("k1") is not None
            assert issuer.fetches == 1
