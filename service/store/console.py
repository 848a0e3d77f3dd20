"""Reads only the console needs: an event's journal rows, the pipeline's state, recent jobs.

Everything the API also shows is read through the API's own store functions (events,
projections, backlog, lag, jobs); these are the few views the API has no route for.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.stored import EVENT_STATUSES, Event
from service.store.events import EVENT_SELECT
from service.store.tables import TRANSFER_EVENTS, TRANSFER_OBJECT_ID, events


async def event_status(conn: AsyncConnection, event_id: uuid.UUID) -> str | None:
    """One event's status, or None if there is no such event (both refetches check it)."""
    status: str | None = await conn.scalar(
        select(events.c.status).where(events.c.event_id == event_id)
    )
    return status


@dataclass(frozen=True, slots=True)
class JournalRow:
    position: int
    kind: str
    recorded_at: datetime
    xid: int
    body: str  # as stored: the exact text received from Paxos

    @property
    def pretty(self) -> str:
        """The body indented for reading (the stored text stays as it was)."""
        try:
            return json.dumps(json.loads(self.body), indent=2, ensure_ascii=False)
        except ValueError:
            return self.body


async def journal_rows(conn: AsyncConnection, event_id: uuid.UUID) -> list[JournalRow]:
    """Every journal row of one event (a notification, then the full event), by position."""
    rows = await conn.execute(
        text(
            "SELECT position, kind, recorded_at, xid::text::bigint AS xid, body::text AS body "
            "FROM journal WHERE event_id = :id ORDER BY position"
        ),
        {"id": event_id},
    )
    return [JournalRow(r.position, r.kind, r.recorded_at, r.xid, r.body) for r in rows]


async def status_counts(conn: AsyncConnection) -> dict[str, int]:
    """How many events are in each status other than `fetched` (index-only counts: these
    statuses are rare, and counting every fetched event would read the whole table)."""
    rare = [s for s in EVENT_STATUSES if s != "fetched"]
    rows = await conn.execute(
        text(
            "SELECT s.status, (SELECT count(*) FROM events e WHERE e.status = s.status) AS n "
            "FROM unnest(CAST(:statuses AS text[])) AS s(status)"
        ),
        {"statuses": rare},
    )
    return {r.status: int(r.n) for r in rows}


EXACT_COUNT_BELOW = 100_000


async def stored_events(conn: AsyncConnection) -> tuple[int, bool]:
    """How many events are stored, and whether that is exact: counted while the table is
    small, else the planner's estimate (counting millions of rows on every page view would
    cost more than the figure is worth)."""
    estimate = await conn.scalar(
        text("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'events'::regclass")
    )
    if int(estimate or 0) >= EXACT_COUNT_BELOW:
        return int(estimate or 0), False
    return int(await conn.scalar(text("SELECT count(*) FROM events")) or 0), True


@dataclass(frozen=True, slots=True)
class RateLimitUse:
    name: str
    booked_ahead_s: float  # how far the limiter's next free slot is ahead of now
    paused_for_s: float  # a 429 from Paxos paused every caller for this much longer


async def rate_limits(conn: AsyncConnection) -> list[RateLimitUse]:
    """Each deployment-wide rate limit's state (service.paxos.ratelimit keeps it)."""
    rows = await conn.execute(
        text(
            "SELECT name, greatest(extract(epoch FROM tat - now()), 0) AS ahead, "
            "greatest(coalesce(extract(epoch FROM paused_until - now()), 0), 0) AS paused "
            "FROM rate_limits ORDER BY name"
        )
    )
    return [RateLimitUse(r.name, float(r.ahead), float(r.paused)) for r in rows]


async def recent_jobs(conn: AsyncConnection, limit: int = 10) -> list[dict[str, Any]]:
    """The newest jobs (backfills, rebuilds), newest first."""
    rows = await conn.execute(
        text(
            "SELECT job_id, kind, params, state, progress, error, created_at, finished_at "
            "FROM jobs ORDER BY created_at DESC LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [dict(r._mapping) for r in rows]


# A transfer's events, newest first, through their index (found by the id inside the full
# event, for transfer events only: the same expressions as the index's).
TRANSFER_EVENTS_SQL = (
    f"SELECT {EVENT_SELECT} FROM events "
    f"WHERE {TRANSFER_EVENTS} AND {TRANSFER_OBJECT_ID} = :id "
    'ORDER BY "time" DESC, event_id DESC LIMIT :limit'
)


async def transfer_events(conn: AsyncConnection, transfer_id: str, limit: int = 100) -> list[Event]:
    """The newest events about one transfer (its object's id), newest first."""
    rows = await conn.execute(text(TRANSFER_EVENTS_SQL), {"id": transfer_id, "limit": limit})
    return [Event(*tuple(r)) for r in rows]
