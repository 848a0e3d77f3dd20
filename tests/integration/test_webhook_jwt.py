"""WEBHOOK_AUTH=jwt: bearer JWTs of an outside identity provider, verified against its JWKS.

The identity provider is an outside system, so its JWKS endpoint is faked with
`httpx.MockTransport` on the app's shared HTTP client; our code runs for real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.intake.jwt import MAX_AGE_S, REFETCH_INTERVAL_S, AuthUnavailable, JwtAuthenticator
from service.settings import Settings, WebhookAuth
from service.store.tables import events
from service.web.problems import Unauthenticated
from tests.conftest import app_client
from tests.factories import encode, notification

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

ISSUER = "https://idp.example.test/"
AUDIENCE = "https://paxos-event-store.example.test/webhooks"
JWKS_URL = "https://idp.example.test/.well-known/jwks.json"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROTATED_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(key: Key, kid: str, **extra: str) -> dict[str, Any]:
    """The JWK an identity provider would publish for `key`."""
    public = key.public_key()
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims with `overrides`; None removes a claim."""
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "paxos", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Key, alg: str, kid: str | None = "rsa-1", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(secret: bytes, kid: str) -> str:
    """An HS256 token built without PyJWT, which refuses to use a PEM key as HMAC secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


class IdentityProvider:
    """The JWKS endpoint of an outside identity provider, counting the fetches it serves."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.requests = 0
        self.failure: str | None = None  # "down", "500", "not-json", "no-keys"
        self.delay_s = 0.0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        self.requests += 1
        if self.delay_s:
            # Keeps the fetch in flight so concurrent requests overlap with it.
            await asyncio.sleep(self.delay_s)
        if self.failure == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.failure == "500":
            return httpx.Response(500, text="oops")
        if self.failure == "not-json":
            return httpx.Response(200, text="<html>login</html>")
        if self.failure == "no-keys":
            return httpx.Response(200, json={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
        return httpx.Response(200, json={"keys": self.keys})


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp() -> IdentityProvider:
    return IdentityProvider(
        [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1"), public_jwk(ED_KEY, "ed-1")]
    )


@pytest.fixture
async def outbound(idp: IdentityProvider) -> AsyncIterator[httpx.AsyncClient]:
    """The service's shared HTTP client, wired to the fake identity provider."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(idp.handle)) as client:
        yield client


@pytest.fixture
async def jwt_client(
    settings: Settings, engine: AsyncEngine, outbound: httpx.AsyncClient
) -> AsyncIterator[httpx.AsyncClient]:
    jwt_settings = settings.replace(
        webhook_auth=WebhookAuth.JWT,
        webhook_jwt_jwks_url=JWKS_URL,
        webhook_jwt_issuer=ISSUER,
        webhook_jwt_audience=AUDIENCE,
    )
    async for client in app_client(create_app(jwt_settings, engine=engine, http_client=outbound)):
        yield client


def authenticator(outbound: httpx.AsyncClient, clock: Clock) -> JwtAuthenticator:
    return JwtAuthenticator(
        jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE, client=outbound, clock=clock
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def deliver(client: httpx.AsyncClient, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/webhooks/paxos", content=encode(notification()), headers=headers)


async def stored_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events)) or 0)


def assert_refused(response: httpx.Response, token: str | None, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == detail
    assert response.headers["www-authenticate"].startswith("Bearer")
    if token is not None:
        assert token not in response.text


# --- accepted tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (RSA_KEY, "RS256", "rsa-1"),
        (RSA_KEY, "PS256", "rsa-1"),
        (RSA_KEY, "RS512", "rsa-1"),
        (EC_KEY, "ES256", "ec-1"),
        (ED_KEY, "EdDSA", "ed-1"),
    ],
)
async def test_valid_tokens_are_accepted(
    jwt_client: httpx.AsyncClient,
    engine: AsyncEngine,
    idp: IdentityProvider,
    key: Key,
    alg: str,
    kid: str,
) -> None:
    response = await deliver(jwt_client, mint(key, alg, kid))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    assert await stored_events(engine) == 1
    assert idp.requests == 1


async def test_keys_are_cached_between_requests(
    jwt_client: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    for _ in range(5):
        assert (await deliver(jwt_client, mint(RSA_KEY, "RS256"))).status_code == 200
    assert idp.requests == 1


async def test_token_without_kid_is_accepted_when_one_key_fits(
    jwt_client: httpx.AsyncClient,
) -> None:
    # The set holds one RSA key only, so an RS256 token without kid can only mean that one.
    response = await deliver(jwt_client, mint(RSA_KEY, "RS256", kid=None))
    assert response.status_code == 200


# --- refused tokens ---------------------------------------------------------------------------


async def test_missing_token_is_401(jwt_client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    assert_refused(await deliver(jwt_client, None), None, "missing bearer token")
    assert await stored_events(engine) == 0


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"iss": "https://evil.example.test/"}, "token issuer not accepted"),
        ({"aud": "https://someone-else.example.test/"}, "token audience not accepted"),
        ({"iat": int(time.time()) - 900, "exp": int(time.time()) - 120}, "token expired"),
        ({"exp": None}, "token lacks the exp claim"),
        ({"iss": None}, "token lacks the iss claim"),
        ({"aud": None}, "token lacks the aud claim"),
        ({"nbf": int(time.time()) + 600}, "token not yet valid"),
    ],
    ids=["issuer", "audience", "expired", "no-exp", "no-iss", "no-aud", "not-yet-valid"],
)
async def test_wrong_claims_are_401(
    jwt_client: httpx.AsyncClient,
    engine: AsyncEngine,
    overrides: dict[str, Any],
    detail: str,
) -> None:
    token = mint(RSA_KEY, "RS256", **overrides)
    assert_refused(await deliver(jwt_client, token), token, detail)
    assert await stored_events(engine) == 0


async def test_signature_by_another_key_is_401(jwt_client: httpx.AsyncClient) -> None:
    # Names rsa-1 but is signed by a key the provider never published.
    token = mint(ROTATED_RSA_KEY, "RS256", "rsa-1")
    assert_refused(await deliver(jwt_client, token), token, "invalid token")


async def test_garbage_token_is_401(jwt_client: httpx.AsyncClient, idp: IdentityProvider) -> None:
    assert_refused(await deliver(jwt_client, "not-a-jwt"), "not-a-jwt", "invalid token")
    assert idp.requests == 0


async def test_alg_none_is_401(jwt_client: httpx.AsyncClient, idp: IdentityProvider) -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert_refused(await deliver(jwt_client, token), token, "token algorithm not accepted")
    assert idp.requests == 0  # refused before any key is looked up


async def test_hs256_signed_with_the_public_key_is_401(
    jwt_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # The classic algorithm confusion: the attacker knows the public key and uses it as an
    # HMAC secret, hoping the verifier feeds the same key to HMAC.
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, pem.strip()):
        token = hs256_by_hand(secret, "rsa-1")
        assert_refused(await deliver(jwt_client, token), token, "token algorithm not accepted")
    assert await stored_events(engine) == 0


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (EC_KEY, "ES256", "rsa-1"),  # an EC signature naming an RSA key
        (RSA_KEY, "RS256", "ec-1"),  # an RSA signature naming an EC key
        (EC384_KEY, "ES384", "ec-1"),  # ES384 naming a P-256 key
    ],
)
async def test_algorithm_must_fit_the_key_it_names(
    jwt_client: httpx.AsyncClient, key: Key, alg: str, kid: str
) -> None:
    token = mint(key, alg, kid)
    assert_refused(
        await deliver(jwt_client, token), token, "token algorithm does not match its key"
    )


async def test_algorithm_must_match_the_keys_declared_alg(
    jwt_client: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    idp.keys = [public_jwk(RSA_KEY, "rsa-1", alg="PS256")]
    assert (await deliver(jwt_client, mint(RSA_KEY, "PS256"))).status_code == 200
    token = mint(RSA_KEY, "RS256")
    assert_refused(
        await deliver(jwt_client, token), token, "token algorithm does not match its key"
    )


async def test_symmetric_keys_in_the_jwks_are_never_used(
    jwt_client: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    shared = secrets.token_bytes(32)
    idp.keys = [*idp.keys, {"kty": "oct", "kid": "shared", "k": b64url(shared)}]
    token = jwt.encode(claims(), shared, algorithm="HS256", headers={"kid": "shared"})
    assert_refused(await deliver(jwt_client, token), token, "token algorithm not accepted")


# --- the key set: fetch, cache, rotation, rate limit, outages ----------------------------------


async def test_unknown_kids_on_a_cold_cache_cause_one_fetch(
    jwt_client: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    idp.delay_s = 0.05
    tokens = [mint(RSA_KEY, "RS256", kid=f"unknown-{i}") for i in range(20)]
    responses = await asyncio.gather(*(deliver(jwt_client, t) for t in tokens))
    for token, response in zip(tokens, responses, strict=True):
        assert_refused(response, token, "token signed by an unknown key")
    assert idp.requests == 1


async def test_unknown_kids_right_after_a_fetch_cause_no_refetch(
    jwt_client: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    assert (await deliver(jwt_client, mint(RSA_KEY, "RS256"))).status_code == 200
    tokens = [mint(RSA_KEY, "RS256", kid=f"unknown-{i}") for i in range(20)]
    responses = await asyncio.gather(*(deliver(jwt_client, t) for t in tokens))
    assert {r.status_code for r in responses} == {401}
    assert idp.requests == 1


async def test_unknown_kid_refetches_once_and_accepts_a_rotated_in_key(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    await auth.authenticate(bearer(mint(RSA_KEY, "RS256", "rsa-1")))
    assert idp.requests == 1

    idp.keys = [*idp.keys, public_jwk(ROTATED_RSA_KEY, "rsa-2")]
    rotated = mint(ROTATED_RSA_KEY, "RS256", "rsa-2")
    # Within the refetch interval the new kid is not looked up yet: refused, nothing fetched.
    with pytest.raises(Unauthenticated):
        await auth.authenticate(bearer(rotated))
    assert idp.requests == 1

    clock.now += REFETCH_INTERVAL_S + 1
    await auth.authenticate(bearer(rotated))
    assert idp.requests == 2
    await auth.authenticate(bearer(rotated))
    await auth.authenticate(bearer(mint(RSA_KEY, "RS256", "rsa-1")))
    assert idp.requests == 2


async def test_many_unknown_kids_cause_at_most_one_refetch_per_interval(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    await auth.authenticate(bearer(mint(RSA_KEY, "RS256")))
    clock.now += REFETCH_INTERVAL_S + 1
    idp.delay_s = 0.05

    async def attempt(kid: str) -> Unauthenticated | None:
        try:
            await auth.authenticate(bearer(mint(RSA_KEY, "RS256", kid)))
        except Unauthenticated as exc:
            return exc
        return None

    results = await asyncio.gather(*(attempt(f"unknown-{i}") for i in range(50)))
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert idp.requests == 2  # the first fetch, and one refetch for all fifty
    results = await asyncio.gather(*(attempt(f"more-{i}") for i in range(50)))
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert idp.requests == 2


async def test_cached_keys_outlive_a_jwks_outage(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    token = mint(RSA_KEY, "RS256")
    await auth.authenticate(bearer(token))
    idp.failure = "down"
    clock.now += MAX_AGE_S + 1
    # The keys are due for a refresh that fails: the cached ones keep working.
    await auth.authenticate(bearer(token))
    assert idp.requests == 2
    # And the failed attempt is rate-limited too.
    await auth.authenticate(bearer(token))
    assert idp.requests == 2


async def test_a_withdrawn_key_is_refused_after_the_cache_ages(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    token = mint(RSA_KEY, "RS256", "rsa-1")
    await auth.authenticate(bearer(token))
    idp.keys = [public_jwk(ROTATED_RSA_KEY, "rsa-2")]
    clock.now += MAX_AGE_S + 1
    with pytest.raises(Unauthenticated) as refused:
        await auth.authenticate(bearer(token))
    assert refused.value.detail == "token signed by an unknown key"


@pytest.mark.parametrize("failure", ["down", "500", "not-json", "no-keys"])
async def test_jwks_unavailable_without_cached_keys_is_503(
    jwt_client: httpx.AsyncClient, engine: AsyncEngine, idp: IdentityProvider, failure: str
) -> None:
    idp.failure = failure
    token = mint(RSA_KEY, "RS256")
    response = await deliver(jwt_client, token)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "5"
    problem = response.json()
    assert problem["type"].endswith("/auth-unavailable")
    assert problem["detail"] == "cannot fetch the JWKS to verify the token"
    assert token not in response.text
    assert await stored_events(engine) == 0
    # Within the interval, more deliveries do not hammer the provider.
    assert (await deliver(jwt_client, token)).status_code == 503
    assert idp.requests == 1


async def test_jwks_recovery_is_picked_up_after_the_interval(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    clock = Clock()
    auth = authenticator(outbound, clock)
    idp.failure = "down"
    token = mint(RSA_KEY, "RS256")
    with pytest.raises(AuthUnavailable):
        await auth.authenticate(bearer(token))
    idp.failure = None
    clock.now += REFETCH_INTERVAL_S + 1
    await auth.authenticate(bearer(token))
    assert idp.requests == 2


async def test_concurrent_fetches_are_single_flight_even_without_a_rate_limit(
    outbound: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    auth = JwtAuthenticator(
        jwks_url=JWKS_URL, issuer=ISSUER, audience=AUDIENCE, client=outbound, refetch_interval_s=0
    )
    idp.delay_s = 0.05
    token = mint(RSA_KEY, "RS256")
    await asyncio.gather(*(auth.authenticate(bearer(token)) for _ in range(20)))
    assert idp.requests == 1
