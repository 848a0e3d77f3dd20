"""Following the feed: one `Follower` per process keeps the horizon fresh for every reader,
and wakes the readers that wait (long-polls, SSE streams, `paxos-events tail`).

Waiting readers hold no database connection: they wait on the follower, which refreshes the
horizon when the fetcher's NOTIFY arrives (one LISTEN connection per process, opened when the
first reader waits) and, since NOTIFY is only a hint, at least every `poll_s`. Each read is
then one short statement on a pooled connection (`feed.read_page`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.notify import FETCHED_CHANNEL, listen
from service.db.outages import STORE_ERRORS
from service.store.feed import (
    SCAN_PER_ITEM,
    FeedFilter,
    FeedSlice,
    Horizon,
    read_page,
    replayed,
    sample,
)

log = structlog.get_logger(__name__)

POLL_S = 1.0  # how often waiting readers look for new rows when no NOTIFY came
# While a sample waits on writers still running, look again this soon (their transactions are
# short: a batch of the intake or of the fetcher), backing off to POLL_S.
SETTLE_S = 0.002
# How long a read on a replica waits for it to replay up to the horizon before it gives up (an
# outage: 503, or the end of an SSE stream, which the client resumes).
REPLICA_WAIT_S = 5.0


class ReplicaBehind(TimeoutError):
    """The replica has not replayed up to the feed's horizon within REPLICA_WAIT_S."""


class Follower:
    """The feed's horizon for this process, and the wake-up of the readers waiting past it."""

    def __init__(
        self,
        engine: AsyncEngine,
        database_url: str | None,
        *,
        poll_s: float = POLL_S,
        replica: bool = False,
    ) -> None:
        """`engine` is the primary's: the horizon is sampled there. With `replica`, readers
        read on a replica, and each sample carries the WAL position they wait for."""
        self._engine = engine
        self._replica = replica
        self._url = database_url  # None: no LISTEN, the poll alone
        self._poll_s = poll_s
        self._horizon = Horizon()
        self._task: asyncio.Task[None] | None = None
        self._started = 0  # refresh rounds started
        self._done = 0  # refresh rounds finished
        self._notified = asyncio.Event()
        self._advanced = asyncio.Event()  # replaced by a new one at each advance
        self._waiters = 0
        self._pump: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def final(self) -> int:
        """The highest position known to be final (0 before the first refresh)."""
        return self._horizon.final

    @property
    def final_lsn(self) -> int | None:
        """The primary's WAL position a replica must have replayed to see every row up to
        `final` (None without a replica)."""
        return self._horizon.final_lsn

    async def horizon(self) -> int:
        """A horizon from a sample taken after this call began (a refresh already running
        then is waited for and not trusted); if that sample still waits on writers, one more
        look a moment later."""
        await self._refreshed()
        if not self._horizon.settled:
            await asyncio.sleep(SETTLE_S)
            await self._refreshed()
        return self._horizon.final

    async def _refreshed(self) -> None:
        wanted = self._started + 1
        while self._done < wanted:
            if self._task is None or self._task.done():
                self._started += 1
                self._task = asyncio.create_task(self._refresh(self._started))
                # Retrieved here, so a failure nobody waited for is not reported as such.
                self._task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # Shielded: a reader that gives up does not cancel the others' refresh.
            await asyncio.shield(self._task)

    async def _refresh(self, round_: int) -> None:
        try:
            async with self._engine.connect() as conn:
                new = await sample(conn, lsn=self._replica)
        finally:
            self._done = round_
        before = self._horizon.final
        if self._horizon.observe(new) > before:
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()

    async def wait_past(self, position: int, within_s: float) -> None:
        """Return once the horizon is past `position`, or after `within_s` seconds."""
        deadline = time.monotonic() + within_s
        self._waiters += 1
        try:
            self._start()
            while self._horizon.final <= position and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._advanced.wait(), remaining)
        finally:
            self._waiters -= 1

    def _start(self) -> None:
        if self._closed:
            return
        if self._url is not None and self._listener is None:
            self._listener = asyncio.create_task(
                listen(self._url, {FETCHED_CHANNEL: [self._notified]}), name="feed-listener"
            )
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name="feed-pump")

    async def _run_pump(self) -> None:
        """While readers wait: refresh on each NOTIFY, at least every `poll_s`, and soon again
        while a sample waits on writers."""
        delay = self._poll_s
        while self._waiters and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notified.wait(), delay)
            self._notified.clear()
            try:
                await self._refreshed()
            except STORE_ERRORS as exc:
                log.warning("feed horizon not refreshed", error=type(exc).__name__)
                delay = self._poll_s
                continue
            if self._horizon.settled:
                delay = self._poll_s
            elif delay >= self._poll_s:
                delay = SETTLE_S
            else:
                delay = min(self._poll_s, delay * 2)

    async def close(self) -> None:
        """Stop the pump and the listener; waiting readers return at once."""
        self._closed = True
        self._advanced.set()
        for task in (self._pump, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._pump = self._listener = None


async def next_page(
    follower: Follower,
    engine: AsyncEngine,
    *,
    after: int,
    limit: int,
    where: FeedFilter,
    wait_s: float = 0.0,
) -> FeedSlice:
    """The next page after `after`, waiting up to `wait_s` for at least one item.

    Returns at once when the page has items, or when its scan stopped short of the horizon
    (more rows to look at: the reader asks again, so one request's cost stays bounded).
    """
    deadline = time.monotonic() + wait_s
    # A reader further behind the horizon known than one read can go (catching up) needs no
    # fresher one; otherwise sample it now, so what committed before this call is seen.
    known = follower.final
    through = known if known - after > SCAN_PER_ITEM * limit else await follower.horizon()
    lsn = follower.final_lsn  # for `through` or a later horizon: enough
    while True:
        async with engine.connect() as conn:
            if lsn is not None:
                await replayed_past(conn, lsn)
            page = await read_page(conn, after=after, through=through, limit=limit, where=where)
        if page.items or page.next_after < through:
            return page
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return page
        after = page.next_after
        await follower.wait_past(after, remaining)
        # Refreshed by the pump before it woke us: a horizon found before the next read.
        through, lsn = follower.final, follower.final_lsn


async def replayed_past(conn: AsyncConnection, lsn: int, within_s: float = REPLICA_WAIT_S) -> None:
    """Return once `conn`'s server has replayed the primary's WAL up to `lsn` (at once on the
    primary); `ReplicaBehind` after `within_s`."""
    deadline = time.monotonic() + within_s
    delay = 0.001
    while True:
        reached = await replayed(conn)
        if reached is None or reached >= lsn:
            return
        if time.monotonic() >= deadline:
            raise ReplicaBehind(f"the replica is behind the feed's horizon after {within_s}s")
        await asyncio.sleep(delay)
        delay = min(0.05, delay * 2)
