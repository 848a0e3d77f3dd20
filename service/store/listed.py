"""Store events found by List Events (reconciler, backfill): the fetched event's own path."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.store.tables import TEST_CONFIRMATION, confirmation_body


@dataclass(frozen=True, slots=True)
class Listed:
    """A full event from List Events."""

    event_id: uuid.UUID
    type: str
    created_at: datetime
    is_test: bool  # the listing's `is_test` filter: Paxos's word
    raw: str  # the event exactly as Paxos sent it
    identity_id: str | None
    object_type: str | None
    undelivered_webhooks: int | None
    object_id: str | None  # paxos_event.object_id_of


# One statement for a page of listed events:
# - an id the store lacks gets an events row, already `fetched`, with `via = list_events` and
#   no delivery: a missed webhook;
# - a known id still waiting for its Get Event (same type) is completed from the listing: the
#   event is the same authenticated answer Paxos would give, so the fetch is not needed;
# - a known fetched id is left alone;
# - the journal gets the full event once (ON CONFLICT DO NOTHING), in the same transaction;
# - Paxos's word on the test flag (which listing held the event) is recorded as the fetcher
#   records it: `confirmed_is_test`, and a test event's `test_confirmation`. A pending event
#   keeps the `is_test` its notification said (it never changes), right or wrong.
# A webhook for the same id racing this statement either inserts first (this one then
# completes it) or conflicts after (and ends as `via = webhook`, counting its delivery).
_RECORD = text(
    """
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:times AS timestamptz[]),
            CAST(:is_tests AS bool[]), CAST(:raws AS text[]), CAST(:identity_ids AS text[]),
            CAST(:object_types AS text[]), CAST(:undelivered AS int[]), CAST(:object_ids AS text[])
        ) AS t(event_id, type, time, is_test, raw, identity_id, object_type, undelivered_webhooks,
               object_id)
    ),
    upserted AS (
        INSERT INTO events AS e (
            event_id, type, source, time, object, is_test, confirmed_is_test, status, via,
            deliveries, fetched_at, identity_id, object_type, undelivered_webhooks, object_id,
            next_attempt_at
        )
        SELECT event_id, type, 'com.paxos', time, 'event', is_test, is_test, 'fetched',
               'list_events', 0, clock_timestamp(), identity_id, object_type,
               undelivered_webhooks, object_id, NULL
        FROM input ORDER BY event_id
        ON CONFLICT (event_id) DO UPDATE SET
            status = 'fetched',
            confirmed_is_test = coalesce(e.confirmed_is_test, excluded.confirmed_is_test),
            object_id = excluded.object_id,
            identity_id = excluded.identity_id,
            object_type = excluded.object_type,
            undelivered_webhooks = excluded.undelivered_webhooks,
            fetched_at = excluded.fetched_at,
            lease_until = NULL,
            next_attempt_at = NULL,
            last_error = NULL
        WHERE e.status <> 'fetched' AND e.type = excluded.type
        RETURNING e.event_id, (e.xmax = 0) AS inserted
    ),
    appended AS (
        INSERT INTO journal (event_id, kind, body)
        SELECT i.event_id, 'event', CAST(i.raw AS json)
        FROM input i JOIN upserted u ON u.event_id = i.event_id
        UNION ALL
        SELECT i.event_id, '{confirmation}', CAST('{confirmed_by_listing}' AS json)
        FROM input i JOIN upserted u ON u.event_id = i.event_id
        WHERE i.is_test
        ORDER BY 1, 2
        ON CONFLICT (event_id, kind) DO NOTHING
    )
    SELECT event_id, inserted FROM upserted
    """.replace("{confirmation}", TEST_CONFIRMATION).replace(
        "{confirmed_by_listing}", confirmation_body("list_events")
    )
)


async def record_listed(conn: AsyncConnection, listed: Sequence[Listed]) -> set[uuid.UUID]:
    """Store what the store lacks of `listed`; return the ids it lacked. Does not commit."""
    if not listed:
        return set()
    rows = sorted({item.event_id: item for item in listed}.values(), key=lambda i: i.event_id)
    result = await conn.execute(
        _RECORD,
        {
            "ids": [r.event_id for r in rows],
            "types": [r.type for r in rows],
            "times": [r.created_at for r in rows],
            "is_tests": [r.is_test for r in rows],
            "raws": [r.raw for r in rows],
            "identity_ids": [r.identity_id for r in rows],
            "object_types": [r.object_type for r in rows],
            "undelivered": [r.undelivered_webhooks for r in rows],
            "object_ids": [r.object_id for r in rows],
        },
    )
    return {row.event_id for row in result if row.inserted}
