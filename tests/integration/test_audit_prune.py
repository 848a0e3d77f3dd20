"""Pruning: only old test events go, only through the audited path, and the seal chain still
verifies afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.canonical import ROW_HASH_SQL, unpack_rows
from service.store.audit.prune import prune_test_events
from service.store.audit.seals import seal_pending
from service.store.audit.verify import verify
from tests.support.audit import RECENT, add_events, count


async def test_prune_removes_only_old_test_events_and_the_chain_still_verifies(
    engine: AsyncEngine,
) -> None:
    old_test = await add_events(engine, 2, is_test=True)
    recent_test = await add_events(engine, 1, is_test=True, time=RECENT)
    old_real = await add_events(engine, 2)
    await seal_pending(engine)

    result = await prune_test_events(engine, 30)

    assert (result.events, result.journal_rows, result.skipped_unsealed) == (2, 4, 0)
    async with engine.connect() as conn:
        left = {r[0] for r in await conn.execute(text("SELECT event_id FROM events"))}
        journal_ids = {r[0] for r in await conn.execute(text("SELECT event_id FROM journal"))}
        pruned = (
            await conn.execute(text("SELECT * FROM pruned_journal_rows ORDER BY position"))
        ).all()
        prune = (await conn.execute(text("SELECT * FROM prunes"))).one()
        digest = b"".join(
            bytes(r[0]) for r in await conn.execute(text("SELECT rows_digest FROM seals"))
        )
    assert left == set(recent_test) | set(old_real)
    assert journal_ids == left | set(old_test)  # Paxos's confirmations stay, as evidence
    # What was pruned is on record, each row with the hash its seal holds.
    sealed = dict(unpack_rows(digest))
    assert {r.event_id for r in pruned} == set(old_test)
    assert all(bytes(r.row_hash) == sealed[r.position] for r in pruned)
    assert (prune.prune_id, prune.older_than_days, prune.events, prune.journal_rows) == (
        result.prune_ids[0],
        30,
        2,
        4,
    )
    report = await verify(engine, 3600)
    assert report.ok, report.problems
    assert report.rows_checked == 13  # a test event's rows: notification, event, confirmation


async def test_unsealed_test_events_are_kept_for_a_later_prune(engine: AsyncEngine) -> None:
    await add_events(engine, 1, is_test=True)
    result = await prune_test_events(engine, 30)
    assert (result.events, result.skipped_unsealed, result.prune_ids) == (0, 1, ())
    await seal_pending(engine)
    assert (await prune_test_events(engine, 30)).events == 1


async def delete_through_the_audited_path(engine: AsyncEngine, position: int) -> None:
    """Record the row as pruned (with its true hash), then delete it: the path `prune` takes."""
    async with engine.begin() as conn:
        prune_id = await conn.scalar(
            text(
                "INSERT INTO prunes (older_than_days, cutoff, events, journal_rows) "
                "VALUES (0, now(), 1, 1) RETURNING prune_id"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO pruned_journal_rows (position, event_id, kind, row_hash, prune_id) "
                f"SELECT j.position, j.event_id, j.kind, {ROW_HASH_SQL}, :prune_id "
                "FROM journal j WHERE j.position = :p"
            ),
            {"p": position, "prune_id": prune_id},
        )
        await conn.execute(text("DELETE FROM journal WHERE position = :p"), {"p": position})


async def test_a_real_event_cannot_be_deleted_even_through_the_audited_path(
    engine: AsyncEngine,
) -> None:
    await add_events(engine, 1)
    with pytest.raises(DBAPIError, match="the journal is append-only: DELETE"):
        await delete_through_the_audited_path(engine, 1)
    assert await count(engine, "SELECT count(*) FROM journal") == 2
    assert await count(engine, "SELECT count(*) FROM pruned_journal_rows") == 0


async def test_a_test_event_row_goes_only_with_its_exact_record(engine: AsyncEngine) -> None:
    await add_events(engine, 1, is_test=True)
    # Not recorded first: refused.
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM journal WHERE position = 1"))
    # Recorded with another hash: refused.
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO prunes (older_than_days, cutoff, events, journal_rows) "
                    "VALUES (0, now(), 1, 1)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO pruned_journal_rows (position, event_id, kind, row_hash, "
                    "prune_id) SELECT position, event_id, kind, sha256('other'), 1 "
                    "FROM journal WHERE position = 1"
                )
            )
            await conn.execute(text("DELETE FROM journal WHERE position = 1"))
    # UPDATE and TRUNCATE stay refused whatever is recorded.
    for statement in ("UPDATE journal SET body = '{}'", "TRUNCATE journal"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    await delete_through_the_audited_path(engine, 1)
    assert await count(engine, "SELECT count(*) FROM journal") == 2


async def test_the_pruning_record_is_append_only(engine: AsyncEngine) -> None:
    await add_events(engine, 1, is_test=True)
    await seal_pending(engine)
    await prune_test_events(engine, 30)
    for table, column in (("pruned_journal_rows", "kind"), ("prunes", "events")):
        for statement in (f"DELETE FROM {table}", f"UPDATE {table} SET {column} = {column}"):
            with pytest.raises(DBAPIError, match=f"{table} is append-only"):
                async with engine.begin() as conn:
                    await conn.execute(text(statement))


async def test_a_forged_pruning_record_is_a_changed_row(engine: AsyncEngine) -> None:
    await add_events(engine, 1, is_test=True)
    await seal_pending(engine)
    await prune_test_events(engine, 30)
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text("UPDATE pruned_journal_rows SET row_hash = sha256('x')"))
    report = await verify(engine, 3600)
    assert [(p.kind, p.position) for p in report.problems] == [
        ("changed_row", 1),
        ("changed_row", 2),
    ]


@pytest.mark.parametrize("is_test", [False, True])
async def test_events_rows_are_never_deleted_outside_a_prune(
    engine: AsyncEngine, is_test: bool
) -> None:
    await add_events(engine, 1, is_test=is_test)
    for statement in ("DELETE FROM events", "TRUNCATE events CASCADE"):
        with pytest.raises(DBAPIError, match="events are only deleted by a prune of test events"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    assert await count(engine, "SELECT count(*) FROM events") == 1
