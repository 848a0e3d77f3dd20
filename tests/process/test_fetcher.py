"""`paxos-events backfill --pending` as a process: failed events are made due again."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.tables import events
from tests.support.fetching import Paxos, deliver, pending
from tests.support.paths import ROOT


async def test_backfill_pending_makes_failed_events_due(
    engine: AsyncEngine, client: httpx.AsyncClient, database_url: str, paxos: Paxos
) -> None:
    bodies = [e.notification() for e in list(paxos.universe)[:3]]
    await deliver(client, bodies)
    async with engine.begin() as conn:
        await conn.execute(update(events).values(status="failed", next_attempt_at=None))
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "service", "backfill", "--pending"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 events made due for a new Get Event"
    assert await pending(engine) == 3
