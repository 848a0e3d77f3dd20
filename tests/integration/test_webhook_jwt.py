"""WEBHOOK_AUTH=jwt: bearer JWTs of an outside identity provider, verified against its JWKS.

The identity provider is an outside system, so its JWKS endpoint is faked with
`httpx.MockTransport` on the app's shared HTTP client; our code runs for real. The
authenticator's key set on its own is in tests/unit/test_webhook_jwt.py.
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
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings, WebhookAuth
from service.store.tables import events
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.jwt import (
    AUDIENCE,
    EC384_KEY,
    EC_KEY,
    ED_KEY,
    ISSUER,
    JWKS_URL,
    ROTATED_RSA_KEY,
    RSA_KEY,
    IdentityProvider,
    Key,
    claims,
    mint,
    public_jwk,
)

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(secret: bytes, kid: str) -> str:
    """An HS256 token built without PyJWT, which refuses to use a PEM key as HMAC secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


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
