"""A 429 from Paxos pauses every process's calls for its Retry-After, but never longer than
`MAX_RETRY_AFTER_S`: one absurd value must not stop fetching for the whole deployment."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from service.paxos.client import MAX_RETRY_AFTER_S, PaxosRateLimited, build_client
from service.settings import Settings
from service.store.tables import rate_limits
from tests.support.fetching import paxos_settings

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

ACCESS_TOKEN = "access-token-that-must-not-be-logged"  # noqa: S105 - a test value


def paxos_answering(retry_after: str) -> httpx.MockTransport:
    """Paxos as far as this needs: a token, then 429 with `retry_after` on every call."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": ACCESS_TOKEN, "expires_in": 3600})
        return httpx.Response(
            429,
            headers={"Retry-After": retry_after},
            json={"type": "about:blank", "title": "Too Many Requests", "status": 429},
        )

    return httpx.MockTransport(handle)


async def paused_for_s(engine: AsyncEngine) -> float:
    async with engine.connect() as conn:
        paused_until = await conn.scalar(
            select(rate_limits.c.paused_until).where(rate_limits.c.name == "paxos_api")
        )
        now = await conn.scalar(select(func.now()))
    assert paused_until is not None and now is not None
    return float((paused_until - now).total_seconds())


@pytest.mark.parametrize("retry_after", ["999999", "1e308", "inf"])
async def test_a_huge_retry_after_pauses_fetching_for_at_most_15_minutes(
    settings: Settings, engine: AsyncEngine, retry_after: str
) -> None:
    assert MAX_RETRY_AFTER_S == 900
    async with httpx.AsyncClient(transport=paxos_answering(retry_after)) as http:
        client = build_client(paxos_settings(settings), engine, http)
        with capture_logs() as logs, pytest.raises(PaxosRateLimited) as refused:
            await client.get_event(uuid.uuid4())
    assert refused.value.retry_after == MAX_RETRY_AFTER_S
    assert 890 <= await paused_for_s(engine) <= MAX_RETRY_AFTER_S
    capped = [e for e in logs if "capped" in e["event"]]
    assert len(capped) == 1 and capped[0]["log_level"] == "warning"
    assert capped[0]["capped_to_s"] == MAX_RETRY_AFTER_S
    assert ACCESS_TOKEN not in repr(logs)


async def test_a_reasonable_retry_after_is_kept_as_paxos_said(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(transport=paxos_answering("120")) as http:
        client = build_client(paxos_settings(settings), engine, http)
        with capture_logs() as logs, pytest.raises(PaxosRateLimited) as refused:
            await client.get_event(uuid.uuid4())
    assert refused.value.retry_after == 120
    assert 110 <= await paused_for_s(engine) <= 120
    assert not [e for e in logs if "capped" in e["event"]]
