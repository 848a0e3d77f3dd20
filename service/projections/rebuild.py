"""Rebuilding a projection from the journal without stopping reads.

1. Staging: every journal `event` row below the horizon (`pg_snapshot_xmin` when the staging
   is planned: every transaction before it has ended, so the rows below it are all there is,
   and they lie in the heap blocks the journal had then) goes through the runner's extract
   (`fold.stage_statement`) into an unlogged staging table, `<name>_rebuild_facts`. The plan
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
   without even their primary keys) with the runner's fold (`fold.fold_statement`, as plain
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

Only one rebuild of a projection runs at a time (a session advisory lock, held with
`service.db.sessions.under_session_lock`: a rebuild whose lock connection is lost stops).

The statements of each step are in `service.store.projections.rebuild`; this module runs them
on their connections and transactions, and reports progress.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.sessions import under_session_lock
from service.store.projections import rebuild as store
from service.store.projections.checkpoints import ensure_checkpoints
from service.store.projections.registry import Projection

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


async def rebuild(
    engine: AsyncEngine,
    projection: Projection,
    *,
    batch: int = REBUILD_BATCH,
    progress: ProgressCallback | None = None,
) -> Progress:
    """Rebuild `projection` from the journal and swap it in; resumes a killed rebuild.

    Raises `RebuildBusy` if another rebuild of it runs, and `SessionLost` if the lock's
    connection ends midway: the rebuild stops there rather than go on unlocked beside the
    one that may take the lock next (which resumes from the chunks staged)."""

    async def take(conn: AsyncConnection) -> bool:
        return await store.try_lock(conn, projection)

    async def release(conn: AsyncConnection) -> None:
        await store.unlock(conn, projection)

    async def work() -> Progress:
        return await _rebuild(engine, projection, batch, progress)

    done = await under_session_lock(engine, take, release, work)
    if done is None:
        raise RebuildBusy(f"a rebuild of {projection.name} is already running")
    return done


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


async def _plan(
    engine: AsyncEngine, projection: Projection, batch: int, *, fresh: bool
) -> tuple[_Staging, bool]:
    """The staging to do, and whether it resumes one: what a killed rebuild planned, less
    the chunks it staged, unless `fresh` or the journal has another file since; else a new
    plan, with new (empty) staging tables."""
    async with engine.begin() as conn:
        plan = await store.new_plan(conn)
        kept = None if fresh else await store.kept_plan(conn, projection)
        if kept is not None and kept.filenode == plan.filenode:
            staged = await store.staged_chunks(conn, projection)
            return _resumed(kept.horizon, plan.filenode, kept.blocks, batch, staged), True
        # Heap blocks from 0 up to the size read now hold every row below the horizon: their
        # transactions ended before this statement's snapshot, and rows never move while the
        # journal keeps its file.
        sampled = min(SAMPLE_BLOCKS, plan.blocks)
        seen = await store.sample(conn, sampled, plan.horizon)
        staging = _Staging(
            plan.horizon,
            plan.filenode,
            batch,
            [(0, plan.blocks)] if plan.blocks else [],
            planned=plan.blocks,
            sampled=(seen, sampled),
        )
        parts = max(WORKERS, math.ceil(staging.estimate() / FOLD_EVENTS))
        await store.create_staging(conn, projection, plan, parts)
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
    async with engine.connect() as conn:
        while (chunk := staging.take()) is not None:
            lo, hi = chunk
            async with conn.begin():
                events, filenode = await store.stage_chunk(
                    conn, projection, lo, hi, staging.horizon
                )
                if filenode != staging.filenode:
                    facts = store.facts_name(projection)
                    raise JournalMoved(f"the journal was rewritten while {facts} was staged")
                await store.record_chunk(conn, projection, lo, hi, events)
            staging.finish(lo, hi, events)
            await report()


async def _fold(engine: AsyncEngine, projection: Projection, horizon: int) -> None:
    """Fold the staging table into the emptied shadow, part after part on each connection,
    then key the shadow, drop the staging tables and move the shadow's checkpoint to the
    last journal row below the staging's `horizon`."""
    async with engine.begin() as conn:
        parts = await store.empty_shadow(conn, projection)

    async def fold_parts() -> None:
        async with engine.connect() as conn:
            while parts:
                part = parts.pop()
                async with conn.begin():
                    await store.fold_part(conn, projection, part)

    await _all([fold_parts() for _ in range(WORKERS)])
    async with engine.begin() as conn:
        await store.finish_fold(conn, projection, horizon)


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
    async with engine.begin() as conn:
        await ensure_checkpoints(conn, [projection.name])
        resumed, staged = await store.prepare(conn, projection)
    if staged:
        async with engine.begin() as conn:
            done = await store.count_applied(conn, projection)
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
    while True:
        async with engine.begin() as conn:
            read = await store.catch_up_shadow(conn, projection, batch)
        if read is None:
            raise RebuildBusy(f"the shadow checkpoint of {projection.name} is locked")
        if read:
            await report(done=state.done + read, total=max(state.total, state.done + read))
        if read < batch:
            break
    await report(phase="indexing")
    async with engine.begin() as conn:
        await store.index_shadow(conn, projection)
    await report(phase="swapping")
    for attempt in range(1, 11):
        try:
            async with engine.begin() as conn:
                tail = await store.swap(conn, projection, batch)
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
