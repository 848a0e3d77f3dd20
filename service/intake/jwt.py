"""WEBHOOK_AUTH=jwt: bearer JWTs from an external identity provider, checked against its JWKS.

Paxos's OAuth option may point at an identity provider (Auth0, Keycloak, Okta, Cognito); the
webhooks then carry that provider's JWTs. We verify them with the public keys the provider
publishes at `WEBHOOK_JWT_JWKS_URL`, and check issuer, audience and expiry. Any client of the
provider that can get a token for the audience would pass those checks, so the token's client
can be pinned too: `sub` to `WEBHOOK_JWT_SUBJECTS`, `azp` (or RFC 9068's `client_id`) to
`WEBHOOK_JWT_AZP`.

Only asymmetric algorithms are accepted and the algorithm must fit the key it names, so neither
`alg: none` nor an HS256 token "signed" with the public key can pass. The key set is cached and
refetched when a token names an unknown `kid` (key rotation), at most once per
`refetch_interval_s` and by one task at a time, so a stream of bad tokens cannot make us hammer
the provider. The `jku`/`x5u` headers are ignored: keys come only from the configured URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from service.web.auth import bearer_token, matches_any
from service.web.problems import Problem, Unauthenticated

log = structlog.get_logger(__name__)

# The accepted algorithms and the JWK key type (`kty`) each must be verified with.
ALGORITHM_KEY_TYPES: Mapping[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
# ECDSA algorithms name their curve (RFC 7518 §3.4); the key must be on it.
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

JWKS_TIMEOUT_S = 5.0
# A JWKS is a few kilobytes; a response far larger is not one, and is not read in full.
JWKS_MAX_BYTES = 1 << 20
REFETCH_INTERVAL_S = 30.0
# Keys are refreshed this often even without an unknown kid, so a key the provider withdrew
# stops being accepted.
MAX_AGE_S = 600.0
CLOCK_LEEWAY_S = 30


class AuthUnavailable(Problem):
    """503: the token cannot be checked now (no keys); Paxos retries a 503."""

    status_code = 503
    type_slug = "auth-unavailable"

    def __init__(self) -> None:
        super().__init__("cannot fetch the JWKS to verify the token", headers={"Retry-After": "5"})


class _JwksError(Exception):
    """The JWKS could not be fetched or holds no usable signing key."""


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    kty: str
    alg: str | None  # the JWK's own `alg`, when it declares one
    jwk: jwt.PyJWK

    def fits(self, alg: str) -> bool:
        """True if a token with algorithm `alg` may be verified with this key."""
        if ALGORITHM_KEY_TYPES.get(alg) != self.kty:
            return False
        if self.alg is not None and self.alg != alg:
            return False
        if self.kty == "EC":
            key = self.jwk.key
            return isinstance(key, EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
        return True


def _signing_keys(document: Any) -> tuple[_Key, ...]:
    """The usable public signing keys of a JWKS document; others are skipped, as PyJWKSet does.

    Each key is parsed alone (not through `PyJWKSet`) to keep whether the JWK declared its own
    `alg`: PyJWT fills in a guess (RS256 for any RSA key) that would refuse PS256 tokens.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _JwksError("JWKS is not an object with a keys list")
    keys: list[_Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kty = entry.get("kty")
        alg = entry.get("alg")
        kid = entry.get("kid")
        # A symmetric key has no place in a published key set: whoever reads it could sign.
        if kty not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
            continue
        if (alg is not None and alg not in ALGORITHM_KEY_TYPES) or (
            kid is not None and not isinstance(kid, str)
        ):
            continue
        try:
            keys.append(_Key(kid=kid, kty=kty, alg=alg, jwk=jwt.PyJWK(entry)))
        except jwt.PyJWTError:
            continue
    if not keys:
        raise _JwksError("JWKS holds no usable signing key")
    return tuple(keys)


def _invalid(detail: str) -> Unauthenticated:
    # RFC 6750 §3: a rejected token is `error="invalid_token"`; the token itself is never echoed.
    return Unauthenticated(detail, scheme='Bearer error="invalid_token"')


class JwtAuthenticator:
    """Bearer JWTs of an external identity provider, verified against its JWKS."""

    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        client: httpx.AsyncClient,
        refetch_interval_s: float = REFETCH_INTERVAL_S,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
        subjects: Iterable[str] = (),
        authorized_parties: Iterable[str] = (),
    ) -> None:
        self._jwks_url = jwks_url
        # Empty: not pinned. Otherwise the token's `sub` / `azp` must be one of these.
        self._subjects = tuple(subjects)
        self._authorized_parties = tuple(authorized_parties)
        self._issuer = issuer
        self._audience = audience
        self._client = client
        self._refetch_interval_s = refetch_interval_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._keys: tuple[_Key, ...] | None = None
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        # One fetch at a time: concurrent requests with unknown kids wait for it and use its
        # result instead of each fetching.
        self._lock = asyncio.Lock()

    async def authenticate(self, headers: Mapping[str, str]) -> None:
        token = bearer_token(headers)
        if token is None:
            raise Unauthenticated("missing bearer token", scheme="Bearer")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("invalid token") from None
        alg = header.get("alg")
        # The allow-list comes first: `none` and HMAC algorithms never reach a key.
        if not isinstance(alg, str) or alg not in ALGORITHM_KEY_TYPES:
            raise _invalid("token algorithm not accepted")
        kid = header.get("kid")
        key = await self._key_for(kid, alg)
        if not key.fits(alg):
            raise _invalid("token algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=CLOCK_LEEWAY_S,
                options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("token expired") from None
        except jwt.InvalidIssuerError:
            raise _invalid("token issuer not accepted") from None
        except jwt.InvalidAudienceError:
            raise _invalid("token audience not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"token lacks the {exc.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("token not yet valid") from None
        except jwt.PyJWTError:
            raise _invalid("invalid token") from None
        self._check_client(claims)

    def _check_client(self, claims: Mapping[str, Any]) -> None:
        """Refuse a valid token of a client that is not pinned (when pinning is configured)."""
        if self._subjects:
            subject = claims.get("sub")
            if subject is None:
                raise _invalid("token lacks the sub claim")
            if not isinstance(subject, str) or not matches_any(subject, self._subjects):
                raise _invalid("token subject not accepted")
        if self._authorized_parties:
            # OpenID Connect names the client in `azp`; RFC 9068 access tokens in `client_id`.
            party = claims.get("azp", claims.get("client_id"))
            if party is None:
                raise _invalid("token lacks the azp (or client_id) claim")
            if not isinstance(party, str) or not matches_any(party, self._authorized_parties):
                raise _invalid("token client (azp) not accepted")

    async def _key_for(self, kid: str | None, alg: str) -> _Key:
        keys = self._keys
        if keys is None or self._clock() - self._loaded_at >= self._max_age_s:
            keys = await self._refresh(keys)
        if kid is None:
            # No kid: usable only when exactly one key could have signed it.
            fitting = [k for k in keys if k.fits(alg)]
            if len(fitting) != 1:
                raise _invalid("token names no key (kid) and the JWKS has no single fitting key")
            return fitting[0]
        key = _by_kid(keys, kid)
        if key is None:
            # Perhaps the provider rotated in a new key: look again (rate-limited).
            key = _by_kid(await self._refresh(keys), kid)
        if key is None:
            raise _invalid("token signed by an unknown key")
        return key

    async def _refresh(self, seen: tuple[_Key, ...] | None) -> tuple[_Key, ...]:
        """The key set after at most one fetch; `seen` is the set the caller found wanting.

        Raises `AuthUnavailable` only when there are no keys at all; otherwise a failed or
        rate-limited fetch leaves the cached keys in use.
        """
        async with self._lock:
            if self._keys is not None and self._keys is not seen:
                return self._keys  # another task fetched while we waited
            now = self._clock()
            recent = (
                self._attempted_at is not None
                and now - self._attempted_at < self._refetch_interval_s
            )
            if not recent:
                self._attempted_at = now
                try:
                    self._keys = await self._fetch()
                    self._loaded_at = now
                except _JwksError as exc:
                    log.warning("jwks fetch failed", url=self._jwks_url, reason=str(exc))
            if self._keys is None:
                raise AuthUnavailable()
            return self._keys

    async def _fetch(self) -> tuple[_Key, ...]:
        body = bytearray()
        try:
            async with self._client.stream(
                "GET",
                self._jwks_url,
                headers={"Accept": "application/json"},
                timeout=JWKS_TIMEOUT_S,
            ) as response:
                if response.status_code != 200:
                    raise _JwksError(f"JWKS answered HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise _JwksError(f"JWKS is larger than {JWKS_MAX_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise _JwksError(f"{type(exc).__name__}: {exc}") from None
        try:
            document = msgspec.json.decode(bytes(body))
        except msgspec.DecodeError:
            raise _JwksError("JWKS is not valid JSON") from None
        return _signing_keys(document)


def _by_kid(keys: tuple[_Key, ...], kid: str) -> _Key | None:
    for key in keys:
        if key.kid == kid:
            return key
    return None
