"""`paxos-events rotate-webhook-key` as a process: tokens issued before it are refused after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.intake.oauth import SIGNING_KEY_NAME
from service.settings import Settings, WebhookAuth
from service.store.keys import load_service_key
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.processes import cli

CLIENT = {"client_id": "paxos-webhooks", "client_secret": "a-client-secret-0123456789"}


@asynccontextmanager
async def serving(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app instance, as a `serve` process started now would be."""
    async for client in app_client(create_app(settings, engine=engine)):
        yield client


async def new_token(client: httpx.AsyncClient) -> str:
    answer = await client.post("/oauth/token", data={"grant_type": "client_credentials", **CLIENT})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


async def delivery(settings: Settings, engine: AsyncEngine, token: str | None) -> int:
    """Deliver with `token` (or a new one) on a fresh app instance; the status it answers."""
    async with serving(settings, engine) as client:
        response = await client.post(
            "/webhooks/paxos",
            content=encode(notification()),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token or await new_token(client)}",
            },
        )
        return response.status_code


@pytest.mark.slow
async def test_the_rotate_webhook_key_command(
    settings: Settings, engine: AsyncEngine, database_url: str
) -> None:
    oauth = settings.replace(
        webhook_auth=WebhookAuth.OAUTH,
        webhook_oauth_client_id=CLIENT["client_id"],
        webhook_oauth_client_secret=CLIENT["client_secret"],
    )
    async with serving(oauth, engine) as client:
        old = await new_token(client)
    assert await delivery(oauth, engine, old) == 200
    before = await load_service_key(engine, SIGNING_KEY_NAME)

    done = cli(database_url, "rotate-webhook-key")

    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "tokens issued before" in lines[0]
    after = await load_service_key(engine, SIGNING_KEY_NAME)
    assert len(after) == 32
    assert after != before
    for key in (before, after):
        assert key.hex() not in done.stdout + done.stderr
    assert await delivery(oauth, engine, old) == 401
    assert await delivery(oauth, engine, None) == 200


@pytest.mark.slow
def test_rotate_webhook_key_without_a_database_says_so_in_one_line() -> None:
    done = cli("postgresql://nobody:pw@127.0.0.1:9/none", "rotate-webhook-key")
    assert done.returncode == 2
    assert done.stderr.startswith("paxos-events: database unreachable:"), done.stderr
    assert "Traceback" not in done.stderr
    assert "pw@" not in done.stderr
