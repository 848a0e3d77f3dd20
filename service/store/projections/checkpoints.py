"""The projections' checkpoints: creating them, applying the next batch under one's lock,
and how far each projection is behind the journal.

Each projection has a checkpoint row. `apply_batch` locks it (`FOR UPDATE SKIP LOCKED`) and
applies the next batch with one statement (`fold.apply_statement`), which moves the
checkpoint, in the caller's transaction: the rows and the checkpoint change together or not
at all. Another transaction that finds the row locked skips it, so each batch is applied by
exactly one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.store.projections.fold import apply_statement
from service.store.projections.registry import PROJECTIONS, Projection
from service.telemetry import metrics

BATCH_SIZE = 2000
LAG_CAP = 100_000

_LOCK = text(
    "SELECT xid, position FROM projection_checkpoints WHERE name = :name FOR UPDATE SKIP LOCKED"
)


async def ensure_checkpoints(conn: AsyncConnection, names: Iterable[str]) -> None:
    """Create the checkpoint rows that do not exist yet (at the journal's start)."""
    await conn.execute(
        text(
            "INSERT INTO projection_checkpoints (name) SELECT unnest(CAST(:names AS text[])) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        {"names": list(names)},
    )


async def apply_batch(
    conn: AsyncConnection,
    projection: Projection,
    *,
    checkpoint: str | None = None,
    tables: Mapping[str, str] | None = None,
    limit: int = BATCH_SIZE,
) -> int | None:
    """Apply the next batch of at most `limit` journal rows in `conn`'s transaction.

    Returns the number of journal rows consumed (0: caught up), or None when another
    transaction holds the checkpoint (it is applying this batch). `checkpoint` and `tables`
    default to the live ones; a rebuild passes its own.
    """
    name = checkpoint or projection.name
    row = (await conn.execute(_LOCK, {"name": name})).one_or_none()
    if row is None:
        return None
    statement = apply_statement(projection.name, tables or projection.live_tables())
    result = (
        await conn.execute(
            statement,
            {"xid": int(row.xid), "position": row.position, "limit": limit, "checkpoint": name},
        )
    ).one()
    return int(result.read)


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a projection is behind the journal."""

    name: str
    events_behind: int  # journal event rows not applied yet (counted up to LAG_CAP)
    seconds_behind: float  # age of the oldest of them; 0 when caught up


_LAG = text(
    f"""
    SELECT n.name, s.behind, coalesce(extract(epoch FROM now() - s.oldest), 0) AS seconds
    FROM unnest(CAST(:names AS text[])) AS n(name)
    LEFT JOIN projection_checkpoints c ON c.name = n.name
    CROSS JOIN LATERAL (
        SELECT count(*) AS behind, min(recorded_at) AS oldest FROM (
            SELECT j.recorded_at FROM journal j
            WHERE j.kind = 'event'
              AND (j.xid, j.position) > (coalesce(c.xid, CAST('0' AS xid8)),
                                         coalesce(c.position, 0))
            ORDER BY j.xid, j.position
            LIMIT {LAG_CAP}
        ) pending
    ) s
    ORDER BY n.name
    """
)


async def lag(conn: AsyncConnection, names: Iterable[str] = PROJECTIONS) -> list[Lag]:
    """Each projection's lag; also published as the `paxos_projection_lag_*` gauges."""
    rows = (await conn.execute(_LAG, {"names": list(names)})).all()
    lags = [Lag(r.name, int(r.behind), max(0.0, float(r.seconds))) for r in rows]
    for item in lags:
        metrics.PROJECTION_LAG_EVENTS.labels(item.name).set(item.events_behind)
        metrics.PROJECTION_LAG_SECONDS.labels(item.name).set(item.seconds_behind)
    return lags
