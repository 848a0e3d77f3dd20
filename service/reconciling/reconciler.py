"""Never miss an event: passes over List Events that store what no webhook brought.

Paxos gives up on a webhook after 24 hours and tells consumers to poll List Events as a
backup. A *pass* pages List Events over a time window (real events, and test events when
asked) under the deployment's rate limit, and stores every event the store lacks through
the same idempotent path as a fetched one (`service.store.listed`), counting it as a missed
webhook. A pass records its counts and how far each of its listings has got in its
`reconcile_passes` row, in the same transaction as the events it stored, so a pass that is
stopped anywhere resumes from there.

The *reconciler* runs a pass every `RECONCILE_INTERVAL_S` over the window since its last
completed pass, minus `RECONCILE_LOOKBACK_S` of overlap; one copy at a time across the
deployment (a session advisory lock). A *backfill* is a pass over a window someone chose.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import RowMapping, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.paxos_event import Fetched
from service.fetching.fetcher import identity_id_of
from service.jobs.runner import Job
from service.paxos.client import ListFilter, PaxosClient
from service.store.listed import Listed, record_listed
from service.store.tables import reconcile_passes
from service.telemetry import metrics

log = structlog.get_logger(__name__)

# Any constant unique to this lock: pg_try_advisory_lock(key) is deployment-wide.
RECONCILER_LOCK = 0x7061786F735F7263  # "paxos_rc"
# Events younger than this are left to their webhook (it may still be in flight).
GRACE = timedelta(seconds=60)
PAGE_SIZE = 100  # List Events' largest page


# What a pass shows to people (API and console): everything but its resume point and error.
PASS_COLUMNS = [c for c in reconcile_passes.c if c.name not in ("resume", "error")]


async def recent_passes(conn: AsyncConnection, limit: int) -> list[RowMapping]:
    """The newest List Events passes (reconciler and backfills) with their counts."""
    rows = await conn.execute(
        select(*PASS_COLUMNS).order_by(reconcile_passes.c.pass_id.desc()).limit(limit)
    )
    return [r._mapping for r in rows]


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


Progress = Callable[[PassState, str | None], Awaitable[None] | None]


def listing_key(is_test: bool, type_: str | None) -> str:
    return f"{'test' if is_test else 'real'}:{type_ or '*'}"


def to_listed(fetched: Fetched, is_test: bool) -> Listed:
    """A List Events item as the store takes it."""
    event = fetched.event
    return Listed(
        event_id=uuid.UUID(event.id),
        type=event.type,
        # Python 3.11 reads RFC 3339 with any number of fractional digits (keeping 6).
        created_at=datetime.fromisoformat(event.created_at),
        is_test=is_test,
        raw=fetched.raw,
        identity_id=identity_id_of(fetched),
        object_type=event.object_type,
        undelivered_webhooks=event.undelivered_webhooks,
    )


async def start_pass(
    engine: AsyncEngine, kind: str, window: Window, job_id: uuid.UUID | None = None
) -> PassState:
    """Record a new pass over `window`."""
    async with engine.begin() as conn:
        pass_id = await conn.scalar(
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
    assert pass_id is not None
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


async def run_pass(
    engine: AsyncEngine,
    client: PaxosClient,
    state: PassState,
    *,
    page_size: int = PAGE_SIZE,
    progress: Progress | None = None,
) -> Counts:
    """List the pass's window and store what is missing; resumable; returns its counts."""
    window = state.window
    log_ = log.bind(pass_id=state.pass_id)
    try:
        for is_test, type_ in window.listings():
            key = listing_key(is_test, type_)
            position = state.resume.get(key, {})
            if position.get("done"):
                continue
            filters = ListFilter(
                created_at_gte=position.get("after") or window.since,
                created_at_lt=window.until,
                type=type_,
                is_test=is_test,
                limit=page_size,
            )
            # Resuming lists the last stored timestamp again: skip what was stored there.
            seen = set(position.get("seen", ()))
            async for page in client.iter_events(filters):
                listed = [to_listed(f, is_test) for f in page.events]
                if seen:
                    listed = [item for item in listed if str(item.event_id) not in seen]
                await _store_page(engine, state, key, listed, log_)
                reached = page.events[-1].event.created_at if page.events else None
                if progress is not None:
                    maybe = progress(state, reached)
                    if maybe is not None:
                        await maybe
            state.resume[key] = {"done": True}
            async with engine.begin() as conn:
                await _save(conn, state)
    except Exception as exc:
        log_.warning(
            "pass stopped; it resumes from where it got to",
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
        raise
    async with engine.begin() as conn:
        await conn.execute(
            update(reconcile_passes)
            .where(reconcile_passes.c.pass_id == state.pass_id)
            .values(status="done", finished_at=text("now()"))
        )
    metrics.RECONCILE_PASSES.inc()
    log_.info(
        "pass done",
        found=state.counts.found,
        missing=state.counts.missing,
        known=state.counts.known,
        pages=state.counts.pages,
    )
    return state.counts


async def _store_page(
    engine: AsyncEngine,
    state: PassState,
    key: str,
    listed: list[Listed],
    log_: structlog.typing.FilteringBoundLogger,
) -> None:
    # The events and the pass's progress commit together: a pass stopped between pages
    # resumes exactly after the last stored page, never skipping one.
    async with engine.begin() as conn:
        missing = await record_listed(conn, listed)
        state.counts.pages += 1
        state.counts.found += len(listed)
        state.counts.missing += len(missing)
        state.counts.known += len(listed) - len(missing)
        if listed:
            last = listed[-1].created_at
            state.resume[key] = {
                "after": last.isoformat(),
                "seen": [str(i.event_id) for i in listed if i.created_at == last],
            }
        if missing:
            lost = [item for item in listed if item.event_id in missing]
            await conn.execute(
                _REPORT_MISSED,
                {
                    "pass_id": state.pass_id,
                    "ids": [i.event_id for i in lost],
                    "types": [i.type for i in lost],
                    "times": [i.created_at for i in lost],
                },
            )
        await _save(conn, state)
    for item in listed:
        if item.event_id in missing:
            metrics.MISSED_WEBHOOKS.labels(type=metrics.type_label(item.type)).inc()
            log_.warning(
                "missed webhook: event found by List Events",
                event_id=str(item.event_id),
                type=item.type,
            )


_REPORT_MISSED = text(
    """
    INSERT INTO reconcile_missed (pass_id, event_id, type, created_at)
    SELECT :pass_id, * FROM unnest(
        CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:times AS timestamptz[]))
    ON CONFLICT DO NOTHING
    """
)


async def _save(conn: AsyncConnection, state: PassState) -> None:
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


class Reconciler:
    """The periodic safety net: one pass every interval, one copy across the deployment."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: PaxosClient,
        *,
        interval_s: float,
        lookback_s: float,
        include_test: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._engine = engine
        self._client = client
        self._interval_s = interval_s
        self._lookback = timedelta(seconds=lookback_s)
        self._include_test = include_test
        self._page_size = page_size

    async def run(self) -> None:
        """A pass now and then every interval, until cancelled."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next interval tries again
                log.exception("reconcile pass failed; retrying next interval")
            await asyncio.sleep(self._interval_s)

    async def run_once(self, now: datetime | None = None) -> Counts | None:
        """Run (or resume) a pass if no other process is running one; None if one is."""
        async with self._engine.connect() as conn:
            # A session lock on a connection of its own, outside any transaction: held for
            # the whole pass, released by the database if this process dies.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if not await conn.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": RECONCILER_LOCK}
            ):
                return None
            try:
                state = await self._next_pass(now or datetime.now(UTC))
                if state is None:
                    return None
                return await run_pass(self._engine, self._client, state, page_size=self._page_size)
            finally:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": RECONCILER_LOCK}
                )

    async def _next_pass(self, now: datetime) -> PassState | None:
        unfinished = await unfinished_pass(self._engine, "reconcile")
        if unfinished is not None:
            return await load_pass(self._engine, unfinished)
        async with self._engine.connect() as conn:
            reached = await conn.scalar(
                select(reconcile_passes.c.window_until)
                .where(reconcile_passes.c.kind == "reconcile", reconcile_passes.c.status == "done")
                .order_by(reconcile_passes.c.window_until.desc())
                .limit(1)
            )
        until = now - GRACE
        since = (reached or now) - self._lookback
        if since >= until:
            return None
        return await start_pass(
            self._engine, "reconcile", Window(since, until, (), self._include_test)
        )


def backfill_job(engine: AsyncEngine, client: PaxosClient) -> Callable[[Job], Awaitable[None]]:
    """The handler of "backfill" jobs (POST /admin/backfill): a resumable pass."""

    async def handle(job: Job) -> None:
        if "pass_id" in job.progress:
            state = await load_pass(engine, int(job.progress["pass_id"]))
        else:
            params = job.params
            window = Window(
                datetime.fromisoformat(params["since"]),
                datetime.fromisoformat(params["until"]),
                tuple(params.get("types") or ()),
                bool(params.get("include_test")),
            )
            state = await start_pass(engine, "backfill", window, job.job_id)
            await job.report(pass_id=state.pass_id)

        async def report(state: PassState, reached: str | None) -> None:
            c = state.counts
            await job.report(
                pages=c.pages, found=c.found, missing=c.missing, known=c.known, reached=reached
            )

        await run_pass(engine, client, state, progress=report)

    return handle
