"""Record webhook notifications: one statement for a whole batch, idempotent by event id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.notification import Notification
from service.store.tables import RECEIPT_TIMES_KEPT


@dataclass(frozen=True, slots=True)
class Received:
    """One distinct notification of a batch, with how many times it was delivered in it."""

    notification: Notification
    body: str  # the JSON body exactly as received
    deliveries: int = 1


# One round trip records the whole batch:
# - `events` gets a row per new id; a known id only gets `deliveries` and `last_received_at`
#   bumped, and its receipt time appended to `receipt_times` (the audit export's evidence)
#   (ON CONFLICT ... DO UPDATE, so concurrent duplicates wait on the row lock instead of
#   failing). `xmax = 0` on the returned row tells an insert from a conflict-update.
# - the journal gets the notification the first time it is received (for a new id, or for
#   an event the reconciler stored before its webhook came); ON CONFLICT DO NOTHING keeps it
#   append-only and idempotent even if two processes race.
# Rows go in event_id order so two concurrent batches lock rows in the same order and cannot
# deadlock.
# A webhook for an event first learned from List Events marks it as delivered by webhook.
# The statement goes to the asyncpg connection underneath SQLAlchemy: on this hottest path
# SQLAlchemy's execute costs more than the statement's own planning (measured per batch), and
# a single statement needs nothing of the ORM or of SQLAlchemy's transaction handling.
_RECORD = """
    WITH input AS (
        SELECT * FROM unnest(
            CAST($1 AS uuid[]), CAST($2 AS text[]), CAST($3 AS text[]),
            CAST($4 AS timestamptz[]), CAST($5 AS text[]), CAST($6 AS bool[]),
            CAST($7 AS int[]), CAST($8 AS text[])
        ) AS t(event_id, type, source, time, object, is_test, deliveries, body)
    ),
    upserted AS (
        INSERT INTO events AS e (
            event_id, type, source, time, object, is_test, deliveries,
            first_received_at, last_received_at, receipt_times, next_attempt_at
        )
        SELECT event_id, type, source, time, object, is_test, deliveries,
               statement_timestamp(), statement_timestamp(),
               array_fill(statement_timestamp(), ARRAY[deliveries]), now()
        FROM input ORDER BY event_id
        ON CONFLICT (event_id) DO UPDATE SET
            deliveries = e.deliveries + excluded.deliveries,
            last_received_at = excluded.last_received_at,
            -- Every receipt time up to the first RECEIPT_TIMES_KEPT; past that the array is
            -- left as it is (not even rewritten: an id delivered over and over costs no more).
            receipt_times = CASE
                WHEN coalesce(cardinality(e.receipt_times), 0) >= RECEIPT_TIMES_KEPT
                THEN e.receipt_times
                ELSE (coalesce(e.receipt_times, '{}') || excluded.receipt_times)[
                    1:RECEIPT_TIMES_KEPT]
            END,
            first_received_at = coalesce(e.first_received_at, excluded.first_received_at),
            via = 'webhook'
        RETURNING e.event_id, (e.xmax = 0) AS inserted
    ),
    appended AS (
        INSERT INTO journal (event_id, kind, body)
        SELECT i.event_id, 'notification', CAST(i.body AS json)
        FROM input i JOIN upserted u ON u.event_id = i.event_id
        -- New ids, and known ids whose notification we never received (an event first
        -- learned from List Events): the journal keeps every notification once.
        WHERE u.inserted OR NOT EXISTS (
            SELECT 1 FROM journal j WHERE j.event_id = i.event_id AND j.kind = 'notification'
        )
        ORDER BY i.event_id
        ON CONFLICT (event_id, kind) DO NOTHING
    )
    SELECT event_id, inserted FROM upserted
""".replace("RECEIPT_TIMES_KEPT", str(RECEIPT_TIMES_KEPT))


async def record_notifications(
    conn: AsyncConnection, batch: Sequence[Received]
) -> dict[uuid.UUID, bool]:
    """Record `batch` (distinct ids); return for each id whether it was new. Does not commit."""
    rows = sorted(batch, key=lambda r: r.notification.id)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    result = await driver.fetch(
        _RECORD,
        [r.notification.id for r in rows],
        [r.notification.type for r in rows],
        [r.notification.source for r in rows],
        [r.notification.time for r in rows],
        [r.notification.object for r in rows],
        [r.notification.is_test for r in rows],
        [r.deliveries for r in rows],
        [r.body for r in rows],
    )
    return {uuid.UUID(bytes=row["event_id"].bytes): row["inserted"] for row in result}


async def prefer_generic_plans(conn: AsyncConnection) -> None:
    """Plan the intake statement once per connection, not once per batch.

    Its plan never depends on its values; Postgres would otherwise plan it anew for each
    batch (measured: planning took as long as running it).
    """
    await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
