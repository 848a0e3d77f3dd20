"""The fetch queue: pending events claimed with leases, and the outcome of each fetch.

Claims are short transactions of their own (`FOR UPDATE SKIP LOCKED`, so workers never wait
on each other's rows) that set a lease; the HTTP call happens outside any transaction; the
outcome is written in another. A worker that dies leaves leases that simply expire, and its
events become due again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.notify import PENDING_CHANNEL
from service.store.tables import TEST_CONFIRMATION, confirmation_body


@dataclass(frozen=True, slots=True)
class Claim:
    """A pending event this worker may fetch until its lease ends."""

    event_id: uuid.UUID
    type: str
    is_test: bool
    attempts: int  # including this one
    first_received_at: datetime | None


@dataclass(frozen=True, slots=True)
class FetchedOutcome:
    event_id: uuid.UUID
    raw: str  # the full event exactly as Paxos sent it
    identity_id: str | None
    object_type: str | None
    undelivered_webhooks: int | None
    is_test: bool  # what Paxos said: Get Event answered with this `is_test`
    object_id: str | None  # paxos_event.object_id_of


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    event_id: uuid.UUID
    delay_s: float
    error: str


@dataclass(frozen=True, slots=True)
class FinalOutcome:
    event_id: uuid.UUID
    status: str  # "failed" | "not_found"
    error: str


Outcome = FetchedOutcome | RetryOutcome | FinalOutcome

_CLAIM = text(
    """
    UPDATE events e
    SET lease_until = now() + make_interval(secs => :lease_s), attempts = e.attempts + 1
    WHERE e.event_id IN (
        SELECT event_id FROM events
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND (lease_until IS NULL OR lease_until < now())
        ORDER BY next_attempt_at
        LIMIT :n
        FOR UPDATE SKIP LOCKED
    )
    RETURNING e.event_id, e.type, e.is_test, e.attempts, e.first_received_at
    """
)

# Every outcome of a batch in one statement, so that it commits on its own (the writer keeps
# an autocommit connection: no BEGIN and COMMIT round trips per batch). The full event joins
# the journal (once: ON CONFLICT DO NOTHING) and its events row becomes `fetched` together.
# The journal keeps the exact text (and what the projections read of it parsed, `doc`,
# computed by PostgreSQL); the events row, the object's id its events are found by. jsonb
# cannot hold \u0000, so the parsed copies replace it (the journal's body does not). Paxos's
# word on the test flag is recorded with the event, once (a trigger refuses changing it):
# `confirmed_is_test`, and for a test event the journal's `test_confirmation`, the evidence a
# prune needs. Retries and final failures only touch rows still pending (a refetch or another
# worker may have moved them on).
_OUTCOMES = text(
    """
    WITH fetched_in AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:raws AS text[]), CAST(:identity_ids AS text[]),
            CAST(:object_types AS text[]), CAST(:undelivered AS int[]), CAST(:is_tests AS bool[]),
            CAST(:object_ids AS text[])
        ) AS t(event_id, raw, identity_id, object_type, undelivered_webhooks, is_test, object_id)
    ),
    appended AS (
        INSERT INTO journal (event_id, kind, body)
        SELECT event_id, 'event', CAST(raw AS json) FROM fetched_in
        UNION ALL
        SELECT event_id, '{confirmation}', CAST('{confirmed_by_get_event}' AS json)
        FROM fetched_in WHERE is_test
        ORDER BY 1, 2
        ON CONFLICT (event_id, kind) DO NOTHING
    ),
    fetched AS (
        UPDATE events e SET
            status = 'fetched',
            confirmed_is_test = coalesce(e.confirmed_is_test, i.is_test),
            object_id = i.object_id,
            identity_id = i.identity_id,
            object_type = i.object_type,
            undelivered_webhooks = i.undelivered_webhooks,
            fetched_at = clock_timestamp(),
            lease_until = NULL,
            next_attempt_at = NULL,
            last_error = NULL
        FROM fetched_in i
        WHERE e.event_id = i.event_id
    ),
    retried AS (
        UPDATE events e SET
            next_attempt_at = clock_timestamp() + make_interval(secs => i.delay_s),
            last_error = i.error,
            lease_until = NULL
        FROM unnest(
            CAST(:retry_ids AS uuid[]), CAST(:delays AS float8[]), CAST(:retry_errors AS text[])
        ) AS i(event_id, delay_s, error)
        WHERE e.event_id = i.event_id AND e.status = 'pending'
    )
    UPDATE events e SET
        status = i.status,
        last_error = i.error,
        lease_until = NULL,
        next_attempt_at = NULL
    FROM unnest(
        CAST(:final_ids AS uuid[]), CAST(:statuses AS text[]), CAST(:final_errors AS text[])
    ) AS i(event_id, status, error)
    WHERE e.event_id = i.event_id AND e.status = 'pending'
    """.replace("{confirmation}", TEST_CONFIRMATION).replace(
        "{confirmed_by_get_event}", confirmation_body("get_event")
    )
)

_MAKE_DUE = text(
    """
    UPDATE events SET status = 'pending', next_attempt_at = now(), lease_until = NULL
    WHERE status IN ('pending', 'failed', 'not_found') AND (:all_ OR event_id = :event_id)
    RETURNING event_id
    """
)


async def claim_due(engine: AsyncEngine, n: int, lease_s: float) -> list[Claim]:
    """Claim up to `n` due pending events for `lease_s` seconds (own short transaction)."""
    async with engine.connect() as conn:
        # One statement, which Postgres runs as a transaction of its own: in autocommit mode
        # the claim costs one round trip instead of three (BEGIN, claim, COMMIT).
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        rows = await conn.execute(_CLAIM, {"n": n, "lease_s": lease_s})
        return [Claim(r.event_id, r.type, r.is_test, r.attempts, r.first_received_at) for r in rows]


async def record_outcomes(conn: AsyncConnection, outcomes: Sequence[Outcome]) -> list[None]:
    """Write fetch outcomes (stored events, retries scheduled, final failures) in one
    statement. No commit."""
    # One lock order for concurrent writers.
    ordered = sorted(outcomes, key=lambda o: o.event_id)
    fetched = [o for o in ordered if isinstance(o, FetchedOutcome)]
    retries = [o for o in ordered if isinstance(o, RetryOutcome)]
    finals = [o for o in ordered if isinstance(o, FinalOutcome)]
    await conn.execute(
        _OUTCOMES,
        {
            "ids": [o.event_id for o in fetched],
            "raws": [o.raw for o in fetched],
            "identity_ids": [o.identity_id for o in fetched],
            "object_types": [o.object_type for o in fetched],
            "undelivered": [o.undelivered_webhooks for o in fetched],
            "is_tests": [o.is_test for o in fetched],
            "object_ids": [o.object_id for o in fetched],
            "retry_ids": [o.event_id for o in retries],
            "delays": [o.delay_s for o in retries],
            "retry_errors": [o.error for o in retries],
            "final_ids": [o.event_id for o in finals],
            "statuses": [o.status for o in finals],
            "final_errors": [o.error for o in finals],
        },
    )
    return [None] * len(outcomes)


_BACKLOG = text(
    """
    SELECT count(*) AS pending, extract(epoch FROM now() - min(first_received_at)) AS oldest
    FROM events WHERE status = 'pending'
    """
)


@dataclass(frozen=True, slots=True)
class Backlog:
    """Events waiting for their Get Event, and how long the oldest has waited."""

    pending: int
    oldest_pending_age_s: float | None


async def fetch_backlog(conn: AsyncConnection) -> Backlog:
    """The fetch queue's size and age (readiness and metrics report it)."""
    row = (await conn.execute(_BACKLOG)).one()
    return Backlog(int(row.pending), float(row.oldest) if row.oldest is not None else None)


async def make_due(conn: AsyncConnection, event_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    """Make one event (or every unfetched one) due for a new Get Event now, and wake the
    fetchers when the caller's transaction commits."""
    rows = await conn.execute(_MAKE_DUE, {"all_": event_id is None, "event_id": event_id})
    due = [r.event_id for r in rows]
    if due:
        await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": PENDING_CHANNEL})
    return due
