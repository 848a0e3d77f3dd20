"""Audit test data: events journalled as the intake and fetcher would, a sealed journal, and
tampering done by hand as a superuser could."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.canonical import ROW_HASH_SQL
from service.store.audit.seals import seal_pending
from service.store.tables import confirmation_body

T0 = datetime(2026, 1, 7, 14, 30, 2, tzinfo=UTC)
WINDOW = {"since": "2026-01-07T00:00:00Z", "until": "2026-01-08T00:00:00Z"}  # the day of T0
RECENT = datetime.now(UTC) - timedelta(days=1)


async def add_events(
    engine: AsyncEngine,
    n: int,
    *,
    is_test: bool = False,
    time: datetime = T0,
    identity_id: str | None = None,
    fetched: bool = True,
) -> list[uuid.UUID]:
    """`n` events, each with its notification (and, if `fetched`, its full event, and for a
    test event Paxos's confirmation) journalled as the intake and the fetcher would, in one
    transaction."""
    ids = [uuid.uuid4() for _ in range(n)]
    async with engine.begin() as conn:
        for i, event_id in enumerate(ids):
            moment = time + timedelta(seconds=i)
            note = json.dumps(
                {
                    "id": str(event_id),
                    "type": "identity.approved",
                    "source": "com.paxos",
                    "time": moment.isoformat(),
                    "object": "event",
                    "is_test": is_test,
                }
            )
            await conn.execute(
                text(
                    "INSERT INTO events (event_id, type, source, time, object, is_test, "
                    "confirmed_is_test, deliveries, first_received_at, last_received_at, "
                    "receipt_times, status, fetched_at, identity_id) VALUES (:id, "
                    "'identity.approved', 'com.paxos', :time, 'event', :is_test, :confirmed, 1, "
                    "now(), now(), ARRAY[now()], :status, :fetched_at, :identity)"
                ),
                {
                    "id": event_id,
                    "time": moment,
                    "is_test": is_test,
                    "confirmed": is_test if fetched else None,
                    "status": "fetched" if fetched else "pending",
                    "fetched_at": datetime.now(UTC) if fetched else None,
                    "identity": identity_id,
                },
            )
            await conn.execute(
                text(
                    "INSERT INTO journal (event_id, kind, body) "
                    "VALUES (:id, 'notification', CAST(:body AS json))"
                ),
                {"id": event_id, "body": note},
            )
            if fetched:
                await conn.execute(
                    text(
                        "INSERT INTO journal (event_id, kind, body) "
                        "VALUES (:id, 'event', CAST(:body AS json))"
                    ),
                    {
                        "id": event_id,
                        "body": json.dumps(
                            {
                                "id": str(event_id),
                                "type": "identity.approved",
                                "identity_id": identity_id,
                            }
                        ),
                    },
                )
            if fetched and is_test:
                await conn.execute(
                    text(
                        "INSERT INTO journal (event_id, kind, body) "
                        "VALUES (:id, 'test_confirmation', CAST(:body AS json))"
                    ),
                    {"id": event_id, "body": confirmation_body("get_event")},
                )
    return ids


async def burn_position(engine: AsyncEngine) -> int:
    """Take a position and roll back: a gap in the journal's positions, as in production."""
    conn = await engine.connect()
    try:
        await conn.begin()
        position = await conn.scalar(
            text(
                "INSERT INTO journal (event_id, kind, body) "
                "VALUES (gen_random_uuid(), 'notification', '{}') RETURNING position"
            )
        )
        await conn.rollback()
    finally:
        await conn.close()
    assert position is not None
    return int(position)


async def tamper(engine: AsyncEngine, statement: str, params: dict[str, Any] | None = None) -> None:
    """What a superuser could do by hand: triggers off (replica role), then `statement`."""
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text(statement), params or {})


async def prune_by_hand(engine: AsyncEngine, *, triggers: bool = False) -> None:
    """What a prune does, done by hand on every event (as a superuser: triggers off unless
    `triggers`): each journal row on record with its true hash, then deleted, then the
    events rows."""
    async with engine.begin() as conn:
        if not triggers:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        prune_id = await conn.scalar(
            text(
                "INSERT INTO prunes (older_than_days, cutoff, events, journal_rows) "
                "VALUES (0, now(), 1, 2) RETURNING prune_id"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO pruned_journal_rows (position, event_id, kind, row_hash, prune_id) "
                f"SELECT j.position, j.event_id, j.kind, {ROW_HASH_SQL}, :prune_id "
                "FROM journal j"
            ),
            {"prune_id": prune_id},
        )
        await conn.execute(text("DELETE FROM journal"))
        await conn.execute(text("DELETE FROM events"))


async def sealed_journal(engine: AsyncEngine) -> None:
    """Three events (six rows), a burned position, two more (four rows); all sealed."""
    await add_events(engine, 3)
    await burn_position(engine)
    await add_events(engine, 2)
    assert await seal_pending(engine, max_rows=4)


def lines(body: str) -> list[dict[str, Any]]:
    """The records of a JSON Lines export."""
    return [json.loads(line) for line in body.splitlines()]


async def count(engine: AsyncEngine, sql: str) -> int:
    """The number a `SELECT count(*) ...` statement answers."""
    async with engine.connect() as conn:
        return int(await conn.scalar(text(sql)) or 0)
