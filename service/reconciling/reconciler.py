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
deployment (a session advisory lock; a pass whose lock connection is lost stops at once,
`service.db.sessions`). A *backfill* is a pass over a window someone chose.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.sessions import SessionLost, under_session_lock
from service.domain.paxos_event import Fetched, identity_id_of, object_id_of
from service.paxos.client import ListFilter, PaxosClient
from service.store.jobs import Job
from service.store.listed import Listed, record_listed
from service.store.reconcile import (
    Counts,
    PassState,
    Window,
    finish_pass,
    load_pass,
    reconciled_until,
    record_missed,
    save_pass,
    start_pass,
    try_lock_reconciler,
    unfinished_pass,
    unlock_reconciler,
)
from service.telemetry import metrics

log = structlog.get_logger(__name__)

# Events younger than this are left to their webhook (it may still be in flight).
GRACE = timedelta(seconds=60)
PAGE_SIZE = 100  # List Events' largest page


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
        object_id=object_id_of(event.type, event.object),
    )


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
                await save_pass(conn, state)
    except Exception as exc:
        log_.warning(
            "pass stopped; it resumes from where it got to",
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
        raise
    async with engine.begin() as conn:
        await finish_pass(conn, state.pass_id)
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
            await record_missed(conn, state.pass_id, lost)
        await save_pass(conn, state)
    for item in listed:
        if item.event_id in missing:
            metrics.MISSED_WEBHOOKS.labels(type=metrics.type_label(item.type)).inc()
            log_.warning(
                "missed webhook: event found by List Events",
                event_id=str(item.event_id),
                type=item.type,
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
            except SessionLost:
                log.warning("reconciler lock lost mid-pass; pass stopped, resuming next interval")
            except Exception:  # noqa: BLE001 - the next interval tries again
                log.exception("reconcile pass failed; retrying next interval")
            await asyncio.sleep(self._interval_s)

    async def run_once(self, now: datetime | None = None) -> Counts | None:
        """Run (or resume) a pass if no other process is running one; None if one is."""

        async def locked_pass() -> Counts | None:
            state = await self._next_pass(now or datetime.now(UTC))
            if state is None:
                return None
            return await run_pass(self._engine, self._client, state, page_size=self._page_size)

        # The deployment's session lock, held for the whole pass; if its connection is lost
        # mid-pass (another process may take the lock at once), the pass stops: SessionLost.
        return await under_session_lock(
            self._engine, try_lock_reconciler, unlock_reconciler, locked_pass
        )

    async def _next_pass(self, now: datetime) -> PassState | None:
        unfinished = await unfinished_pass(self._engine, "reconcile")
        if unfinished is not None:
            return await load_pass(self._engine, unfinished)
        async with self._engine.connect() as conn:
            reached = await reconciled_until(conn)
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


async def resume_or_start_backfill(engine: AsyncEngine, window: Window) -> tuple[PassState, bool]:
    """The backfill pass for `window`: the unfinished one with that window if a stopped run
    left one (and True), else a new one (and False)."""
    resumable = await unfinished_pass(engine, "backfill", window)
    if resumable is not None:
        return await load_pass(engine, resumable), True
    return await start_pass(engine, "backfill", window), False
