"""Webhook tokens are bound to the client that may deliver (issue #15, item 10).

OAuth mode: the tokens `/oauth/token` issues are signed with a key derived from the database
key AND the client's id and secret, so changing the secret revokes them, read access to the
database alone mints nothing, and `rotate-webhook-key` (tests/process/test_rotate_webhook_key.py
runs the command itself) revokes them all. JWT mode: `WEBHOOK_JWT_SUBJECTS` and
`WEBHOOK_JWT_AZP` pin which clients of the identity provider may deliver.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.intake.oauth import AUDIENCE, ISSUER, SIGNING_KEY_NAME
from service.settings import Settings, WebhookAuth
from service.store.keys import load_service_key
from service.web.problems import Unauthenticated
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.jwt import AUDIENCE as JWT_AUDIENCE
from tests.support.jwt import ISSUER as JWT_ISSUER
from tests.support.jwt import JWKS_URL, RSA_KEY
from tests.support.jwt import mint as mint_jwt

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

CLIENT_ID = "paxos-webhooks"
CLIENT_SECRET = "first-client-secret-0123456789"
NEW_SECRET = "second-client-secret-9876543210"
FORM = {"grant_type": "client_credentials"}


def oauth(settings: Settings, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> Settings:
    return settings.replace(
        webhook_auth=WebhookAuth.OAUTH,
        webhook_oauth_client_id=client_id,
        webhook_oauth_client_secret=secret,
    )


@asynccontextmanager
async def serving(
    settings: Settings, engine: AsyncEngine, http_client: httpx.AsyncClient | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """One running app instance, as one `serve` process (or one restart of it) would be."""
    async for client in app_client(create_app(settings, engine=engine, http_client=http_client)):
        yield client


async def new_token(
    client: httpx.AsyncClient, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET
) -> str:
    data = {**FORM, "client_id": client_id, "client_secret": secret}
    response = await client.post("/oauth/token", data=data)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def deliver(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/webhooks/paxos",
        content=encode(notification()),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )


def assert_refused(response: httpx.Response, token: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert token not in response.text


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": CLIENT_ID, "iat": now, "exp": now + 300}
    claims.update(overrides)
    return claims


# --- OAuth: tokens bound to the client and its secret -------------------------------------------


async def test_changing_the_client_secret_revokes_issued_tokens(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with serving(oauth(settings), engine) as before:
        token = await new_token(before)
        assert (await deliver(before, token)).status_code == 200
    # The operator changed WEBHOOK_OAUTH_CLIENT_SECRET and restarted (and told Paxos).
    async with serving(oauth(settings, secret=NEW_SECRET), engine) as after:
        assert_refused(await deliver(after, token), token)
        # The old secret no longer gets a token; the new one does, and it delivers.
        refused = await after.post(
            "/oauth/token",
            data={**FORM, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        )
        assert refused.status_code == 401
        assert (await deliver(after, await new_token(after, secret=NEW_SECRET))).status_code == 200


async def test_changing_the_client_id_revokes_issued_tokens(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with serving(oauth(settings), engine) as before:
        token = await new_token(before)
    async with serving(oauth(settings, client_id="another-client"), engine) as after:
        assert_refused(await deliver(after, token), token)


async def test_a_token_signed_with_the_database_key_alone_is_refused(
    settings: Settings, engine: AsyncEngine
) -> None:
    # Someone who can read the database (a backup, a replica, a leaked dump) but does not know
    # the client secret.
    async with serving(oauth(settings), engine) as client:
        database_key = await load_service_key(engine, SIGNING_KEY_NAME)
        forged = jwt.encode(valid_claims(), database_key, algorithm="HS256")
        assert_refused(await deliver(client, forged), forged)
        # With the key id of real tokens too.
        kid = jwt.get_unverified_header(await new_token(client)).get("kid")
        headers = {"kid": kid} if kid is not None else None
        forged = jwt.encode(valid_claims(), database_key, algorithm="HS256", headers=headers)
        assert_refused(await deliver(client, forged), forged)


async def test_a_token_signed_right_but_for_another_subject_is_refused(
    settings: Settings, engine: AsyncEngine
) -> None:
    from service.intake.oauth import signing_key

    async with serving(oauth(settings), engine) as client:
        key = signing_key(
            await load_service_key(engine, SIGNING_KEY_NAME), CLIENT_ID, CLIENT_SECRET
        )
        headers = {"kid": key.kid}
        good = jwt.encode(valid_claims(), key.secret, algorithm="HS256", headers=headers)
        assert (await deliver(client, good)).status_code == 200
        for sub in ("someone-else", CLIENT_ID + " ", 42):
            token = jwt.encode(
                valid_claims(sub=sub), key.secret, algorithm="HS256", headers=headers
            )
            assert_refused(await deliver(client, token), token)


async def test_rotating_the_key_revokes_issued_tokens_and_new_ones_work(
    settings: Settings, engine: AsyncEngine
) -> None:
    from service.intake.oauth import rotate_signing_key  # what `rotate-webhook-key` runs

    async with serving(oauth(settings), engine) as running:
        old = await new_token(running)
        assert (await deliver(running, old)).status_code == 200
        await rotate_signing_key(engine)
        # The running process signs new tokens with the new key at once, and accepts them.
        new = await new_token(running)
        assert (await deliver(running, new)).status_code == 200
    # Another process (or this one restarted) refuses the old token and accepts the new.
    async with serving(oauth(settings), engine) as other:
        assert_refused(await deliver(other, old), old)
        assert (await deliver(other, new)).status_code == 200
        newest = await new_token(other)
        assert (await deliver(other, newest)).status_code == 200


async def test_a_running_process_stops_accepting_old_tokens_soon_after_a_rotation(
    engine: AsyncEngine,
) -> None:
    from service.intake.oauth import (
        KEY_MAX_AGE_S,
        OAuthTokenAuthenticator,
        rotate_signing_key,
    )

    clock = Clock()
    running = await OAuthTokenAuthenticator.load(engine, CLIENT_ID, CLIENT_SECRET, clock=clock)
    other = await OAuthTokenAuthenticator.load(engine, CLIENT_ID, CLIENT_SECRET, clock=clock)
    old = await running.issue(300)
    await running.authenticate(bearer(old))

    await rotate_signing_key(engine)
    new = await other.issue(300)
    # A token of the new key is accepted at once: its key id is unknown, so the key is reread.
    await running.authenticate(bearer(new))
    await assert_invalid(running, old)
    await assert_invalid(other, old)

    # Without any token of the new key, a process notices the rotation within KEY_MAX_AGE_S.
    stale = await OAuthTokenAuthenticator.load(engine, CLIENT_ID, CLIENT_SECRET, clock=clock)
    before = await stale.issue(300)
    await rotate_signing_key(engine)
    await stale.authenticate(bearer(before))  # still within the cache's age
    clock.now += KEY_MAX_AGE_S
    await assert_invalid(stale, before)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def assert_invalid(authenticator: Any, token: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        await authenticator.authenticate(bearer(token))
    assert refused.value.detail == "invalid token"


# --- JWT: pinning the identity provider's clients -----------------------------------------------


@pytest.fixture
def jwt_settings(settings: Settings) -> Callable[..., Settings]:
    def make(**pins: tuple[str, ...]) -> Settings:
        return settings.replace(
            webhook_auth=WebhookAuth.JWT,
            webhook_jwt_jwks_url=JWKS_URL,
            webhook_jwt_issuer=JWT_ISSUER,
            webhook_jwt_audience=JWT_AUDIENCE,
            **pins,
        )

    return make


async def test_jwt_subject_not_in_webhook_jwt_subjects_is_refused(
    jwt_settings: Callable[..., Settings], engine: AsyncEngine, outbound: httpx.AsyncClient
) -> None:
    pinned = jwt_settings(webhook_jwt_subjects=("paxos-a", "paxos-b"))
    async with serving(pinned, engine, outbound) as client:
        for listed in ("paxos-a", "paxos-b"):
            token = mint_jwt(RSA_KEY, "RS256", sub=listed)
            assert (await deliver(client, token)).status_code == 200
        refused: list[tuple[str | None, str]] = [
            ("another-app", "token subject not accepted"),
            ("paxos-a ", "token subject not accepted"),
            (None, "token lacks the sub claim"),
        ]
        for sub, detail in refused:
            token = mint_jwt(RSA_KEY, "RS256", sub=sub)
            response = await deliver(client, token)
            assert response.status_code == 401, response.text
            assert response.json()["detail"] == detail
            assert token not in response.text


async def test_jwt_azp_not_in_webhook_jwt_azp_is_refused(
    jwt_settings: Callable[..., Settings], engine: AsyncEngine, outbound: httpx.AsyncClient
) -> None:
    pinned = jwt_settings(webhook_jwt_azp=("paxos-client",))
    async with serving(pinned, engine, outbound) as client:
        accepted = [
            mint_jwt(RSA_KEY, "RS256", azp="paxos-client"),
            # RFC 9068 access tokens name the client in `client_id` instead.
            mint_jwt(RSA_KEY, "RS256", client_id="paxos-client"),
        ]
        for token in accepted:
            assert (await deliver(client, token)).status_code == 200
        for token, detail in (
            (mint_jwt(RSA_KEY, "RS256", azp="another-app"), "token client (azp) not accepted"),
            (
                mint_jwt(RSA_KEY, "RS256", azp="another-app", client_id="paxos-client"),
                "token client (azp) not accepted",
            ),
            (mint_jwt(RSA_KEY, "RS256"), "token lacks the azp (or client_id) claim"),
        ):
            response = await deliver(client, token)
            assert response.status_code == 401, response.text
            assert response.json()["detail"] == detail


async def test_jwt_without_pins_accepts_any_subject_of_the_provider(
    jwt_settings: Callable[..., Settings], engine: AsyncEngine, outbound: httpx.AsyncClient
) -> None:
    async with serving(jwt_settings(), engine, outbound) as client:
        token = mint_jwt(RSA_KEY, "RS256", sub="any-app")
        assert (await deliver(client, token)).status_code == 200
