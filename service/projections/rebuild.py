"""Rebuilding a projection from the journal without stopping reads.

1. Staging: every journal `event` row below the horizon (`pg_snapshot_xmin` when the rebuild
   starts: every transaction before it has ended, so the rows below it are all there is) goes
   through the runner's extract (`sql.stage_statement`) into an unlogged staging table,
   `<name>_rebuild_facts`. Chunks of `batch` rows, each its own short transaction (a long one
   would hold back `pg_snapshot_xmin` and with it every projection runner), run on `WORKERS`
   connections at once: the parse is most of the work and the fold is order-independent. A
   chunk records itself in `<name>_rebuild_chunks` in its own transaction, so a killed rebuild
   keeps the chunks done from the start and redoes the rest.
2. Folding: the staging table is folded into the empty shadow tables (`<table>_rebuild`,
   without even their primary keys) with the runner's fold (`sql.fold_statement`, as plain
   INSERTs), so each subject is written once rather than once per chunk. The staging table
   is split by a hash of the subject into parts of about FOLD_EVENTS rows, folded one
   transaction each, on `WORKERS` connections at once (parts share no subject). A fold that
   dies is redone from the staging table; once done, one transaction builds the shadow's
   primary keys, drops the staging tables and sets the shadow's own checkpoint
   (`<name>@rebuild`) to where the shadow stands.
3. Catching up: the runner's statement applies what arrived since, batch by batch.
4. The shadow's secondary indexes are built once the bulk is in (faster than maintaining
   them row by row).
5. One transaction swaps: it takes the live checkpoint's row lock (the runners skip the
   projection meanwhile), applies the tail that arrived since to the shadow, drops the live
   tables, renames the shadow tables and their indexes into place, and gives the live
   checkpoint the shadow's position. Readers see the old tables until the commit and the
   new ones after it; a reader's single statement never sees half of each.

Only one rebuild of a projection runs at a time (a session advisory lock).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.projections.runner import Projection, apply_batch, ensure_checkpoints
from service.projections.sql import create_facts_statements, fold_statement, stage_statement
from service.store.tables import metadata

log = structlog.get_logger(__name__)

# Journal event rows per staging transaction: about a second of work, so no transaction
# holds back pg_snapshot_xmin for long, and a killed rebuild loses little.
REBUILD_BATCH = 100_000
# Connections that stage and fold at once: the benchmark machine's cores. More only help a
# database server with more cores to spare.
WORKERS = 2
# Staged events per part of the fold, each its own transaction (a few seconds at most, for the
# same reason as REBUILD_BATCH); there are at least WORKERS parts.
FOLD_EVENTS = 500_000
SHADOW_SUFFIX = "_rebuild"


class RebuildBusy(RuntimeError):
    """Another rebuild of the same projection is running."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a rebuild is: journal event rows staged (then applied to the shadow) out of
    about `total`."""

    projection: str
    phase: str  # "building" | "folding" | "indexing" | "swapping" | "done"
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


def facts_name(projection: Projection) -> str:
    """The staging table of `projection`'s extracted journal rows."""
    return projection.name + SHADOW_SUFFIX + "_facts"


def chunks_name(projection: Projection) -> str:
    """The table of the staged chunks: (lo, hi] in (xid, position) order, and their rows."""
    return projection.name + SHADOW_SUFFIX + "_chunks"


def _primary_key(table: str) -> tuple[str, list[str]]:
    pk = metadata.tables[table].primary_key
    return f"pk_{table}", [c.name for c in pk.columns]


async def _exists(conn: AsyncConnection, table: str) -> bool:
    return bool(await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}))


async def _prepare(conn: AsyncConnection, projection: Projection, total: int) -> tuple[bool, bool]:
    """Create the shadow and staging tables unless a rebuild left them (`total`: the journal
    event rows now, which sets how many parts the fold has).

    Returns (resuming, staged): `staged` once the staging tables were folded into the shadow
    (and dropped), so the shadow is right up to its checkpoint.
    """
    checkpoint = rebuild_checkpoint(projection)
    has_checkpoint = await conn.scalar(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n"), {"n": checkpoint}
    )
    shadows = [await _exists(conn, shadow_name(t)) for t in projection.tables]
    staging = [await _exists(conn, t) for t in (facts_name(projection), chunks_name(projection))]
    if has_checkpoint and all(shadows) and (all(staging) or not any(staging)):
        return True, not any(staging)
    for table in projection.tables:
        # No key yet: the fold fills the shadow with plain INSERTs and the key is built once,
        # with the staging tables' end (`_fold`).
        shadow = shadow_name(table)
        await conn.execute(text(f"DROP TABLE IF EXISTS {shadow}"))
        await conn.execute(text(f"CREATE TABLE {shadow} (LIKE {table} INCLUDING DEFAULTS)"))
    # Unlogged: no WAL for rows that are thrown away at the end. A server crash empties both
    # tables together, and the rebuild then stages again from the start.
    facts, chunks = facts_name(projection), chunks_name(projection)
    await conn.execute(text(f"DROP TABLE IF EXISTS {facts}, {chunks}"))
    parts = max(WORKERS, math.ceil(total / FOLD_EVENTS))
    for statement in create_facts_statements(projection.name, facts, parts):
        await conn.execute(statement)
    await conn.execute(
        text(
            f"CREATE UNLOGGED TABLE {chunks} (lo_xid xid8 NOT NULL, lo_position bigint NOT NULL, "
            "hi_xid xid8 NOT NULL, hi_position bigint NOT NULL, events bigint NOT NULL)"
        )
    )
    await conn.execute(
        text(
            "INSERT INTO projection_checkpoints (name) VALUES (:n) ON CONFLICT (name) "
            "DO UPDATE SET xid = '0', position = 0, updated_at = now()"
        ),
        {"n": checkpoint},
    )
    return False, False


async def _key_shadow(conn: AsyncConnection, projection: Projection) -> None:
    """Give the shadow tables the live tables' primary keys (under shadow names), unless
    they have them."""
    for table in projection.tables:
        shadow = shadow_name(table)
        pk_name, pk_columns = _primary_key(table)
        if not await conn.scalar(
            text("SELECT 1 FROM pg_constraint WHERE conname = :n"), {"n": pk_name + SHADOW_SUFFIX}
        ):
            await conn.execute(
                text(
                    f"ALTER TABLE {shadow} ADD CONSTRAINT {pk_name}{SHADOW_SUFFIX} "
                    f"PRIMARY KEY ({', '.join(pk_columns)})"
                )
            )


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


async def _swap(conn: AsyncConnection, projection: Projection, batch: int) -> int:
    """Catch the shadow up under the live checkpoint's lock and put it in place; the journal
    rows of the tail applied meanwhile."""
    # Waiting readers queue behind the rename's exclusive lock: bound the wait, and retry.
    await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
    await conn.execute(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n FOR UPDATE"),
        {"n": projection.name},
    )
    shadows = {t: shadow_name(t) for t in projection.tables}
    checkpoint = rebuild_checkpoint(projection)
    tail = 0
    while read := await apply_batch(
        conn, projection, checkpoint=checkpoint, tables=shadows, limit=batch
    ):
        tail += read
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
    return tail


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


Position = tuple[int, int]  # (xid, position): a place in the journal's reading order


@dataclass
class _Staging:
    """The chunks handed out, in journal order, and how far they are done without a gap."""

    next_lo: Position
    horizon: int
    batch: int
    done_events: int
    pending: list[tuple[Position, int, bool]] = field(default_factory=list)  # (hi, events, done)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def finish(self, hi: Position) -> None:
        """Mark the chunk ending at `hi` done; the done prefix moves past every done chunk."""
        self.pending = [(h, n, d or h == hi) for h, n, d in self.pending]
        while self.pending and self.pending[0][2]:
            self.done_events += self.pending.pop(0)[1]


# The next chunk's end: `batch` event rows on (an index scan; the kind needs the heap)...
_CHUNK_END = text(
    """
    SELECT j.xid, j.position FROM journal j
    WHERE j.kind = 'event' AND j.xid < CAST(:horizon AS xid8)
      AND (j.xid, j.position) > (CAST(:xid AS xid8), :position)
    ORDER BY j.xid, j.position
    OFFSET :batch - 1 LIMIT 1
    """
)
# ... or, when fewer are left, the last of them and how many.
_LAST_CHUNK_END = text(
    """
    SELECT j.xid, j.position, count(*) OVER () AS n FROM journal j
    WHERE j.kind = 'event' AND j.xid < CAST(:horizon AS xid8)
      AND (j.xid, j.position) > (CAST(:xid AS xid8), :position)
    ORDER BY j.xid DESC, j.position DESC
    LIMIT 1
    """
)


async def _resume_staging(conn: AsyncConnection, projection: Projection) -> tuple[Position, int]:
    """Keep the chunks done from the journal's start without a gap (drop the others and
    their rows); where the next chunk starts, and the events staged so far."""
    chunks = chunks_name(projection)
    rows = (
        await conn.execute(
            text(f"SELECT lo_xid, lo_position, hi_xid, hi_position, events FROM {chunks}")
        )
    ).all()
    by_lo = {(int(r.lo_xid), r.lo_position): r for r in rows}
    at, events = (0, 0), 0
    while at in by_lo:
        row = by_lo[at]
        at, events = (int(row.hi_xid), row.hi_position), events + row.events
    params = {"xid": at[0], "position": at[1]}
    after = "(xid, position) > (CAST(:xid AS xid8), :position)"
    await conn.execute(
        text(
            f"DELETE FROM {chunks} WHERE (lo_xid, lo_position) >= (CAST(:xid AS xid8), :position)"
        ),
        params,
    )
    await conn.execute(text(f"DELETE FROM {facts_name(projection)} WHERE {after}"), params)
    return at, events


async def _stage(
    engine: AsyncEngine,
    projection: Projection,
    staging: _Staging,
    report: Callable[[int], Awaitable[None]],
) -> None:
    """One worker: take the next chunk, stage it, record it; until the horizon."""
    facts, chunks = facts_name(projection), chunks_name(projection)
    async with engine.connect() as conn:
        while True:
            async with staging.lock:
                lo = staging.next_lo
                params = {
                    "horizon": staging.horizon,
                    "xid": lo[0],
                    "position": lo[1],
                    "batch": staging.batch,
                }
                row = (await conn.execute(_CHUNK_END, params)).one_or_none()
                if row is not None:
                    hi, events = (int(row.xid), row.position), staging.batch
                else:
                    last = (await conn.execute(_LAST_CHUNK_END, params)).one_or_none()
                    if last is None:
                        await conn.rollback()
                        return
                    hi, events = (int(last.xid), last.position), int(last.n)
                await conn.commit()
                staging.next_lo = hi
                staging.pending.append((hi, events, False))
            bounds = {"lo_xid": lo[0], "lo_position": lo[1], "hi_xid": hi[0], "hi_position": hi[1]}
            async with conn.begin():
                await conn.execute(stage_statement(projection.name, facts), bounds)
                await conn.execute(
                    text(
                        f"INSERT INTO {chunks} VALUES (CAST(:lo_xid AS xid8), :lo_position, "
                        "CAST(:hi_xid AS xid8), :hi_position, :events)"
                    ),
                    {**bounds, "events": events},
                )
            staging.finish(hi)
            await report(staging.done_events)


async def _fold(engine: AsyncEngine, projection: Projection, staged_to: Position) -> None:
    """Fold the staging table into the emptied shadow, part after part on each connection,
    then key the shadow, drop the staging tables and move the shadow's checkpoint."""
    shadows = {t: shadow_name(t) for t in projection.tables}
    facts = facts_name(projection)
    async with engine.begin() as conn:
        # A fold that died half-way may have committed some parts.
        await conn.execute(text(f"TRUNCATE {', '.join(shadows.values())}"))
        parts = list(
            await conn.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = CAST(:facts AS regclass) ORDER BY c.relname"
                ),
                {"facts": facts},
            )
        )

    async def fold_parts() -> None:
        async with engine.connect() as conn:
            while parts:
                part = parts.pop()
                async with conn.begin():
                    await conn.execute(text("SET LOCAL work_mem = '256MB'"))
                    await conn.execute(fold_statement(projection.name, shadows, part))

    await _all([fold_parts() for _ in range(WORKERS)])
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        await _key_shadow(conn, projection)
        await conn.execute(
            text(
                "UPDATE projection_checkpoints SET xid = CAST(:xid AS xid8), position = :position, "
                "updated_at = now() WHERE name = :n"
            ),
            {
                "xid": staged_to[0],
                "position": staged_to[1],
                "n": rebuild_checkpoint(projection),
            },
        )
        await conn.execute(text(f"DROP TABLE {facts}, {chunks_name(projection)}"))


async def _all(work: list[Awaitable[None]]) -> None:
    """Run `work` concurrently; the first failure cancels the rest and is raised as is."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _rebuild(
    engine: AsyncEngine, projection: Projection, batch: int, progress: ProgressCallback | None
) -> Progress:
    checkpoint = rebuild_checkpoint(projection)
    async with engine.begin() as conn:
        await ensure_checkpoints(conn, [projection.name])
        total = await _count(conn, None)
        resumed, staged = await _prepare(conn, projection, total)
    async with engine.begin() as conn:
        if staged:
            done, start = await _count(conn, checkpoint), (0, 0)
        else:
            start, done = await _resume_staging(conn, projection)
        horizon = int(await conn.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())")))
    state = Progress(projection.name, "building", done, total, done if resumed else 0)
    log.info("rebuild started", projection=projection.name, resumed_from=done, total=total)

    async def report(**changes: object) -> None:
        nonlocal state
        state = replace(state, **changes)  # type: ignore[arg-type]
        if progress is not None:
            await progress(state)

    await report()
    if not staged:
        staging = _Staging(start, horizon, batch, done)

        async def staged_up_to(events: int) -> None:
            await report(done=events, total=max(state.total, events))

        await _all([_stage(engine, projection, staging, staged_up_to) for _ in range(WORKERS)])
        await report(phase="folding")
        await _fold(engine, projection, staging.next_lo)
        await report(phase="building")
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
        if read:
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
                tail = await _swap(conn, projection, batch)
            break
        except DBAPIError as exc:
            # lock_timeout (55P03): readers held the tables; try again.
            if "lock timeout" not in str(exc) and "55P03" not in str(exc) or attempt == 10:
                raise
            log.warning("rebuild swap waited too long for a lock; retrying", attempt=attempt)
    # Every journal event row up to the live checkpoint now: staged, caught up, or the tail.
    final = state.done + tail
    await report(phase="done", done=final, total=max(final, state.total))
    log.info("rebuild done", projection=projection.name, events=final)
    return state
