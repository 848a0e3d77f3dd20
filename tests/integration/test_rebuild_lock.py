"""A rebuild's lock and its connection: a rebuild never carries on without the lock."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import create_engine, plain_url
from service.db.sessions import SessionLost
from service.projections.rebuild import Progress, rebuild
from service.projections.runner import Projector
from service.settings import Settings
from service.store.projections.registry import IDENTITIES
from tests.support.fetching import Paxos, deliver, new_fetcher, settle


async def lock_holder(admin: asyncpg.Connection, name: str) -> int | None:
    """The backend pid holding the rebuild lock of projection `name` (a bigint key
    `hashtext(...)`: classid, objid halves)."""
    key = int(await admin.fetchval("SELECT hashtext($1)::bigint", "rebuild:" + name))
    pid = await admin.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND classid = $1 AND objid = $2 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (key >> 32) & 0xFFFFFFFF,
        key & 0xFFFFFFFF,
    )
    return None if pid is None else int(pid)


async def test_a_rebuild_whose_lock_connection_dies_stops_and_another_resumes_it(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    fetch_settings: Settings,
    paxos: Paxos,
    database_url: str,
) -> None:
    await deliver(client, [e.notification() for e in paxos.universe.events])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    await Projector(engine).catch_up()
    async with engine.connect() as conn:
        total = int(await conn.scalar(text("SELECT count(*) FROM journal WHERE kind = 'event'")))
    assert total >= 8

    halfway = asyncio.Event()
    go_on = asyncio.Event()
    after_loss: list[Progress] = []

    async def pause_halfway(progress: Progress) -> None:
        # Every staging worker waits here from halfway on, until the lock's connection is gone.
        if progress.phase == "building" and progress.done >= total // 2:
            halfway.set()
            await go_on.wait()
        if go_on.is_set():
            after_loss.append(progress)

    admin = await asyncpg.connect(plain_url(database_url))
    other = create_engine(database_url)  # another process
    try:
        running = asyncio.create_task(rebuild(engine, IDENTITIES, batch=4, progress=pause_halfway))
        await asyncio.wait_for(halfway.wait(), 10)
        holder = await lock_holder(admin, IDENTITIES.name)
        assert holder is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)
        await asyncio.sleep(0.2)  # asyncpg sees the connection end
        go_on.set()  # were it not stopped, the rebuild would go on from here, unlocked

        # The rebuild stops where it was, rather than going on without the lock.
        with pytest.raises(SessionLost):
            await asyncio.wait_for(running, timeout=5)
        assert after_loss == []
        assert await lock_holder(admin, IDENTITIES.name) is None

        # Another process takes the lock and resumes from the chunks staged.
        seen: list[Progress] = []

        async def record(progress: Progress) -> None:
            seen.append(progress)

        final = await rebuild(other, IDENTITIES, batch=4, progress=record)
        assert seen[0].resumed_from >= total // 2
        assert final.phase == "done" and final.done == total
        # The engine gave up the dead connection: the next rebuild takes the lock again.
        assert (await rebuild(engine, IDENTITIES, batch=4)).phase == "done"
    finally:
        go_on.set()
        await admin.close()
        await other.dispose()
