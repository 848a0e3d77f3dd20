"""The reconciler's lock and its connection: a pass never carries on without the lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import create_engine, plain_url
from service.db.sessions import SessionLost
from service.paxos.client import build_client
from service.reconciling.reconciler import GRACE, Reconciler
from service.settings import Settings
from service.simulator.server import SimulatorConfig, create_simulator, simulator_state
from service.simulator.universe import generate_universe
from service.store.reconcile import RECONCILER_LOCK
from service.store.tables import events, reconcile_passes
from tests.support.fetching import PAXOS, Paxos, paxos_settings

START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)


@pytest.fixture
async def sim() -> AsyncIterator[Paxos]:
    """A Paxos holding 60 events on 2026-03-01."""
    universe = generate_universe(60, start=START, end=END, test_ratio=0.0, seed=7)
    app = create_simulator(SimulatorConfig(universe=universe, api_rps=100_000, token_rps=50))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PAXOS) as http:
        yield Paxos(simulator_state(app), http)


def reconciler(engine: AsyncEngine, settings: Settings, sim: Paxos) -> Reconciler:
    client = build_client(paxos_settings(settings), engine, sim.http)
    return Reconciler(engine, client, interval_s=300, lookback_s=30 * 3600, page_size=5)


async def lock_holder(admin: asyncpg.Connection) -> int | None:
    """The backend pid holding the reconciler's lock (a bigint key: classid, objid halves)."""
    pid = await admin.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = $1 AND objid = $2 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        RECONCILER_LOCK >> 32,
        RECONCILER_LOCK & 0xFFFFFFFF,
    )
    return None if pid is None else int(pid)


async def test_a_pass_whose_lock_connection_dies_stops_and_another_takes_over(
    engine: AsyncEngine, settings: Settings, sim: Paxos, database_url: str
) -> None:
    now = END + GRACE + timedelta(hours=1)
    mine = reconciler(engine, settings, sim)
    sim.state.faults.latency_s = 0.1  # 12 pages: over a second of pass
    admin = await asyncpg.connect(plain_url(database_url))
    other = create_engine(database_url)  # another process
    try:
        running = asyncio.create_task(mine.run_once(now))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(sim.state.api_calls) >= 3:
                break
        holder = await lock_holder(admin)
        assert holder is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)

        # The pass stops at once, unfinished, rather than going on without the lock.
        with pytest.raises(SessionLost):
            await asyncio.wait_for(running, timeout=5)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(reconcile_passes))).all()
        assert [r.status for r in rows] != ["done"] and len(rows) == 1
        calls = len(sim.state.api_calls)
        await asyncio.sleep(0.5)
        assert len(sim.state.api_calls) == calls  # nothing more listed by the stopped pass

        # Another process takes the lock and finishes the same pass from where it stopped.
        sim.state.faults.latency_s = 0.0
        counts = await reconciler(other, settings, sim).run_once(now)
        assert counts is not None and counts.found == len(sim.universe)
        async with engine.connect() as conn:
            done = (await conn.execute(select(reconcile_passes))).all()
            stored = set((await conn.scalars(select(events.c.event_id))).all())
        assert [(r.pass_id, r.status) for r in done] == [(rows[0].pass_id, "done")]
        assert {str(i) for i in stored} == {e.id for e in sim.universe}
        # The engine gave up the dead connection: the next pass takes the lock again.
        assert await mine.run_once(now + timedelta(minutes=5)) is not None
    finally:
        sim.state.faults.latency_s = 0.0
        await admin.close()
        await other.dispose()
