"""Rebuilding a projection from the journal without stopping reads.

1. Staging: every journal `event` row below the horizon (`pg_snapshot_xmin` when the staging
   is planned: every transaction before it has ended, so the rows below it are all there is,
   and they lie in the heap blocks the journal had then) goes through the runner's extract
   (`sql.stage_statement`) into an unlogged staging table, `<name>_rebuild_facts`. The plan
   (horizon, blocks, the journal's filenode) is kept in `<name>_rebuild_plan`. The blocks are
   staged in chunks of about `batch` rows, read straight from the heap (a TID range scan,
   which costs a fifth less than the same rows found through an index), each chunk its own
   short transaction (a long one would hold back `pg_snapshot_xmin` and with it every
   projection runner), on `WORKERS` connections at once: the extract is most of the work and
   the fold is order-independent. A chunk records itself in `<name>_rebuild_chunks` in its
   own transaction, so a killed rebuild keeps every chunk done and stages only the others.
   Blocks name the same rows only while the journal keeps its file: a chunk that finds
   another one (VACUUM FULL, CLUSTER) stages everything again, from a new plan.
2. Folding: the staging table is folded into the empty shadow tables (`<table>_rebuild`,
   without even their primary keys) with the runner's fold (`sql.fold_statement`, as plain
   INSERTs), so each subject is written once rather than once per chunk. The staging table
   is split by a hash of the subject into parts of about FOLD_EVENTS rows, folded one
   transaction each, on `WORKERS` connections at once (parts share no subject). A fold that
   dies is redone from the staging table; once done, one transaction builds the shadow's
   primary keys, drops the staging tables and sets the shadow's own checkpoint
   (`<name>@rebuild`) to the last journal row below the horizon: every row after it in
   (xid, position) order has an xid at or above the horizon, and none below it was left out.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.projections.runner import Projection, apply_batch, ensure_checkpoints
from service.projections.sql import create_facts_statements, fold_statement, stage_statement
from service.store.tables import metadata

log = structlog.get_logger(__name__)

# Journal event rows per staging transaction (about: a chunk is a range of heap blocks, sized
# by the rows per block seen so far): about a second of work, so no transaction holds back
# pg_snapshot_xmin for long, and a killed rebuild loses little.
REBUILD_BATCH = 100_000
# Heap blocks read at the start for a first guess at the rows per block.
SAMPLE_BLOCKS = 64
# Connections that stage and fold at once: the benchmark machine's cores. More only help a
# database server with more cores to spare.
WORKERS = 2
# Staged events per part of the fold, each its own transaction. Small parts sort in the
# CPU's caches: 100,000 took an eighth off the fold against 500,000 (1.5 s against 1.7 s for
# 1,000,000 events, four runs each); there are at least WORKERS parts.
FOLD_EVENTS = 100_000
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
    """The table of the staged chunks: heap blocks [lo, hi) and their journal event rows."""
    return projection.name + SHADOW_SUFFIX + "_chunks"


def plan_name(projection: Projection) -> str:
    """The one-row table of the staging's plan: horizon, heap blocks, the journal's filenode."""
    return projection.name + SHADOW_SUFFIX + "_plan"


def _staging_tables(projection: Projection) -> tuple[str, str, str]:
    return facts_name(projection), chunks_name(projection), plan_name(projection)


def _primary_key(table: str) -> tuple[str, list[str]]:
    pk = metadata.tables[table].primary_key
    return f"pk_{table}", [c.name for c in pk.columns]


async def _exists(conn: AsyncConnection, table: str) -> bool:
    return bool(await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}))


async def _prepare(conn: AsyncConnection, projection: Projection) -> tuple[bool, bool]:
    """Create the shadow tables (and drop the staging tables) unless a rebuild left them.

    Returns (resuming, staged): `staged` once the staging tables were folded into the shadow
    (and dropped), so the shadow is right up to its checkpoint.
    """
    checkpoint = rebuild_checkpoint(projection)
    has_checkpoint = await conn.scalar(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n"), {"n": checkpoint}
    )
    shadows = [await _exists(conn, shadow_name(t)) for t in projection.tables]
    staging = [await _exists(conn, t) for t in _staging_tables(projection)]
    if has_checkpoint and all(shadows) and (all(staging) or not any(staging)):
        return True, not any(staging)
    for table in projection.tables:
        # No key yet: the fold fills the shadow with plain INSERTs and the key is built once,
        # with the staging tables' end (`_fold`).
        shadow = shadow_name(table)
        await conn.execute(text(f"DROP TABLE IF EXISTS {shadow}"))
        await conn.execute(text(f"CREATE TABLE {shadow} (LIKE {table} INCLUDING DEFAULTS)"))
    await conn.execute(text(f"DROP TABLE IF EXISTS {', '.join(_staging_tables(projection))}"))
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


async def _count(conn: AsyncConnection, checkpoint: str) -> int:
    """Journal event rows up to `checkpoint`."""
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


# A heap page holds at most this many tuples (8 kB pages): the guess at rows per block while
# none has been seen, which keeps the first chunks small rather than huge.
_MOST_ROWS_PER_BLOCK = 291


class JournalMoved(RuntimeError):
    """The journal was rewritten (VACUUM FULL, CLUSTER) since the staging was planned: its
    rows are in other blocks now."""


@dataclass
class _Staging:
    """A staging's plan and what is left of it: ranges of heap blocks, [lo, hi), handed out a
    chunk at a time."""

    horizon: int
    filenode: int
    batch: int
    todo: list[tuple[int, int]]
    planned: int = 0  # heap blocks in the plan
    sampled: tuple[int, int] = (0, 0)  # journal event rows in the first blocks, and blocks
    events: int = 0  # journal event rows staged
    blocks: int = 0  # heap blocks staged

    def take(self) -> tuple[int, int] | None:
        """The next chunk: about `batch` rows' worth of blocks from the first range left."""
        if not self.todo:
            return None
        lo, hi = self.todo[0]
        step = max(1, round(self.batch / (self.density or _MOST_ROWS_PER_BLOCK)))
        cut = min(hi, lo + step)
        if cut == hi:
            self.todo.pop(0)
        else:
            self.todo[0] = (cut, hi)
        return lo, cut

    @property
    def density(self) -> float:
        """Journal event rows per block, in the sample and the chunks staged together."""
        blocks = self.sampled[1] + self.blocks
        return (self.sampled[0] + self.events) / blocks if blocks else 0.0

    def finish(self, lo: int, hi: int, events: int) -> None:
        self.events += events
        self.blocks += hi - lo

    def estimate(self) -> int:
        """The journal event rows the staging will have read, as far as can be told now."""
        return self.events + round((self.planned - self.blocks) * self.density)


_NEW_PLAN = text(
    "SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon, "
    "CAST(pg_relation_filenode('journal') AS bigint) AS filenode, "
    "pg_relation_size('journal') / CAST(current_setting('block_size') AS bigint) AS blocks"
)
_SAMPLE = text(
    "SELECT count(*) FROM journal j "
    "WHERE j.ctid < CAST(format('(%s,0)', CAST(:blocks AS bigint)) AS tid) "
    "AND j.kind = 'event' AND j.xid < CAST(:horizon AS xid8)"
)


async def _plan(
    engine: AsyncEngine, projection: Projection, batch: int, *, fresh: bool
) -> tuple[_Staging, bool]:
    """The staging to do, and whether it resumes one: what a killed rebuild planned, less
    the chunks it staged, unless `fresh` or the journal has another file since; else a new
    plan, with new (empty) staging tables."""
    facts, chunks, plan = _staging_tables(projection)
    async with engine.begin() as conn:
        # The journal's file cannot change while this transaction reads it: the filenode and
        # the size belong together.
        await conn.execute(text("LOCK TABLE journal IN ACCESS SHARE MODE"))
        row = (await conn.execute(_NEW_PLAN)).one()
        horizon, filenode, blocks = int(row.horizon), int(row.filenode), int(row.blocks)
        if not fresh and all([await _exists(conn, t) for t in (facts, chunks, plan)]):
            kept = (
                await conn.execute(text(f"SELECT horizon, blocks, filenode FROM {plan}"))
            ).one_or_none()
            if kept is not None and kept.filenode == filenode:
                staged = (
                    await conn.execute(text(f"SELECT lo, hi, events FROM {chunks} ORDER BY lo"))
                ).all()
                return _resumed(int(kept.horizon), filenode, kept.blocks, batch, staged), True
        # Heap blocks from 0 up to the size read now hold every row below the horizon: their
        # transactions ended before this statement's snapshot, and rows never move while the
        # journal keeps its file.
        sample = min(SAMPLE_BLOCKS, blocks)
        seen = await conn.scalar(_SAMPLE, {"blocks": sample, "horizon": horizon}) or 0
        staging = _Staging(
            horizon,
            filenode,
            batch,
            [(0, blocks)] if blocks else [],
            planned=blocks,
            sampled=(int(seen), sample),
        )
        parts = max(WORKERS, math.ceil(staging.estimate() / FOLD_EVENTS))
        # Unlogged: no WAL for rows that are thrown away at the end. A server crash empties
        # all three together, and the rebuild then stages again from a new plan.
        await conn.execute(text(f"DROP TABLE IF EXISTS {facts}, {chunks}, {plan}"))
        for statement in create_facts_statements(projection.name, facts, parts):
            await conn.execute(statement)
        await conn.execute(
            text(
                f"CREATE UNLOGGED TABLE {chunks} "
                "(lo bigint NOT NULL, hi bigint NOT NULL, events bigint NOT NULL)"
            )
        )
        await conn.execute(
            text(
                f"CREATE UNLOGGED TABLE {plan} "
                "(horizon xid8 NOT NULL, blocks bigint NOT NULL, filenode bigint NOT NULL)"
            )
        )
        await conn.execute(
            text(f"INSERT INTO {plan} VALUES (CAST(:horizon AS xid8), :blocks, :filenode)"),
            {"horizon": horizon, "blocks": blocks, "filenode": filenode},
        )
    return staging, False


def _resumed(
    horizon: int, filenode: int, blocks: int, batch: int, staged: Sequence[Any]
) -> _Staging:
    """The plan's blocks less the chunks staged (`staged`: (lo, hi, events) by lo)."""
    todo, at = [], 0
    for chunk in staged:
        if chunk.lo > at:
            todo.append((at, chunk.lo))
        at = max(at, chunk.hi)
    if at < blocks:
        todo.append((at, blocks))
    staging = _Staging(horizon, filenode, batch, todo, planned=blocks)
    for chunk in staged:
        staging.finish(chunk.lo, chunk.hi, chunk.events)
    return staging


async def _stage(
    engine: AsyncEngine,
    projection: Projection,
    staging: _Staging,
    report: Callable[[], Awaitable[None]],
) -> None:
    """One worker: take the next chunk, stage it, record it; until the plan is done."""
    facts, chunks, _ = _staging_tables(projection)
    async with engine.connect() as conn:
        while (chunk := staging.take()) is not None:
            lo, hi = chunk
            params = {"lo": lo, "hi": hi, "horizon": staging.horizon}
            async with conn.begin():
                row = (await conn.execute(stage_statement(projection.name, facts), params)).one()
                if row.filenode != staging.filenode:
                    raise JournalMoved(f"the journal was rewritten while {facts} was staged")
                await conn.execute(
                    text(f"INSERT INTO {chunks} VALUES (:lo, :hi, :events)"),
                    {"lo": lo, "hi": hi, "events": row.events},
                )
            staging.finish(lo, hi, row.events)
            await report()


async def _fold(engine: AsyncEngine, projection: Projection, horizon: int) -> None:
    """Fold the staging table into the emptied shadow, part after part on each connection,
    then key the shadow, drop the staging tables and move the shadow's checkpoint to the
    last journal row below the staging's `horizon`."""
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
                "UPDATE projection_checkpoints c SET xid = last.xid, position = last.position, "
                "updated_at = now() FROM (SELECT xid, position FROM journal "
                "WHERE xid < CAST(:horizon AS xid8) ORDER BY xid DESC, position DESC LIMIT 1) last "
                "WHERE c.name = :n"
            ),
            {"horizon": horizon, "n": rebuild_checkpoint(projection)},
        )
        await conn.execute(text(f"DROP TABLE {', '.join(_staging_tables(projection))}"))


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
        resumed, staged = await _prepare(conn, projection)
    if staged:
        async with engine.begin() as conn:
            done = await _count(conn, checkpoint)
        state = Progress(projection.name, "building", done, done, done)
    else:
        staging, resumed = await _plan(engine, projection, batch, fresh=not resumed)
        done = staging.events
        state = Progress(
            projection.name, "building", done, staging.estimate(), done if resumed else 0
        )
    log.info("rebuild started", projection=projection.name, resumed_from=done, total=state.total)

    async def report(**changes: object) -> None:
        nonlocal state
        state = replace(state, **changes)  # type: ignore[arg-type]
        if progress is not None:
            await progress(state)

    await report()
    if not staged:

        async def staged_so_far() -> None:
            await report(done=staging.events, total=staging.estimate())

        while True:
            try:
                await _all(
                    [_stage(engine, projection, staging, staged_so_far) for _ in range(WORKERS)]
                )
                break
            except JournalMoved:
                log.warning(
                    "the journal was rewritten during the rebuild; staging it again",
                    projection=projection.name,
                )
                staging, _ = await _plan(engine, projection, batch, fresh=True)
                await report(done=0, total=staging.estimate(), resumed_from=0)
        await report(phase="folding", total=staging.events)
        await _fold(engine, projection, staging.horizon)
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
