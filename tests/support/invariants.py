"""The promise, checked on a database after a run: nothing acknowledged is lost, nothing is
stored or applied twice, everything is fetched, and every projection equals a rebuild."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.projections.rebuild import rebuild
from service.store.projections.checkpoints import lag
from service.store.projections.registry import PROJECTIONS
from service.store.tables import TEST_CONFIRMATION, events, journal


async def settled(engine: AsyncEngine) -> bool:
    """Nothing waits for its Get Event and every projection has applied the whole journal."""
    async with engine.connect() as conn:
        pending = await conn.scalar(
            select(func.count()).select_from(events).where(events.c.status == "pending")
        )
        behind = await lag(conn)
    return not pending and all(item.events_behind == 0 for item in behind)


async def wait_settled(engine: AsyncEngine, timeout: float) -> None:
    """Wait until `settled`, or fail saying what is left."""
    try:
        async with asyncio.timeout(timeout):
            while not await settled(engine):
                await asyncio.sleep(0.25)
    except TimeoutError:
        async with engine.connect() as conn:
            statuses = dict(
                (await conn.execute(select(events.c.status, func.count()).group_by(1))).all()
            )
            behind = await lag(conn)
        raise AssertionError(f"not settled within {timeout} s: {statuses}, {behind}") from None


async def assert_each_stored_once_and_fetched(
    engine: AsyncEngine, sent: Iterable[str], acknowledged: Iterable[str]
) -> None:
    """Every id sent is stored (each acknowledged one above all) exactly once, came by
    webhook, is fetched, and has one journal row of each kind."""
    sent_ids, acked = set(sent), set(acknowledged)
    assert acked <= sent_ids
    async with engine.connect() as conn:
        rows = (await conn.execute(select(events.c.event_id, events.c.status, events.c.via))).all()
        # (A test event has a third row, Paxos's `test_confirmation`.)
        kinds = Counter(
            (str(r.event_id), r.kind)
            for r in await conn.execute(
                select(journal.c.event_id, journal.c.kind).where(
                    journal.c.kind != TEST_CONFIRMATION
                )
            )
        )
    stored = {str(r.event_id) for r in rows}
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged ids lost, e.g. {sorted(lost)[:3]}"
    assert stored == sent_ids, (
        f"{len(sent_ids - stored)} sent ids not stored, {len(stored - sent_ids)} never sent"
    )
    assert Counter(r.status for r in rows) == {"fetched": len(sent_ids)}
    assert Counter(r.via for r in rows) == {"webhook": len(sent_ids)}
    assert set(kinds.values()) == {1}
    assert len(kinds) == 2 * len(sent_ids)  # one notification row and one event row each


async def projection_rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projection table, sorted, without the time it was written."""
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for projection in PROJECTIONS.values():
            for table in projection.tables:
                result = await conn.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608
                keep = [i for i, name in enumerate(result.keys()) if name != "updated_at"]
                snapshot[table] = sorted(
                    (tuple(repr(row[i]) for i in keep) for row in result), key=str
                )
    return snapshot


async def assert_projections_equal_rebuild(engine: AsyncEngine) -> None:
    """Each projection's live rows equal what a rebuild from the journal makes of it.

    Run it once no process applies the journal any more."""
    live = await projection_rows(engine)
    assert live["identities"], "no identity projected: the comparison would prove nothing"
    for projection in PROJECTIONS.values():
        await rebuild(engine, projection)
    rebuilt = await projection_rows(engine)
    for table, rows in live.items():
        assert rows == rebuilt[table], f"{table} differs from its rebuild"
