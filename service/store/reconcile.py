"""The List Events passes' bookkeeping: each pass's window, counts and resume point, the
missed webhooks it found, and the lock that keeps one reconciler running per deployment."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.store.listed import Listed
from service.store.tables import reconcile_missed, reconcile_passes

# Any constant unique to this lock: pg_try_advisory_lock(key) is deployment-wide.
RECONCILER_LOCK = 0x7061786F735F7263  # "paxos_rc"

# What a pass shows to people (API and console): everything but its resume point and error.
PASS_COLUMNS = [c for c in reconcile_passes.c if c.name not in ("resume", "error")]


@dataclass(frozen=True, slots=True)
class Window:
    """What a pass lists: events created in [since, until), of `types` (all when empty)."""

    since: datetime
    until: datetime
    types: tuple[str, ...] = ()
    include_test: bool = False

    def listings(self) -> list[tuple[bool, str | None]]:
        """One List Events walk per (is_test, type): Paxos filters by one type at a time."""
        tests = (False, True) if self.include_test else (False,)
        types: tuple[str | None, ...] = self.types or (None,)
        return [(is_test, type_) for is_test in tests for type_ in types]


@dataclass(slots=True)
class Counts:
    """What a pass has listed so far: pages, events found, and of those missing and known."""

    pages: int = 0
    found: int = 0
    missing: int = 0
    known: int = 0


@dataclass(slots=True)
class PassState:
    """A pass as recorded: its window, counts, and where each listing has got to."""

    pass_id: int
    window: Window
    counts: Counts = field(default_factory=Counts)
    # listing key -> {"after": created_at of the last stored event} or {"done": true}
    resume: dict[str, dict[str, Any]] = field(default_factory=dict)


async def recent_passes(conn: AsyncConnection, limit: int) -> list[RowMapping]:
    """The newest List Events passes (reconciler and backfills) with their counts."""
    rows = await conn.execute(
        select(*PASS_COLUMNS).order_by(reconcile_passes.c.pass_id.desc()).limit(limit)
    )
    return [r._mapping for r in rows]


async def get_pass(conn: AsyncConnection, pass_id: int) -> RowMapping | None:
    """One pass as people see it (PASS_COLUMNS), or None."""
    row = (
        await conn.execute(select(*PASS_COLUMNS).where(reconcile_passes.c.pass_id == pass_id))
    ).one_or_none()
    return None if row is None else row._mapping


async def missed_in_pass(conn: AsyncConnection, pass_id: int) -> list[RowMapping]:
    """The missed webhooks a pass found (event_id, type, created_at), oldest first."""
    missed = await conn.execute(
        select(
            reconcile_missed.c.event_id,
            reconcile_missed.c.type,
            reconcile_missed.c.created_at,
        )
        .where(reconcile_missed.c.pass_id == pass_id)
        .order_by(reconcile_missed.c.created_at, reconcile_missed.c.event_id)
    )
    return [m._mapping for m in missed]


async def start_pass(
    engine: AsyncEngine, kind: str, window: Window, job_id: uuid.UUID | None = None
) -> PassState:
    """Record a new pass over `window`."""
    async with engine.begin() as conn:
        pass_id = (
            await conn.execute(
                insert(reconcile_passes)
                .values(
                    kind=kind,
                    job_id=job_id,
                    window_since=window.since,
                    window_until=window.until,
                    types=list(window.types),
                    include_test=window.include_test,
                )
                .returning(reconcile_passes.c.pass_id)
            )
        ).scalar_one()
    return PassState(int(pass_id), window)


async def load_pass(engine: AsyncEngine, pass_id: int) -> PassState:
    """A recorded pass, to resume it."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(reconcile_passes).where(reconcile_passes.c.pass_id == pass_id)
            )
        ).one()
    return PassState(
        row.pass_id,
        Window(row.window_since, row.window_until, tuple(row.types), row.include_test),
        Counts(row.pages, row.found, row.missing, row.known),
        dict(row.resume),
    )


async def unfinished_pass(
    engine: AsyncEngine, kind: str, window: Window | None = None
) -> int | None:
    """The newest pass of `kind` (over `window`, if given) that never finished, if any."""
    query = (
        select(reconcile_passes.c.pass_id)
        .where(
            reconcile_passes.c.kind == kind,
            reconcile_passes.c.status == "running",
            reconcile_passes.c.job_id.is_(None),
        )
        .order_by(reconcile_passes.c.pass_id.desc())
        .limit(1)
    )
    if window is not None:
        query = query.where(
            reconcile_passes.c.window_since == window.since,
            reconcile_passes.c.window_until == window.until,
            reconcile_passes.c.types == list(window.types),
            reconcile_passes.c.include_test == window.include_test,
        )
    async with engine.connect() as conn:
        found = await conn.scalar(query)
    return int(found) if found is not None else None


async def reconciled_until(conn: AsyncConnection) -> datetime | None:
    """The end of the latest window a finished reconciler pass covered, or None."""
    until: datetime | None = await conn.scalar(
        select(reconcile_passes.c.window_until)
        .where(reconcile_passes.c.kind == "reconcile", reconcile_passes.c.status == "done")
        .order_by(reconcile_passes.c.window_until.desc())
        .limit(1)
    )
    return until


async def save_pass(conn: AsyncConnection, state: PassState) -> None:
    """Record the pass's counts and where each listing has got to, in `conn`'s transaction."""
    await conn.execute(
        update(reconcile_passes)
        .where(reconcile_passes.c.pass_id == state.pass_id)
        .values(
            pages=state.counts.pages,
            found=state.counts.found,
            missing=state.counts.missing,
            known=state.counts.known,
            resume=state.resume,
        )
    )


async def finish_pass(conn: AsyncConnection, pass_id: int) -> None:
    """Mark the pass done."""
    await conn.execute(
        update(reconcile_passes)
        .where(reconcile_passes.c.pass_id == pass_id)
        .values(status="done", finished_at=text("now()"))
    )


_REPORT_MISSED = text(
    """
    INSERT INTO reconcile_missed (pass_id, event_id, type, created_at)
    SELECT :pass_id, * FROM unnest(
        CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:times AS timestamptz[]))
    ON CONFLICT DO NOTHING
    """
)


async def record_missed(conn: AsyncConnection, pass_id: int, lost: Sequence[Listed]) -> None:
    """Record the events a pass found that no webhook had brought."""
    await conn.execute(
        _REPORT_MISSED,
        {
            "pass_id": pass_id,
            "ids": [i.event_id for i in lost],
            "types": [i.type for i in lost],
            "times": [i.created_at for i in lost],
        },
    )


async def try_lock_reconciler(conn: AsyncConnection) -> bool:
    """Take the deployment's reconciler lock on `conn`'s session; False if another holds it."""
    return bool(
        await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": RECONCILER_LOCK})
    )


async def unlock_reconciler(conn: AsyncConnection) -> None:
    """Release the reconciler lock taken on `conn`'s session."""
    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RECONCILER_LOCK})
