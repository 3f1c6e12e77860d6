"""Authentication: JWT (HS / RS / PS / ES / EdDSA, key file or JWKS) and hashed API keys.

Fail closed: any credential that is presented and does not verify is a 401, whatever
the mode. Messages name the reason class only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.utils import base64url_decode

from sidecar.config import AuthConfig, JWTConfig
from sidecar.errors import Rejection, reject
from sidecar.header_lists import RepeatedField, sole_value
from sidecar.identity import Identity, is_name
from sidecar.methods import reads
from sidecar.policy.jwks import JwksCache

_CHALLENGE = 'Bearer realm="claude-sidecar"'
_NO_CLAIMS: Final[Mapping[str, Any]] = MappingProxyType({})  # API keys carry no claims
_INVALID = 'Bearer realm="claude-sidecar", error="invalid_token"'
_JWT_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "auth_expired", "token expired"),
    (jwt.ImmatureSignatureError, "auth_not_yet_valid", "token not yet valid"),
    (jwt.InvalidIssuerError, "auth_wrong_issuer", "token issuer not accepted"),
    (jwt.InvalidAudienceError, "auth_wrong_audience", "token audience not accepted"),
)


class _RepeatedMember(ValueError):
    """A JSON object of the token names one member twice."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _RepeatedMember
    return found


def has_repeated_members(token: str) -> bool:
    """Whether the token's JOSE header or claims set (or any object nested in them) names a
    member twice; a segment that does not decode is left to PyJWT to refuse.

    RFC 7515 §5.2 and RFC 7519 §4 let a parser take the last copy, as PyJWT's does; a
    parser that takes the first (the app's, reading a forwarded token) would see another
    `sub`, `exp` or `alg` than the one verified. So such a token is refused outright.
    """
    for segment in token.split(".", 2)[:2]:
        try:
            json.loads(base64url_decode(segment), object_pairs_hook=_unique_members)
        except _RepeatedMember:
            return True
        except (ValueError, TypeError, RecursionError):
            return False  # not JSON: PyJWT refuses it as it refuses any garbled token
    return False


def unauthorized(reason: str, message: str, *, missing: bool = False) -> Rejection:
    return reject(
        reason, message, headers={"WWW-Authenticate": _CHALLENGE if missing else _INVALID}
    )


def forbidden(reason: str, message: str) -> Rejection:
    return reject(reason, message)


class JwtVerifier:
    """Verifies tokens for one `auth.jwt` block; key material is loaded once."""

    def __init__(self, config: JWTConfig, jwks: JwksCache | None) -> None:
        self.config = config
        self._jwks = jwks
        self._hs = set(config.hs_algorithms)
        self._secret = config.secret.get_secret_value().encode() if config.secret else None
        self._public: Any = None
        if config.public_key_file is not None:  # validated as a usable PEM key at load
            self._public = load_pem_public_key(config.public_key_file.read_bytes())
        self._options = {"require": ["exp"]}

    async def _key(self, alg: str, kid: object) -> Any:
        if alg in self._hs:
            return self._secret  # HS tokens only ever meet the secret: no RSA-as-HMAC confusion
        if not isinstance(kid, str | None):
            return None
        if self._public is not None and (self._jwks is None or kid is None):
            return self._public
        if self._jwks is not None:
            found = await self._jwks.key_for(kid)
            if found is not None:
                # A JWK that pins its algorithm is only good for that algorithm.
                return found.key if found.alg in (None, alg) else None
        return self._public

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises Rejection(401) for anything wrong with it."""
        if has_repeated_members(token):
            raise unauthorized("auth_invalid_token", "invalid token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise unauthorized("auth_invalid_token", "invalid token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise unauthorized("auth_invalid_token", "invalid token")
        key = await self._key(alg, header.get("kid"))
        if key is None:
            raise unauthorized("auth_unknown_key", "invalid token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            for kind, reason, message in _JWT_ERRORS:
                if isinstance(exc, kind):
                    raise unauthorized(reason, message) from None
            raise unauthorized("auth_invalid_token", "invalid token") from None
        except (TypeError, ValueError):
            # e.g. an ES256 token checked against an RSA key: PyJWT raises TypeError.
            raise unauthorized("auth_invalid_token", "invalid token") from None
        return claims


class Authenticator:
    """Authentication for one `auth` policy."""

    def __init__(
        self,
        config: AuthConfig,
        jwt_verifier: JwtVerifier | None,
        realm: str | None = None,
        source: str | None = None,
        tenants: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._jwt = jwt_verifier
        self._realm = realm  # the tokens' realm (`Identity.realm`): None for the top level's
        # Who vouches for the tokens' callers (`Identity.source`): their block's realm,
        # the top level's too (another deployment's tokens name other callers).
        self._source = source
        # Who vouches for the keys' tenants: the service's (`tenant_sources`); for a policy
        # it was not built with, its own keys.
        tenants = {**tenant_sources([config], None), **(tenants or {})}
        # Lookup by hash: the plaintext key is hashed on arrival and never stored (so the
        # hash is taken per request: remembering it per key would mean keeping the key).
        # By raw digest: a hex string per request would only be compared. Each key's
        # identity is built once: it is immutable, and a stream holds it to its end.
        self._keys = {
            bytes.fromhex(key.sha256): Identity(
                method="api_key",
                user=key.user or key.name,
                tenant=key.tenant,
                api_key_name=key.name,
                claims=_NO_CLAIMS,
                source=_digest("api_key", key.sha256),
                tenant_source=tenants.get(key.tenant) if key.tenant else None,
            )
            for key in config.api_keys
        }
        # Callers nobody verified, as admitted by this policy (`sidecar.scope`): its mode,
        # the credentials it would have verified (a JWT block by its realm, keys by their
        # configured hashes: no secret) and its tenant restriction.
        admitted = [
            config.mode,
            config.jwt.realm() if config.jwt is not None else None,
            sorted(key.sha256 for key in config.api_keys),
            config.allowed_tenants,
        ]
        self._anonymous = Identity(
            method="anonymous", source=_digest("anonymous", json.dumps(admitted))
        )

    def _credential(
        self, headers: Mapping[str, str], query: Mapping[str, str], method: str
    ) -> tuple[str, bool] | None:
        """The credential sent, and whether it came in the query string (`auth.jwt.
        query_param`, for an `EventSource`): there only a JWT is taken, short-lived by
        nature; a long-lived API key in a URL would end up in histories and logs.

        A credential field given twice with different values is refused: the sidecar
        would check one copy, and an app (`app.forward_credentials`) could read the other.
        """
        try:
            authorization = sole_value(headers, "Authorization") or ""
            api_key = sole_value(headers, "x-api-key")
            parts = authorization.split(None, 1)  # `Bearer` and its token, however spaced
            if len(parts) == 2 and parts[0].lower() == "bearer":
                return parts[1].strip(), False
            if api_key:
                return api_key.strip(), False
            if parts:
                # Sent, but not a credential the sidecar reads (`Basic`, a bare token):
                # never taken for no credential, which `optional` would let in as anonymous.
                raise unauthorized(
                    "auth_invalid_key",
                    "unsupported Authorization: send Bearer <token> or x-api-key",
                )
            jwt_config = self.config.jwt
            if reads(method) and jwt_config is not None and jwt_config.query_param:
                token = sole_value(query, jwt_config.query_param)
                return (token, True) if token else None
        except RepeatedField as repeated:
            raise unauthorized(
                "auth_invalid_key",
                f"{repeated.name} was sent more than once with different values: send one"
                " credential",
            ) from None
        return None

    def identify(
        self, headers: Mapping[str, str], query: Mapping[str, str], method: str
    ) -> Identity | Awaitable[Identity]:
        """The caller's identity, decided here when no I/O is needed (no auth, no
        credential, an API key); for a JWT, an awaitable of it. Raises Rejection 401/403."""
        if self.config.mode == "none":
            return self._anonymous
        found = self._credential(headers, query, method)
        if found is None:
            # A route limited to some tenants admits nobody without one: `optional` lets
            # anonymous callers in only where no tenant restriction is set.
            if self.config.mode == "optional" and self.config.allowed_tenants is None:
                return self._anonymous
            raise unauthorized("auth_missing", "credentials required", missing=True)
        credential, in_query = found
        identity = (
            None
            if in_query
            else self._keys.get(
                hashlib.sha256(credential.encode("utf-8", "surrogatepass")).digest()
            )
        )
        if identity is None:
            if self._jwt is None or credential.count(".") != 2:
                raise unauthorized("auth_invalid_key", "invalid credentials")
            return self._token_identity(self._jwt, credential)
        return self._admitted(identity)

    async def authenticate(
        self, headers: Mapping[str, str], query: Mapping[str, str], method: str
    ) -> Identity:
        found = self.identify(headers, query, method)
        return found if isinstance(found, Identity) else await found

    def _admitted(self, identity: Identity) -> Identity:
        allowed = self.config.allowed_tenants
        if allowed is not None and identity.tenant not in allowed:
            raise forbidden("auth_forbidden_tenant", "tenant not permitted on this route")
        return identity

    async def _token_identity(self, verifier: JwtVerifier, token: str) -> Identity:
        claims = await verifier.verify(token)
        config = verifier.config
        user = _claim_name(claims.get(config.user_claim))
        if user is None or user == "":
            raise unauthorized("auth_invalid_token", "token has no user claim")
        tenant = _claim_name(claims.get(config.tenant_claim)) if config.tenant_claim else None
        if not is_name(user) or (tenant is not None and not is_name(tenant)):
            # A signed token can still carry a name the issuer took from its user as typed;
            # one with a control character or line separator would reach the app's
            # identity headers.
            raise unauthorized("auth_invalid_token", "invalid token")
        identity = Identity(
            method="jwt",
            user=user,
            tenant=tenant,
            claims=claims,
            realm=self._realm,
            source=self._source,
            tenant_source=self._source,
        )
        return self._admitted(identity)


def _digest(kind: str, material: str) -> str:
    """A trust source's name: a digest of what vouches (a key's configured hash, the keys
    of a tenant, a policy's admission settings), holding no secret."""
    return f"{kind}:" + hashlib.sha256(f"{kind}\0{material}".encode()).hexdigest()[:32]


def tenant_sources(policies: Sequence[AuthConfig], primary: str | None) -> dict[str, str]:
    """Who vouches for each tenant the API keys of `policies` name (`Identity.tenant_source`).

    A key's tenant is the top-level issuer's tenant of that name (`primary`, its realm):
    its tokens and the keys naming `acme` are one tenant. Without a top-level `auth.jwt`,
    the keys naming it vouch for it, by their configured hashes: the keys of one tenant
    share it on every route, and another deployment's keys naming a tenant alike are
    another tenant (unless they are the same keys).
    """
    hashes: dict[str, set[str]] = {}
    for policy in policies:
        for key in policy.api_keys:
            if key.tenant:
                hashes.setdefault(key.tenant, set()).add(key.sha256)
    return {
        tenant: primary if primary is not None else _digest("api_keys", ",".join(sorted(found)))
        for tenant, found in hashes.items()
    }


def _claim_name(value: object) -> str | None:
    """A user or tenant claim as a name: strings and integers; anything else names no one."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


class AuthService:
    """Every route's authenticator, sharing one JWKS cache per URL. `primary` is the
    top-level `auth.jwt`: a route's tokens verified otherwise carry their realm."""

    def __init__(
        self,
        policies: Sequence[AuthConfig],
        *,
        primary: JWTConfig | None = None,
        session: aiohttp.ClientSession | None = None,
        jwks: Mapping[str, JwksCache] | None = None,
        on_jwks_refresh: Callable[[str], None] | None = None,
    ) -> None:
        self._policies = list(policies)
        # The top-level `auth.jwt`'s realm: its tokens' names are the unqualified ones.
        self._primary = primary.realm() if primary is not None else None
        self._tenants = tenant_sources(self._policies, self._primary)
        self._on_jwks_refresh = on_jwks_refresh
        self._session = session
        self._owns_session = session is None
        # Key sets by URL: those given are started and closed by their owner (shared
        # across reloads); those made here (for a URL not given) by this service.
        self._jwks: dict[str, JwksCache] = dict(jwks or {})
        # The key sets some route verifies tokens with: what readiness waits for.
        self._jwks_urls = {url for policy in self._policies if (url := policy.jwks_in_use)}
        self._own_jwks: list[JwksCache] = []
        # By id for speed; the policy is kept with it, so a recycled id never matches.
        self._by_id: dict[int, tuple[AuthConfig, Authenticator]] = {}
        self._by_settings: dict[str, Authenticator] = {}

    def _session_for_jwks(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _authenticator(self, policy: AuthConfig) -> Authenticator:
        cached = self._by_id.get(id(policy))
        if cached is not None and cached[0] is policy:
            return cached[1]
        # Routes with equal settings share one authenticator; secrets are part of "equal".
        key = policy.fingerprint()
        found = self._by_settings.get(key)
        if found is None:
            verifier = None
            if policy.jwt is not None:
                jwks = None
                url = policy.jwks_in_use  # a key set no token meets is neither kept nor awaited
                if url is not None:
                    jwks = self._jwks.get(url)
                    if jwks is None:
                        jwks = JwksCache(
                            url,
                            self._session_for_jwks(),
                            refresh_seconds=policy.jwt.jwks_refresh_seconds,
                            min_refresh_seconds=policy.jwt.jwks_min_refresh_seconds,
                            on_refresh=self._on_jwks_refresh,
                        )
                        self._jwks[url] = jwks
                        self._own_jwks.append(jwks)
                verifier = JwtVerifier(policy.jwt, jwks)
            realm = policy.jwt.realm() if policy.jwt is not None else None
            found = self._by_settings[key] = Authenticator(
                policy, verifier, None if realm == self._primary else realm, realm, self._tenants
            )
        if len(self._by_id) >= 1024:  # each reload that keeps this service brings new objects
            self._by_id.clear()
        self._by_id[id(policy)] = (policy, found)
        return found

    async def start(self) -> None:
        """Build every authenticator and load JWKS (a failed first fetch is not fatal)."""
        for policy in self._policies:
            self._authenticator(policy)
        for cache in self._own_jwks:
            await cache.start()

    async def close(self) -> None:
        for cache in self._own_jwks:
            await cache.close()
        if self._owns_session and self._session is not None:
            await self._session.close()

    def ready(self) -> bool:
        """False while some JWKS URL a route verifies tokens with never produced a key."""
        return all(
            (cache := self._jwks.get(url)) is not None and cache.ready for url in self._jwks_urls
        )

    def identify(
        self, policy: AuthConfig, headers: Mapping[str, str], query: Mapping[str, str], method: str
    ) -> Identity | Awaitable[Identity]:
        """The caller's identity under `policy`, or an awaitable of it when a JWT must be
        verified first (the common cases cost no coroutine); raises Rejection 401/403."""
        return self._authenticator(policy).identify(headers, query, method)

    async def authenticate(
        self,
        policy: AuthConfig,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        method: str,
        model: str | None = None,
    ) -> Identity:
        """The caller's identity under `policy`; raises Rejection 401/403."""
        identity = await self._authenticator(policy).authenticate(headers, query, method)
        if (
            model is not None
            and policy.allowed_models is not None
            and model not in policy.allowed_models
        ):
            raise forbidden("auth_forbidden_model", "model not permitted on this route")
        return identity
