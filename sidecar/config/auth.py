"""The `auth` section: API keys and JWTs (keys read and matched to their algorithms at load)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from sidecar.config.fields import HttpUrl, Seconds, Section, repeated_values
from sidecar.identity import is_name

# The shortest secret each HS algorithm takes: its hash's output size (RFC 7518 3.2).
_HS_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_HS = set(_HS_MIN_SECRET_BYTES)
_ASYMMETRIC = {
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K", "EdDSA",
}  # fmt: skip


def _key_algorithms(key: object) -> tuple[str, ...]:
    """Which JWT algorithm prefixes a public key can verify."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return ("RS", "PS")
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ES",)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def is_loopback(host: str) -> bool:
    """`localhost` (any case, a trailing dot too) or a loopback address (127.0.0.0/8, ::1)."""
    name = host.rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_public_key(path: Path, algorithms: list[str], jwks_url: str | None) -> None:
    """A bad key file is a config error, not a crash at start."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError:
        raise ValueError(f"public_key_file not readable: {path}") from None
    except (ValueError, TypeError):
        raise ValueError(f"public_key_file is not a PEM public key: {path}") from None
    usable = any(alg.startswith(_key_algorithms(key)) for alg in algorithms)
    if jwks_url is None and not usable:
        raise ValueError(f"public_key_file holds a key none of the algorithms {algorithms} fit")


class JWTConfig(Section):
    secret: SecretStr | None = None
    public_key_file: Path | None = None
    jwks_url: HttpUrl | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"], min_length=1)
    issuer: str | None = None
    audience: str | list[str] | None = None
    user_claim: str = Field("sub", min_length=1)
    tenant_claim: str | None = None
    query_param: str | None = None
    leeway_seconds: float = Field(30, ge=0, le=300)
    jwks_refresh_seconds: Seconds = 300
    jwks_min_refresh_seconds: Seconds = 10

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in _HS | _ASYMMETRIC]
        if unknown:
            raise ValueError(f"unsupported algorithms {unknown} (alg 'none' is never allowed)")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_over_tls(cls, value: str | None) -> str | None:
        # The key set says which tokens are genuine: fetched over plain HTTP, anyone on the
        # path can swap in a key of their own and mint tokens for any user and tenant.
        url = URL(value) if value is not None else None  # parses: `HttpUrl` checked it
        if url is not None and url.scheme != "https" and not is_loopback(url.host or ""):
            raise ValueError(
                "must be an https:// URL: a key set fetched over plain HTTP lets anyone on the"
                " path mint tokens (http:// only for a loopback host: localhost, 127.0.0.0/8,"
                " ::1)"
            )
        return value

    @field_validator("audience")
    @classmethod
    def _some_audience(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not value:
            # No token's `aud` can be in an empty list: every token would be refused.
            raise ValueError("an empty list accepts no token: list the audiences, or unset it")
        return value

    @model_validator(mode="after")
    def _keys_match_algorithms(self) -> JWTConfig:
        if self.secret is None and self.public_key_file is None and self.jwks_url is None:
            raise ValueError("set secret, public_key_file or jwks_url")
        wants_hs = any(alg in _HS for alg in self.algorithms)
        wants_asym = any(alg in _ASYMMETRIC for alg in self.algorithms)
        if wants_hs and self.secret is None:
            raise ValueError("HS* algorithms need a secret")
        if wants_asym and self.public_key_file is None and self.jwks_url is None:
            raise ValueError("RS*/PS*/ES*/EdDSA algorithms need public_key_file or jwks_url")
        if self.secret is not None and not wants_hs:
            raise ValueError("secret is set but no HS* algorithm is listed")
        if self.secret is not None:
            # The secret verifies every listed HS algorithm: long enough for the longest.
            alg = max(self.hs_algorithms, key=_HS_MIN_SECRET_BYTES.__getitem__)
            needed = _HS_MIN_SECRET_BYTES[alg]
            if len(self.secret.get_secret_value().encode()) < needed:
                raise ValueError(
                    f"secret must be at least {needed} bytes with {alg} listed (RFC 7518 3.2:"
                    " no shorter than the hash; HS256 32, HS384 48, HS512 64)"
                )
        if self.public_key_file is not None:
            _check_public_key(self.public_key_file, self.asymmetric_algorithms, self.jwks_url)
        return self

    def realm(self) -> str:
        """Who vouches for the names this block's tokens carry: the issuer with its key
        source and the claims read as user and tenant. Two blocks with another of these
        name users and tenants of two namespaces (two routes, two deployments sharing a
        Redis, a reload). A digest that holds no secret: the secret enters it as a keyed
        hash (HMAC keyed by the secret), a key file as the SHA-256 of the key it holds (not
        its path: another deployment's file there is another key), a key set by its URL.
        """
        secret = None
        if self.secret is not None:
            key = self.secret.get_secret_value().encode()
            secret = hmac.new(key, b"claude-sidecar jwt realm", hashlib.sha256).hexdigest()
        key_file = None
        if self.public_key_file is not None:  # read and checked at load
            key_file = hashlib.sha256(self.public_key_file.read_bytes()).hexdigest()
        parts = [
            self.issuer,
            secret,
            key_file,
            str(self.jwks_url) if self.jwks_url is not None else None,
            self.user_claim,
            self.tenant_claim,
        ]
        return "jwt:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    @property
    def hs_algorithms(self) -> list[str]:
        return [alg for alg in self.algorithms if alg in _HS]

    @property
    def asymmetric_algorithms(self) -> list[str]:
        return [alg for alg in self.algorithms if alg in _ASYMMETRIC]


class ApiKeyConfig(Section):
    name: str = Field(min_length=1)
    sha256: str
    user: str | None = None
    tenant: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be the 64-character hex SHA-256 of the key")
        return value.lower()

    @field_validator("name", "user", "tenant")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None and not is_name(value):
            raise ValueError(
                "must not contain control characters or line separators (it is sent in a header)"
            )
        return value


class AuthConfig(Section):
    mode: Literal["required", "optional", "none"] = "required"
    jwt: JWTConfig | None = None
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    allowed_tenants: list[str] | None = None
    allowed_models: list[str] | None = None

    @model_validator(mode="after")
    def _has_credentials(self) -> AuthConfig:
        if self.mode != "none" and self.jwt is None and not self.api_keys:
            raise ValueError(f"mode {self.mode!r} needs jwt or api_keys")
        if self.mode == "none" and self.allowed_tenants is not None:
            # Nobody is identified, so nobody has a tenant to check: the list would look
            # like a restriction and let everyone in.
            raise ValueError(
                "allowed_tenants restricts nothing with mode 'none' (no caller is identified):"
                " set a mode and credentials, or allowed_tenants: null"
            )
        repeated = repeated_values(key.name for key in self.api_keys)
        if repeated:
            raise ValueError(f"api_keys names must be unique: {repeated} given more than once")
        # One key under two names, in this list or across routes: the loader's check of
        # every list at once (`sidecar.loader._api_key_problems`).
        return self

    @property
    def jwks_in_use(self) -> str | None:
        """The `jwt.jwks_url` this policy verifies tokens with, or None: with mode `none`
        no token is verified, and with no RS*/PS*/ES*/EdDSA algorithm listed every token
        meets the secret, so a key set named there is never consulted (nor fetched, nor
        waited for by `/readyz`)."""
        jwt = self.jwt
        if self.mode == "none" or jwt is None or not jwt.asymmetric_algorithms:
            return None
        return jwt.jwks_url
