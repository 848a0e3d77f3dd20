"""LISTEN/NOTIFY wake-ups: a hint that work arrived, never the guarantee (the poll is)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

import asyncpg
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.engine import connect

log = structlog.get_logger(__name__)

PENDING_CHANNEL = "events_pending"  # new events wait for their Get Event
FETCHED_CHANNEL = "events_fetched"  # full events joined the journal: projections have work
# A NOTIFY inside a commit takes a database-wide lock through the WAL flush, serialising
# concurrent commits; the wake-ups are sent after the commit instead, at most this often.
# Under steady load a wake-up waits up to this long, so it bounds the feed's latency from a
# fetched event to an SSE reader (target p95 50 ms, bench/feed.py): 50 per second at most.
WAKE_INTERVAL_S = 0.02


# The connection failed or cannot be had: refused, cut, timed out, or (mid-failover, with a
# multi-host URL) no host is the read-write primary yet, which asyncpg reports as an
# InternalClientError (TargetServerAttributeNotMatched). Each means: try again soon.
_LOST = (OSError, asyncpg.PostgresError, asyncpg.InternalClientError, TimeoutError)


class Waker:
    """Sends NOTIFY on `channel` after `poke`, coalescing pokes: one per `WAKE_INTERVAL_S`."""

    def __init__(self, engine: AsyncEngine, channel: str) -> None:
        self._engine = engine
        self._channel = channel
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        self._poked.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"waker-{self._channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # One connection held for the waker's life, in autocommit: a NOTIFY is one round trip,
        # not a pool checkout, a ping, BEGIN and COMMIT (11% of the intake's samples, #20).
        held: AsyncConnection | None = None
        try:
            while True:
                await self._poked.wait()
                self._poked.clear()
                try:
                    if held is None:
                        held = await self._engine.connect()
                    raw = await held.get_raw_connection()
                    await raw.driver_connection.execute(  # type: ignore[union-attr]
                        "SELECT pg_notify($1, '')", self._channel
                    )
                except (SQLAlchemyError, *_LOST, asyncpg.InterfaceError):
                    # Only a hint: the fetcher's poll finds the work anyway. The connection
                    # may be dead (an outage, a failover): the next poke takes a new one.
                    if held is not None:
                        with contextlib.suppress(Exception):
                            await held.invalidate()
                            await held.close()
                        held = None
                await asyncio.sleep(WAKE_INTERVAL_S)
        finally:
            if held is not None:
                with contextlib.suppress(Exception):
                    await held.close()


async def listen(url: str, channels: Mapping[str, Iterable[asyncio.Event]]) -> None:
    """On each NOTIFY on a channel, set that channel's events; until cancelled.

    Uses a dedicated connection outside the pool (a pooled one would lose its LISTEN when
    returned) and reconnects after the database restarts. After each (re)connect it wakes the
    listeners once, since notifications sent while disconnected are lost.
    """
    targets = {channel: list(events) for channel, events in channels.items()}

    def wake(_conn: object, _pid: int, channel: str, _payload: str) -> None:
        for event in targets.get(channel, ()):
            event.set()

    def wake_all() -> None:
        for events in targets.values():
            for event in events:
                event.set()

    delay = 0.5
    while True:
        lost = asyncio.Event()
        try:
            conn = await connect(url)
        except _LOST as exc:
            log.warning(
                "notify listener cannot connect; retrying",
                channels=list(targets),
                error=type(exc).__name__,
                in_s=delay,
            )
            await asyncio.sleep(delay)
            delay = min(4.0, delay * 2)  # a hint: back soon after the database
            continue
        try:
            conn.add_termination_listener(lambda _, lost=lost: lost.set())
            for channel in targets:
                await conn.add_listener(channel, wake)
            delay = 0.5
            wake_all()
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), 30)
                except TimeoutError:
                    # A half-open TCP connection reports nothing: ask something now and then.
                    await conn.execute("SELECT 1", timeout=5)
            log.warning("notify listener lost its connection; reconnecting", channels=list(targets))
        except _LOST as exc:
            log.warning(
                "notify listener failed; reconnecting",
                channels=list(targets),
                error=type(exc).__name__,
            )
        finally:
            if not conn.is_closed():
                conn.terminate()
