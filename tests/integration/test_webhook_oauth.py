"""WEBHOOK_AUTH=oauth: POST /oauth/token (RFC 6749 client credentials) and the tokens it issues."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.db.engine import create_engine
from service.intake.oauth import AUDIENCE, ISSUER, SIGNING_KEY_NAME, SigningKey, signing_key
from service.settings import Settings, WebhookAuth
from service.store.keys import load_service_key
from service.store.tables import events, service_keys
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.tokens import API_KEY

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

CLIENT_ID = "paxos-webhooks"
# Characters that RFC 6749 §2.3.1 form-urlencodes inside Basic, a colon among them.
CLIENT_SECRET = "s3cr3t+with:odd/chars&=%41"
TTL_S = 600
FORM = {"grant_type": "client_credentials"}


@pytest.fixture
def oauth_settings(settings: Settings) -> Settings:
    return settings.replace(
        webhook_auth=WebhookAuth.OAUTH,
        webhook_oauth_client_id=CLIENT_ID,
        webhook_oauth_client_secret=CLIENT_SECRET,
        webhook_oauth_token_ttl_s=TTL_S,
    )


@asynccontextmanager
async def serving(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """One running app instance, as one `serve` process would be."""
    async for client in app_client(create_app(settings, engine=engine)):
        yield client


@pytest.fixture
async def oauth_client(
    oauth_settings: Settings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(oauth_settings, engine) as client:
        yield client


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET, *, encoded: bool = True) -> str:
    if encoded:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


async def token_request(
    client: httpx.AsyncClient,
    data: dict[str, str] | None = None,
    *,
    authorization: str | None = None,
    content: bytes | None = None,
    content_type: str | None = None,
) -> httpx.Response:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await client.post("/oauth/token", data=data, content=content, headers=headers)


async def deliver(client: httpx.AsyncClient, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/webhooks/paxos", content=encode(notification()), headers=headers)


async def stored_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events)) or 0)


def assert_token_answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == TTL_S
    assert CLIENT_SECRET not in response.text
    token: str = body["access_token"]
    return token


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert body["error_description"]
    for secret in (CLIENT_SECRET, quote_plus(CLIENT_SECRET)):
        assert secret not in response.text
    if error == "invalid_client":
        assert response.headers["www-authenticate"] == 'Basic realm="paxos-webhooks"'
    else:
        assert "www-authenticate" not in response.headers
    return body


async def load_signing_key(engine: AsyncEngine) -> SigningKey:
    """The key our tokens are signed with: the database key's, derived for this client."""
    database_key = await load_service_key(engine, SIGNING_KEY_NAME)
    return signing_key(database_key, CLIENT_ID, CLIENT_SECRET)


def mint(key: SigningKey, **overrides: Any) -> str:
    """A token as our endpoint would issue it, with `overrides` (None removes a claim)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": CLIENT_ID, "iat": now, "exp": now + 60}
    claims.update(overrides)
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None},
        key.secret,
        algorithm="HS256",
        headers={"kid": key.kid},
    )


# --- the token endpoint -----------------------------------------------------------------------


async def test_token_by_basic_auth_delivers_a_webhook(
    oauth_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    token = assert_token_answer(await token_request(oauth_client, FORM, authorization=basic()))
    response = await deliver(oauth_client, token)
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    assert await stored_events(engine) == 1


async def test_token_by_form_fields(oauth_client: httpx.AsyncClient) -> None:
    data = {**FORM, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    token = assert_token_answer(await token_request(oauth_client, data))
    assert (await deliver(oauth_client, token)).json()["status"] == "accepted"


async def test_token_by_basic_and_form_at_once_as_paxos_sends_them(
    oauth_client: httpx.AsyncClient,
) -> None:
    data = {**FORM, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    token = assert_token_answer(await token_request(oauth_client, data, authorization=basic()))
    assert (await deliver(oauth_client, token)).json()["status"] == "accepted"


async def test_basic_credentials_that_are_not_form_urlencoded_are_accepted(
    oauth_client: httpx.AsyncClient,
) -> None:
    # Many clients skip RFC 6749's encoding inside Basic; the raw reading must match in full.
    response = await token_request(oauth_client, FORM, authorization=basic(encoded=False))
    assert_token_answer(response)


async def test_scope_is_accepted_and_ignored(oauth_client: httpx.AsyncClient) -> None:
    data = {**FORM, "scope": "webhooks:deliver"}
    assert_token_answer(await token_request(oauth_client, data, authorization=basic()))


async def test_issued_token_carries_the_documented_claims(
    oauth_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = assert_token_answer(await token_request(oauth_client, FORM, authorization=basic()))
    second = assert_token_answer(await token_request(oauth_client, FORM, authorization=basic()))
    key = await load_signing_key(engine)
    claims = jwt.decode(first, key.secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert jwt.get_unverified_header(first) == {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    assert claims["sub"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == TTL_S
    assert abs(claims["iat"] - time.time()) < 60
    other = jwt.decode(second, key.secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["jti"] != other["jti"]


async def test_basic_and_form_that_disagree_are_invalid_client(
    oauth_client: httpx.AsyncClient,
) -> None:
    data = {**FORM, "client_id": CLIENT_ID, "client_secret": "another-secret"}
    response = await token_request(oauth_client, data, authorization=basic())
    body = assert_oauth_error(response, 401, "invalid_client")
    assert "disagree" in body["error_description"]


@pytest.mark.parametrize(
    ("data", "authorization"),
    [
        ({**FORM}, basic(secret=CLIENT_SECRET + "x")),
        ({**FORM}, basic(client_id="someone-else")),
        ({**FORM, "client_id": CLIENT_ID, "client_secret": "wrong"}, None),
        ({**FORM, "client_id": "someone-else", "client_secret": CLIENT_SECRET}, None),
        ({**FORM, "client_id": "wrong", "client_secret": "wrong"}, basic("wrong", "wrong")),
        ({**FORM}, "Basic not*base64"),
        ({**FORM}, "Basic " + base64.b64encode(b"no-colon").decode()),
        ({**FORM}, f"Bearer {CLIENT_SECRET}"),
    ],
    ids=[
        "basic-wrong-secret",
        "basic-unknown-id",
        "form-wrong-secret",
        "form-unknown-id",
        "both-wrong-but-agreeing",
        "basic-not-base64",
        "basic-without-colon",
        "not-basic",
    ],
)
async def test_wrong_credentials_are_invalid_client(
    oauth_client: httpx.AsyncClient, data: dict[str, str], authorization: str | None
) -> None:
    response = await token_request(oauth_client, data, authorization=authorization)
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("grant_type", ["authorization_code", "password", "refresh_token"])
async def test_other_grant_types_are_unsupported(
    oauth_client: httpx.AsyncClient, grant_type: str
) -> None:
    response = await token_request(oauth_client, {"grant_type": grant_type}, authorization=basic())
    assert_oauth_error(response, 400, "unsupported_grant_type")


async def test_missing_grant_type_is_invalid_request(oauth_client: httpx.AsyncClient) -> None:
    response = await token_request(oauth_client, {"scope": "x"}, authorization=basic())
    body = assert_oauth_error(response, 400, "invalid_request")
    assert "grant_type" in body["error_description"]


async def test_json_body_is_invalid_request(oauth_client: httpx.AsyncClient) -> None:
    response = await token_request(
        oauth_client,
        content=b'{"grant_type": "client_credentials"}',
        content_type="application/json",
        authorization=basic(),
    )
    body = assert_oauth_error(response, 400, "invalid_request")
    assert "application/x-www-form-urlencoded" in body["error_description"]


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b"grant_type=client_credentials&grant_type=client_credentials", "grant_type"),
        (b"grant_type=client_credentials&client_id=a&client_id=b", "client_id"),
        (b"grant_type=client_credentials&scope=\xff", "UTF-8"),
    ],
)
async def test_malformed_forms_are_invalid_request(
    oauth_client: httpx.AsyncClient, content: bytes, mentions: str
) -> None:
    response = await token_request(
        oauth_client,
        content=content,
        content_type="application/x-www-form-urlencoded",
        authorization=basic(),
    )
    body = assert_oauth_error(response, 400, "invalid_request")
    assert mentions in body["error_description"]


@pytest.mark.parametrize(
    "data",
    [
        {**FORM},
        {**FORM, "client_id": CLIENT_ID},
        {**FORM, "client_secret": CLIENT_SECRET},
        {**FORM, "client_id": "", "client_secret": ""},
    ],
    ids=["none", "id-only", "secret-only", "empty"],
)
async def test_missing_credentials_are_invalid_request(
    oauth_client: httpx.AsyncClient, data: dict[str, str]
) -> None:
    assert_oauth_error(await token_request(oauth_client, data), 400, "invalid_request")


async def test_oversized_body_is_refused(oauth_client: httpx.AsyncClient) -> None:
    data = {**FORM, "scope": "x" * 10_000}
    response = await token_request(oauth_client, data, authorization=basic())
    body = assert_oauth_error(response, 413, "invalid_request")
    assert "8192" in body["error_description"]


async def test_endpoint_is_off_unless_oauth_mode(client: httpx.AsyncClient) -> None:
    # The `client` fixture runs WEBHOOK_AUTH=api_key.
    data = {**FORM, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    response = await token_request(client, data)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "WEBHOOK_AUTH=oauth" in response.json()["detail"]
    assert "access_token" not in response.text


# --- webhooks with (and without) our tokens ---------------------------------------------------


async def test_webhook_without_token_is_401(
    oauth_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    response = await deliver(oauth_client, None)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == "missing bearer token"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert await stored_events(engine) == 0


async def test_api_key_is_not_accepted_in_oauth_mode(oauth_client: httpx.AsyncClient) -> None:
    response = await oauth_client.post(
        "/webhooks/paxos",
        content=encode(notification()),
        headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
    )
    assert response.status_code == 401


async def test_expired_token_is_401(oauth_client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    now = int(time.time())
    # Past the 30 s clock leeway.
    token = mint(await load_signing_key(engine), iat=now - 3600, exp=now - 120)
    response = await deliver(oauth_client, token)
    assert response.status_code == 401
    assert response.json()["detail"] == "token expired"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert token not in response.text
    assert await stored_events(engine) == 0


async def _forged_tokens(engine: AsyncEngine) -> dict[str, str]:
    key = await load_signing_key(engine)
    now = int(time.time())
    return {
        "garbage": "not.a.token",
        "another-key": mint(SigningKey(key.kid, secrets.token_bytes(32))),
        "no-kid": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": CLIENT_ID, "iat": now, "exp": now + 60},
            key.secret,
            algorithm="HS256",
        ),
        "unknown-kid": mint(SigningKey("0" * 16, key.secret)),
        "wrong-audience": mint(key, aud="someone-else"),
        "wrong-issuer": mint(key, iss="https://idp.example.test/"),
        "no-exp": mint(key, exp=None),
        "no-sub": mint(key, sub=None),
        "hs512": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": CLIENT_ID, "iat": now, "exp": now + 60},
            key.secret + key.secret,
            algorithm="HS512",
            headers={"kid": key.kid},
        ),
        "alg-none": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": CLIENT_ID, "iat": now, "exp": now + 60},
            None,
            algorithm="none",
            headers={"kid": key.kid},
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "another-key",
        "no-kid",
        "unknown-kid",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "no-sub",
        "hs512",
        "alg-none",
    ],
)
async def test_forged_or_foreign_tokens_are_401(
    oauth_client: httpx.AsyncClient, engine: AsyncEngine, kind: str
) -> None:
    token = (await _forged_tokens(engine))[kind]
    response = await deliver(oauth_client, token)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid token"
    assert token not in response.text
    assert await stored_events(engine) == 0


# --- tokens across processes and restarts ------------------------------------------------------


async def test_token_from_one_process_is_accepted_by_another_and_after_restart(
    oauth_settings: Settings, database_url: str
) -> None:
    # Separate engines (connection pools), as separate `serve` processes have.
    engine_a = create_engine(database_url)
    engine_b = create_engine(database_url)
    try:
        async with serving(oauth_settings, engine_a) as a, serving(oauth_settings, engine_b) as b:
            token = assert_token_answer(await token_request(a, FORM, authorization=basic()))
            assert (await deliver(b, token)).json()["status"] == "accepted"
        # Both "processes" are gone; a fresh one still accepts the token.
        async with serving(oauth_settings, engine_b) as restarted:
            assert (await deliver(restarted, token)).json()["status"] == "accepted"
    finally:
        await engine_a.dispose()
        await engine_b.dispose()


async def test_signing_key_is_created_once(engine: AsyncEngine) -> None:
    keys = await asyncio.gather(*(load_service_key(engine, SIGNING_KEY_NAME) for _ in range(8)))
    keys.append(await load_service_key(engine, SIGNING_KEY_NAME))
    assert len(keys[0]) == 32
    assert all(key == keys[0] for key in keys)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(service_keys)) == 1
