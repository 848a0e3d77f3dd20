"""Group commit when the database refuses one item of a batch: the item fails alone, every
other item of the batch is stored and answered, and the writer keeps its connection.

The batches are real: every item is submitted before a writer task runs, so the first write
gets them all at once (each test checks it did). The refusals are real too: Postgres refuses a
cast (sent through SQLAlchemy or through the driver directly, as the intake does), and asyncpg
refuses to encode a time that has no UTC form (the intake's own statement)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.batching import CommitFailed, GroupWriter
from service.domain.notification import Notification
from service.intake.committer import GroupCommitter
from service.store.tables import events, journal

BAD = "not a number"


class Recorder:
    """A write function that casts each item to an integer in the database, and remembers the
    batches it was given and the server process that ran each."""

    def __init__(self, *, via_driver: bool) -> None:
        self.via_driver = via_driver
        self.batches: list[list[str]] = []
        self.backends: list[int] = []

    async def write(self, conn: AsyncConnection, items: Sequence[str]) -> list[int]:
        self.batches.append(list(items))
        self.backends.append(int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0))
        sql = (
            "SELECT CAST(x AS int) FROM unnest(CAST($1 AS text[])) WITH ORDINALITY AS t(x, i) "
            "ORDER BY i"
        )
        if self.via_driver:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            rows = await driver.fetch(sql, list(items))
        else:
            rows = (
                await conn.execute(text(sql.replace("$1", ":items")), {"items": list(items)})
            ).all()
        return [int(row[0]) for row in rows]


def _count_invalidations(engine: AsyncEngine) -> list[object]:
    dropped: list[object] = []

    def on_invalidate(*args: object) -> None:
        dropped.append(args)

    event.listen(engine.sync_engine.pool, "invalidate", on_invalidate)
    event.listen(engine.sync_engine.pool, "soft_invalidate", on_invalidate)
    return dropped


@pytest.mark.parametrize(
    ("single_statement", "via_driver"),
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["held-driver", "held-sqlalchemy", "transaction-driver", "transaction-sqlalchemy"],
)
async def test_an_item_the_database_refuses_fails_alone_and_its_batch_is_stored(
    engine: AsyncEngine, single_statement: bool, via_driver: bool
) -> None:
    recorder = Recorder(via_driver=via_driver)
    writer: GroupWriter[str, int] = GroupWriter(
        engine, recorder.write, name="test", writers=1, single_statement=single_statement
    )
    dropped = _count_invalidations(engine)
    items = [str(n) for n in range(40)]
    items.insert(13, BAD)
    writer.start()
    try:
        results = await asyncio.gather(*(writer.submit(x) for x in items), return_exceptions=True)
        # The writer goes on writing, on the same connection when it holds one.
        assert await writer.submit("7") == 7
    finally:
        await writer.stop()

    assert recorder.batches[0] == items  # one real batch, refused as a whole
    for item, result in zip(items, results, strict=True):
        if item == BAD:
            assert isinstance(result, CommitFailed), result
        else:
            assert result == int(item), (item, result)
    # Split in halves, not retried item by item: about 2·log2(41) statements, not 41.
    assert len(recorder.batches) <= 16, [len(b) for b in recorder.batches]
    assert dropped == []  # a statement error never discards a connection
    if single_statement:
        assert len(set(recorder.backends)) == 1, recorder.backends


def _notification(time: datetime) -> Notification:
    return Notification(uuid.uuid4(), "identity.approved", "com.paxos", time, "event")


async def test_intake_stores_and_acknowledges_every_good_notification_of_a_batch_with_a_bad_one(
    engine: AsyncEngine,
) -> None:
    # A time that no decoder lets through any more (it is a 422 at the door), built here
    # directly: asyncpg cannot convert it to UTC, so it refuses the intake's whole statement.
    bad = _notification(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))))
    good = [_notification(datetime(2026, 1, 7, 14, 30, tzinfo=UTC)) for _ in range(60)]
    batch = [*good[:25], bad, *good[25:]]
    committer = GroupCommitter(engine, committers=1)
    dropped = _count_invalidations(engine)
    committer.start()
    try:
        results = await asyncio.gather(
            *(committer.submit(n, "{}") for n in batch), return_exceptions=True
        )
        assert await committer.submit(_notification(datetime.now(UTC)), "{}") is True
        # Taken before stop(): stopping cancels the writer, which may then drop its connection
        # (a cancelled statement leaves it in an unknown state); the bad item must not have.
        dropped_while_writing = list(dropped)
    finally:
        await committer.stop()
    for notification, result in zip(batch, results, strict=True):
        if notification is bad:
            assert isinstance(result, CommitFailed), result
        else:
            assert result is True, result
    assert dropped_while_writing == []
    async with engine.connect() as conn:
        stored = set(await conn.scalars(select(events.c.event_id)))
        journaled = await conn.scalar(select(func.count()).select_from(journal))
    assert {n.id for n in good} <= stored
    assert bad.id not in stored
    assert len(stored) == journaled == len(good) + 1
