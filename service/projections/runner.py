"""The projection runner: applies new journal events to every projection, in any process.

Each projection has a checkpoint row. A round locks it (`FOR UPDATE SKIP LOCKED`), applies
the next batch with one statement (`sql.apply_statement`), which moves the checkpoint, and
commits: the rows and the checkpoint change together or not at all, so a crash anywhere
leaves a projection equal to a replay up to its checkpoint. Another process that finds the
row locked skips it, so any number of `serve` and `worker` copies can run a runner and each
batch is applied by exactly one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.outages import STORE_ERRORS, Outage
from service.projections.sql import apply_statement
from service.telemetry import metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Projection:
    """A projection: its name (and checkpoint's) and the tables it owns."""

    name: str
    tables: tuple[str, ...]

    def live_tables(self) -> dict[str, str]:
        """Each of its tables, by its own name."""
        return {t: t for t in self.tables}


IDENTITIES = Projection("identities", ("identities", "identity_controls"))
TRANSFERS = Projection("transfers", ("transfers",))
ORCHESTRATIONS = Projection("orchestrations", ("orchestrations",))
PROJECTIONS: dict[str, Projection] = {p.name: p for p in (IDENTITIES, TRANSFERS, ORCHESTRATIONS)}

BATCH_SIZE = 2000
RETRY_CAP_S = 2.0  # the longest pause between two tries while the database is unavailable
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


class Projector:
    """Keeps every projection caught up with the journal, until cancelled."""

    def __init__(
        self,
        engine: AsyncEngine,
        projections: Iterable[Projection] = PROJECTIONS.values(),
        *,
        batch_size: int = BATCH_SIZE,
        poll_s: float = 0.2,
        lag_every_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._projections = tuple(projections)
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._lag_every_s = lag_every_s
        self.wakeup = asyncio.Event()

    async def catch_up(self) -> int:
        """Apply batches to every projection until none has more (or another process is
        applying it); the number of journal rows consumed."""
        async with self._engine.begin() as conn:
            await ensure_checkpoints(conn, (p.name for p in self._projections))
        total = 0
        for projection in self._projections:
            while True:
                async with self._engine.begin() as conn:
                    read = await apply_batch(conn, projection, limit=self._batch_size)
                if not read:
                    break
                total += read
                if read < self._batch_size:
                    break
        return total

    async def run(self) -> None:
        """Catch up, then poll (the wake-up event shortens the wait)."""
        next_lag = 0.0
        # The database is away: try again soon, but not five times a second (and never
        # longer than RETRY_CAP_S after it is back).
        outage = Outage("projections", first_s=2 * self._poll_s, cap_s=RETRY_CAP_S)
        while True:
            # Cleared before catching up, so a wake-up that comes during it is not lost.
            self.wakeup.clear()
            wait_s = self._poll_s
            try:
                await self.catch_up()
                if time.monotonic() >= next_lag:
                    async with self._engine.connect() as conn:
                        await lag(conn, (p.name for p in self._projections))
                    next_lag = time.monotonic() + self._lag_every_s
                outage.succeeded()
            except STORE_ERRORS as exc:
                wait_s = outage.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), wait_s)
