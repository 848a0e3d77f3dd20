"""Rebuilding a projection from the journal without stopping reads.

1. Shadow tables (`<table>_rebuild`, primary key only) are filled from the journal in
   batches, each its own transaction, with the very statement the runner uses, moving a
   checkpoint of their own (`<name>@rebuild`). Short transactions matter: a long one would
   hold back `pg_snapshot_xmin` and with it every projection runner. A killed rebuild finds
   the shadow tables and their checkpoint and goes on from there.
2. The shadow's secondary indexes are built once the bulk is in (faster than maintaining
   them row by row).
3. One transaction swaps: it takes the live checkpoint's row lock (the runners skip the
   projection meanwhile), applies the tail that arrived since to the shadow, drops the live
   tables, renames the shadow tables and their indexes into place, and gives the live
   checkpoint the shadow's position. Readers see the old tables until the commit and the
   new ones after it; a reader's single statement never sees half of each.

Only one rebuild of a projection runs at a time (a session advisory lock).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.projections.runner import Projection, apply_batch, ensure_checkpoints
from service.store.tables import metadata

log = structlog.get_logger(__name__)

REBUILD_BATCH = 100_000
SHADOW_SUFFIX = "_rebuild"


class RebuildBusy(RuntimeError):
    """Another rebuild of the same projection is running."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a rebuild is: journal event rows applied to the shadow out of about `total`."""

    projection: str
    phase: str  # "building" | "indexing" | "swapping" | "done"
    done: int
    total: int
    resumed_from: int


ProgressCallback = Callable[[Progress], Awaitable[None]]


def shadow_name(table: str) -> str:
    """The shadow table a rebuild fills for `table`."""
    return table + SHADOW_SUFFIX


def rebuild_checkpoint(projection: Projection) -> str:
    """The name of the checkpoint row of `projection`'s shadow tables."""
    return projection.name + "@rebuild"


def _primary_key(table: str) -> tuple[str, list[str]]:
    pk = metadata.tables[table].primary_key
    return f"pk_{table}", [c.name for c in pk.columns]


async def _exists(conn: AsyncConnection, table: str) -> bool:
    return bool(await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}))


async def _prepare(conn: AsyncConnection, projection: Projection) -> bool:
    """Create the shadow tables unless a rebuild left them; True when resuming."""
    checkpoint = rebuild_checkpoint(projection)
    has_checkpoint = await conn.scalar(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n"), {"n": checkpoint}
    )
    shadows = [await _exists(conn, shadow_name(t)) for t in projection.tables]
    if has_checkpoint and all(shadows):
        return True
    for table in projection.tables:
        shadow = shadow_name(table)
        pk_name, pk_columns = _primary_key(table)
        await conn.execute(text(f"DROP TABLE IF EXISTS {shadow}"))
        await conn.execute(text(f"CREATE TABLE {shadow} (LIKE {table} INCLUDING DEFAULTS)"))
        await conn.execute(
            text(
                f"ALTER TABLE {shadow} ADD CONSTRAINT {pk_name}{SHADOW_SUFFIX} "
                f"PRIMARY KEY ({', '.join(pk_columns)})"
            )
        )
    await conn.execute(
        text(
            "INSERT INTO projection_checkpoints (name) VALUES (:n) ON CONFLICT (name) "
            "DO UPDATE SET xid = '0', position = 0, updated_at = now()"
        ),
        {"n": checkpoint},
    )
    return False


async def _secondary_indexes(conn: AsyncConnection, table: str) -> list[tuple[str, str]]:
    """(name, definition) of `table`'s indexes other than its primary key."""
    pk_name, _ = _primary_key(table)
    rows = await conn.execute(
        text(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = :t AND indexname <> :pk"
        ),
        {"t": table, "pk": pk_name},
    )
    return [(r.indexname, r.indexdef) for r in rows]


async def _index_shadow(conn: AsyncConnection, projection: Projection) -> None:
    """Give the shadow tables the live tables' secondary indexes (under shadow names)."""
    for table in projection.tables:
        shadow = shadow_name(table)
        for name, definition in await _secondary_indexes(conn, table):
            # pg_indexes gives "CREATE [UNIQUE] INDEX name ON [schema.]table USING ...".
            ddl = re.sub(
                rf"INDEX {re.escape(name)} ON (\S+\.)?{re.escape(table)} ",
                f"INDEX IF NOT EXISTS {name}{SHADOW_SUFFIX} ON {shadow} ",
                definition,
                count=1,
            )
            await conn.execute(text(ddl))


async def _count(conn: AsyncConnection, checkpoint: str | None) -> int:
    """Journal event rows up to `checkpoint` (all of them when None)."""
    if checkpoint is None:
        return int(
            await conn.scalar(text("SELECT count(*) FROM journal WHERE kind = 'event'")) or 0
        )
    return int(
        await conn.scalar(
            text(
                "SELECT count(*) FROM journal j, projection_checkpoints c WHERE c.name = :n "
                "AND j.kind = 'event' AND (j.xid, j.position) <= (c.xid, c.position)"
            ),
            {"n": checkpoint},
        )
        or 0
    )


async def _swap(conn: AsyncConnection, projection: Projection, batch: int) -> None:
    """Catch the shadow up under the live checkpoint's lock and put it in place."""
    # Waiting readers queue behind the rename's exclusive lock: bound the wait, and retry.
    await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
    await conn.execute(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n FOR UPDATE"),
        {"n": projection.name},
    )
    shadows = {t: shadow_name(t) for t in projection.tables}
    checkpoint = rebuild_checkpoint(projection)
    while await apply_batch(conn, projection, checkpoint=checkpoint, tables=shadows, limit=batch):
        pass
    for table in projection.tables:
        indexes = [name for name, _ in await _secondary_indexes(conn, table)]
        pk_name, _ = _primary_key(table)
        await conn.execute(text(f"DROP TABLE {table}"))
        await conn.execute(text(f"ALTER TABLE {shadows[table]} RENAME TO {table}"))
        for name in [pk_name, *indexes]:
            await conn.execute(text(f"ALTER INDEX {name}{SHADOW_SUFFIX} RENAME TO {name}"))
    await conn.execute(
        text(
            "UPDATE projection_checkpoints live SET xid = shadow.xid, position = shadow.position, "
            "updated_at = now() FROM projection_checkpoints shadow "
            "WHERE live.name = :live AND shadow.name = :shadow"
        ),
        {"live": projection.name, "shadow": checkpoint},
    )
    await conn.execute(
        text("DELETE FROM projection_checkpoints WHERE name = :n"), {"n": checkpoint}
    )


async def rebuild(
    engine: AsyncEngine,
    projection: Projection,
    *,
    batch: int = REBUILD_BATCH,
    progress: ProgressCallback | None = None,
) -> Progress:
    """Rebuild `projection` from the journal and swap it in; resumes a killed rebuild."""
    async with engine.connect() as lock_conn:
        await lock_conn.commit()
        lock_conn = await lock_conn.execution_options(isolation_level="AUTOCOMMIT")
        locked = await lock_conn.scalar(
            text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": "rebuild:" + projection.name}
        )
        if not locked:
            raise RebuildBusy(f"a rebuild of {projection.name} is already running")
        try:
            return await _rebuild(engine, projection, batch, progress)
        finally:
            await lock_conn.execute(
                text("SELECT pg_advisory_unlock(hashtext(:k))"),
                {"k": "rebuild:" + projection.name},
            )


async def _rebuild(
    engine: AsyncEngine, projection: Projection, batch: int, progress: ProgressCallback | None
) -> Progress:
    checkpoint = rebuild_checkpoint(projection)
    async with engine.begin() as conn:
        await ensure_checkpoints(conn, [projection.name])
        resumed = await _prepare(conn, projection)
    async with engine.connect() as conn:
        total = await _count(conn, None)
        done = await _count(conn, checkpoint) if resumed else 0
    state = Progress(projection.name, "building", done, total, done)
    log.info("rebuild started", projection=projection.name, resumed_from=done, total=total)

    async def report(**changes: object) -> None:
        nonlocal state
        from dataclasses import replace

        state = replace(state, **changes)  # type: ignore[arg-type]
        if progress is not None:
            await progress(state)

    await report()
    shadows = {t: shadow_name(t) for t in projection.tables}
    while True:
        async with engine.begin() as conn:
            # Big batches sort in memory rather than on disk.
            await conn.execute(text("SET LOCAL work_mem = '256MB'"))
            read = await apply_batch(
                conn, projection, checkpoint=checkpoint, tables=shadows, limit=batch
            )
        if read is None:
            raise RebuildBusy(f"the shadow checkpoint of {projection.name} is locked")
        await report(done=state.done + read, total=max(state.total, state.done + read))
        if read < batch:
            break
    await report(phase="indexing")
    async with engine.begin() as conn:
        await _index_shadow(conn, projection)
    await report(phase="swapping")
    for attempt in range(1, 11):
        try:
            async with engine.begin() as conn:
                await _swap(conn, projection, batch)
            break
        except DBAPIError as exc:
            # lock_timeout (55P03): readers held the tables; try again.
            if "lock timeout" not in str(exc) and "55P03" not in str(exc) or attempt == 10:
                raise
            log.warning("rebuild swap waited too long for a lock; retrying", attempt=attempt)
    async with engine.connect() as conn:
        final = await _count(conn, projection.name)
    await report(phase="done", done=final, total=max(final, state.total))
    log.info("rebuild done", projection=projection.name, events=final)
    return state
