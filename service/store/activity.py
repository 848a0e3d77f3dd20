"""The console's activity per minute: recorded by each process's sampler, read by the charts.

A minute's row (`activity_samples`) holds the journal rows recorded in it (webhooks first
received: `notification` rows; full events stored, by Get Event or List Events: `event`
rows), the Get Events that did not bring their event (each process adds its own), and the
fetch backlog, fetch lag (age of the oldest pending event) and projection lag as sampled
during it. The journal counts are recounted, never added up, so every process may write
them; the newest minutes are recounted on every read too, so a chart moves as events arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

KEEP_DAYS = 7
# Minutes recounted from the journal on every read (a sample may be up to a pass old, and a
# transaction that began in the previous minute commits rows recorded in it).
LIVE_MINUTES = 3


# Journal rows per minute since :since, each minute of the range present (zeros included).
# `recorded_at` is the inserting transaction's start, read through the journal's BRIN index.
def _counts(since: str) -> str:
    return f"""
    SELECT m.minute, coalesce(c.received, 0) AS received, coalesce(c.fetched, 0) AS fetched
    FROM generate_series(date_trunc('minute', {since}),
                         date_trunc('minute', now()), interval '1 minute') AS m(minute)
    LEFT JOIN (
        SELECT date_trunc('minute', recorded_at) AS minute,
               count(*) FILTER (WHERE kind = 'notification') AS received,
               count(*) FILTER (WHERE kind = 'event') AS fetched
        FROM journal
        WHERE recorded_at >= date_trunc('minute', {since})
        GROUP BY 1
    ) c USING (minute)
    """


_RECOUNT = text(
    f"""
    INSERT INTO activity_samples (minute, received, fetched)
    SELECT minute, received, fetched FROM ({_counts("CAST(:since AS timestamptz)")}) c
    ORDER BY minute  -- one lock order for processes writing the same minutes
    ON CONFLICT (minute) DO UPDATE
    SET received = excluded.received, fetched = excluded.fetched
    """
)

_GAUGES = text(
    """
    INSERT INTO activity_samples (minute, failed, backlog, fetch_lag_s, projection_behind,
                                  projection_lag_s, sampled_at)
    VALUES (date_trunc('minute', now()), :failed, :backlog, :fetch_lag_s, :projection_behind,
            :projection_lag_s, now())
    ON CONFLICT (minute) DO UPDATE
    SET failed = activity_samples.failed + excluded.failed,
        backlog = excluded.backlog,
        fetch_lag_s = excluded.fetch_lag_s,
        projection_behind = excluded.projection_behind,
        projection_lag_s = excluded.projection_lag_s,
        sampled_at = excluded.sampled_at
    """
)

_PRUNE = text(f"DELETE FROM activity_samples WHERE minute < now() - interval '{KEEP_DAYS} days'")


@dataclass(frozen=True, slots=True)
class Gauges:
    """The deployment's state at one moment, as a sample records it."""

    backlog: int
    fetch_lag_s: float | None  # age of the oldest pending event; None when none is pending
    projection_behind: int  # the most any projection is behind, in journal events
    projection_lag_s: float  # ... and in time


async def record(
    conn: AsyncConnection, *, recount_since: datetime, gauges: Gauges, failed: int
) -> None:
    """Recount the journal's minutes since `recount_since`, and write this minute's gauges and
    `failed` more Get Event failures (this process's since its last sample)."""
    await conn.execute(_RECOUNT, {"since": recount_since})
    await conn.execute(
        _GAUGES,
        {
            "failed": failed,
            "backlog": gauges.backlog,
            "fetch_lag_s": gauges.fetch_lag_s,
            "projection_behind": gauges.projection_behind,
            "projection_lag_s": gauges.projection_lag_s,
        },
    )


async def prune(conn: AsyncConnection) -> int:
    """Delete the samples older than KEEP_DAYS; how many went."""
    result = await conn.execute(_PRUNE)
    return int(result.rowcount or 0)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A span of `minutes` minutes starting at `start`: counts added up, gauges at their
    highest (None: nothing was sampled in it)."""

    start: datetime
    received: int
    fetched: int
    failed: int
    backlog: int | None
    fetch_lag_s: float | None
    projection_behind: int | None
    projection_lag_s: float | None


_ACTIVITY = text(
    f"""
    WITH live AS ({_counts(f"now() - interval '{LIVE_MINUTES - 1} minutes'")}),
    minutes AS (
        SELECT m.minute,
               coalesce(l.received, s.received, 0) AS received,
               coalesce(l.fetched, s.fetched, 0) AS fetched,
               coalesce(s.failed, 0) AS failed,
               s.backlog, s.fetch_lag_s, s.projection_behind, s.projection_lag_s
        FROM generate_series(
                 date_trunc('minute', now()) - (CAST(:minutes AS integer) - 1) * interval '1 min',
                 date_trunc('minute', now()), interval '1 minute') AS m(minute)
        LEFT JOIN activity_samples s ON s.minute = m.minute
        LEFT JOIN live l ON l.minute = m.minute
    )
    SELECT min(minute) AS start, sum(received) AS received, sum(fetched) AS fetched,
           sum(failed) AS failed, max(backlog) AS backlog, max(fetch_lag_s) AS fetch_lag_s,
           max(projection_behind) AS projection_behind,
           max(projection_lag_s) AS projection_lag_s
    FROM minutes
    GROUP BY (CAST(extract(epoch FROM minute) AS bigint) / 60) / CAST(:bucket AS integer)
    ORDER BY start
    """
)


async def activity(conn: AsyncConnection, *, minutes: int, bucket_minutes: int = 1) -> list[Bucket]:
    """The last `minutes` minutes up to the current one, oldest first, in buckets of
    `bucket_minutes` (aligned on the epoch: a bucket at the window's start may be partial)."""
    rows = await conn.execute(_ACTIVITY, {"minutes": minutes, "bucket": bucket_minutes})
    return [
        Bucket(
            r.start,
            int(r.received),
            int(r.fetched),
            int(r.failed),
            r.backlog,
            r.fetch_lag_s,
            r.projection_behind,
            r.projection_lag_s,
        )
        for r in rows
    ]
