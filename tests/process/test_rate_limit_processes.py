"""One rate limit for the whole deployment, shown with two real worker processes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.notification import decode_notification
from service.simulator.commands import build_universe
from service.store.intake import Received, record_notifications
from service.store.tables import events
from tests.support.processes import clean_env, free_port, running, wait_http
from tests.support.ratelimit import max_in_any_window

RPS = 20
EVENTS = 240


@pytest.mark.slow
async def test_two_workers_share_one_rate_limit(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    until = datetime(2026, 11, 1, tzinfo=UTC)
    universe = build_universe(EVENTS, 0.0, 5, until)
    async with engine.begin() as conn:
        await record_notifications(
            conn,
            [
                Received(
                    decode_notification(msgspec.json.encode(n)), msgspec.json.encode(n).decode()
                )
                for n in universe.notifications()
            ],
        )
    port = free_port()
    paxos = f"http://127.0.0.1:{port}"
    simulator = [
        "simulate",
        "api",
        "--port",
        str(port),
        "--events",
        str(EVENTS),
        "--test-ratio",
        "0",
        "--seed",
        "5",
        "--until",
        "2026-11-01T00:00:00Z",
        "--rate",
        "1000",
        "--client-id",
        "c",
        "--client-secret",
        "s",
    ]
    env = clean_env(
        DATABASE_URL=database_url,
        PAXOS_API_URL=f"{paxos}/v2",
        PAXOS_TOKEN_URL=f"{paxos}/oauth2/token",
        PAXOS_CLIENT_ID="c",
        PAXOS_CLIENT_SECRET="s",
        PAXOS_API_RPS=str(RPS),
        LOG_LEVEL="warning",
    )
    with running(simulator, env, tmp_path / "simulator.log"):
        await asyncio.to_thread(wait_http, f"{paxos}/_simulator/stats")
        with (
            running(["worker"], env, tmp_path / "worker-1.log"),
            running(["worker"], env, tmp_path / "worker-2.log"),
        ):
            async with asyncio.timeout(EVENTS / RPS * 3):
                while True:
                    async with engine.connect() as conn:
                        left = await conn.scalar(
                            select(func.count())
                            .select_from(events)
                            .where(events.c.status == "pending")
                        )
                    if not left:
                        break
                    await asyncio.sleep(0.2)
        calls = httpx.get(f"{paxos}/_simulator/calls").json()
        stats = httpx.get(f"{paxos}/_simulator/stats").json()
    # Both workers fetched: each asked for its own token.
    assert stats["token_requests"] == 2
    gets = sorted(c["at"] for c in calls if c["endpoint"] == "get_event")
    assert len(gets) == EVENTS  # each event fetched once, by one of the two workers
    assert all(c["status"] == 200 for c in calls if c["endpoint"] == "get_event")
    # Never above the limit in any one-second window, seen from Paxos's side...
    assert max_in_any_window(gets) <= RPS
    # ...and the limit was used while work was waiting: the whole backlog at >= 90% of it.
    rate = (len(gets) - 1) / (gets[-1] - gets[0])
    assert rate >= 0.9 * RPS, f"{rate:.1f} calls/s"
    for log in ("worker-1.log", "worker-2.log"):
        assert "Traceback" not in (tmp_path / log).read_text()
