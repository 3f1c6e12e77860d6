"""Keys, tokens and a rotatable JWKS server for the policy tests (all generated at test time)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.apps import serving

SECRET = "s" * 40  # HS secret: at least 32 bytes, as config validation demands
ISSUER = "https://issuer.test"
AUDIENCE = "claude-sidecar"
API_KEY = "sk-sidecar-client-key-1"
API_KEY_SHA256 = hashlib.sha256(API_KEY.encode()).hexdigest()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(alg: str) -> PrivateKey:
    """A fresh private key for an asymmetric JWT algorithm."""
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_pem(key: PrivateKey) -> bytes:
    """The public half of `key` as PEM."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_key(key: PrivateKey, directory: Path) -> Path:
    """The public half of `key` as a PEM file in `directory`."""
    path = directory / "public.pem"
    path.write_bytes(public_pem(key))
    return path


def public_jwk(key: PrivateKey, kid: str, alg: str | None = None) -> dict[str, Any]:
    """The public half of `key` as a JWK with `kid` (and `alg` when given)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    data = {**data, "kid": kid, "use": "sig"}
    if alg is not None:
        data["alg"] = alg
    return data


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the test issuer and audience; `None` values are removed."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice", "org": "acme", "iss": ISSUER, "aud": AUDIENCE,
        "iat": now, "exp": now + 300,
    }  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Any = SECRET, alg: str = "HS256", kid: str | None = None, **overrides: Any) -> str:
    """A signed token with `claims(**overrides)`."""
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], secret: bytes | None, **overrides: Any) -> str:
    """A token PyJWT refuses to make: `alg: none`, or HS256 keyed with a public key's PEM."""
    signing_input = (
        _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims(**overrides)).encode())
    )
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def sign_text(header: str, claims_text: str, key: Any = SECRET, alg: str = "HS256") -> str:
    """A token whose header and claims are `header` and `claims_text` as written (so a
    member may be named twice), signed with `key` under `alg`."""
    algorithm = jwt.PyJWS().get_algorithm_by_name(alg)
    signing_input = _b64(header.encode()) + "." + _b64(claims_text.encode())
    signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(key))
    return signing_input + "." + _b64(signature)


def claims_text(extra: str = "", **overrides: Any) -> str:
    """`claims(**overrides)` as JSON text, with the members `extra` (JSON text) appended:
    a member named twice stays twice."""
    text = json.dumps(claims(**overrides))
    return f"{text[:-1]}, {extra}}}" if extra else text


@dataclass
class JwksServer:
    """A local issuer whose key set can be rotated, taken down, and counts its fetches."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    down: bool = False
    url: str = ""
    in_pieces: bool = False  # the key set sent in two writes, the second a moment later
    held: asyncio.Event | None = None  # while set to an Event: answers wait for it

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """The key set (or 503 while down), counting the fetch."""
        self.fetches += 1
        if self.held is not None:
            await self.held.wait()
        if self.down:
            return web.Response(status=503, text="down")
        if not self.in_pieces:
            return web.json_response({"keys": self.keys})
        body = json.dumps({"keys": self.keys}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[:64])
        await asyncio.sleep(0.05)  # the client has read the first piece by now
        await response.write(body[64:])
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def running_jwks(keys: list[dict[str, Any]] | None = None) -> AsyncIterator[JwksServer]:
    """A local JWKS issuer on a free port serving `keys`."""
    server = JwksServer(keys=list(keys or []))
    app = web.Application()
    app.router.add_get("/jwks.json", server.serve)
    async with serving(app) as url:
        server.url = url + "/jwks.json"
        yield server
