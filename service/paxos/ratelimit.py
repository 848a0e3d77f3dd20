"""One rate limit for a whole deployment, kept in a Postgres row (GCRA).

Every process of a deployment takes its permits from the same `rate_limits` row, so
`PAXOS_API_RPS` bounds the calls of all of them together. The row holds the theoretical
arrival time (`tat`) of the next permit: granting n permits moves it n intervals on. Permits
are handed out with their own start times, spaced one interval apart on the database's
clock, and the caller waits until each one's time before calling: calls never bunch up,
however many processes ask at once, and one round trip can serve several calls.

A 429 from Paxos sets `paused_until` on the same row: every process stops calling until then.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.ratelimit import create_limit, pause_limit, take_permits
from service.telemetry import metrics

# Permits may be booked this far ahead of the database's clock; a caller asking for more
# waits and asks again. Booking ahead is what lets one round trip serve several calls.
HORIZON_S = 0.5
SAFETY = 0.96
# Spaced at SAFETY of the rate, calls that each leave at most 1 / SAFETY - 1 seconds (about
# 42 ms) after their permit's start never put more than the rate in any one-second window.
# A permit is used at most half that late (the other half is for the network): one found
# later (a stalled event loop, a grant whose answer came back slowly) is dropped and another
# taken, rather than used in a bunch with the permits after it.
LATE_S = (1 / SAFETY - 1) / 2


@dataclass(frozen=True, slots=True)
class Grant:
    """`count` permits; the i-th may be used at `first + i * interval` (time.monotonic())."""

    count: int
    first: float
    interval: float

    def start_of(self, i: int) -> float:
        """The monotonic time at which permit `i` may be used."""
        return self.first + i * self.interval


class _ClockMap:
    """Maps the database's clock onto this process's monotonic clock.

    Slots are booked on the database's clock. Anchoring each grant at the moment its answer
    arrived would shift it by that round trip's latency, which varies: two grants could then
    overlap and let a second hold more calls than the rate. Each round trip says the database
    read its clock between our send and our receipt; the tightest such bound over recent
    round trips gives one offset for every grant, as NTP does.
    """

    def __init__(self, keep: int = 32) -> None:
        self._bounds: collections.deque[float] = collections.deque(maxlen=keep)

    def observe(self, sent: float, received: float, db_now: float) -> None:
        del sent  # the lower bound is not needed: a late, consistent anchor is harmless
        self._bounds.append(received - db_now)

    def local(self, db_time: float) -> float:
        return db_time + min(self._bounds)


class RateLimiter:
    """Deployment-wide permits for the calls of one kind (`name`), `rate` per second."""

    def __init__(self, engine: AsyncEngine, name: str, rate: float) -> None:
        self._engine = engine
        self.name = name
        self.rate = rate
        # 4% under the configured rate: calls leave on schedule but reach Paxos with jitter.
        # Spaced this way, calls may arrive up to about 40 ms late (1 / SAFETY - 1 of a
        # second, at any rate) before any one-second window could hold more than the limit.
        # With 2% (20 ms), bench/fetch (b) saw 51 calls in a second at 50/s about one run in
        # three.
        self.interval = 1.0 / (rate * SAFETY)
        self._slots: collections.deque[float] = collections.deque()
        self._clock = _ClockMap()
        self._lock = asyncio.Lock()
        self._waiting = 0

    async def grant(self, n: int = 1) -> Grant:
        """Book `n` permits, waiting while the limit (or a 429 pause) allows none."""
        n = max(1, min(n, int(self.rate * HORIZON_S) or 1))
        while True:
            async with self._engine.begin() as conn:
                sent = time.monotonic()
                taken = await take_permits(conn, self.name, n, self.interval, HORIZON_S)
                self._clock.observe(sent, time.monotonic(), taken.db_now)
            if taken.first_in is not None:
                first = self._clock.local(taken.db_now + max(0.0, taken.first_in))
                return Grant(n, first, self.interval)
            if taken.wait is None:  # the first call of the deployment: the row is not there yet
                async with self._engine.begin() as conn:
                    await create_limit(conn, self.name)
                continue
            metrics.RATE_LIMIT_WAITS.inc()
            # Sleep until the booked-ahead window has room again (or the pause ends).
            await asyncio.sleep(max(0.01, (taken.wait or 0.0) - HORIZON_S + self.interval))

    async def acquire(self) -> float:
        """Wait for one permit and its start time; return that time (time.monotonic()).

        Callers of one process share bookings: whoever finds no booked slot books as many as
        there are callers waiting (one round trip), and the others take those slots in turn.
        A permit whose start is more than LATE_S past when its caller gets to it is dropped.
        """
        while True:
            start = await self._take()
            await sleep_until(start)
            if time.monotonic() - start <= LATE_S:
                return start
            metrics.RATE_LIMIT_LATE.inc()

    async def _take(self) -> float:
        """The start of the next booked slot that is not already too late."""
        self._waiting += 1
        try:
            async with self._lock:
                while True:
                    late = time.monotonic() - LATE_S
                    while self._slots and self._slots[0] < late:
                        self._slots.popleft()
                        metrics.RATE_LIMIT_LATE.inc()
                    if self._slots:
                        return self._slots.popleft()
                    grant = await self.grant(self._waiting)
                    self._slots.extend(grant.start_of(i) for i in range(grant.count))
        finally:
            self._waiting -= 1

    async def pause(self, seconds: float) -> None:
        """Stop every process's calls for `seconds` (Paxos said 429)."""
        self._slots.clear()  # slots booked before the pause would fall inside it
        async with self._engine.begin() as conn:
            await pause_limit(conn, self.name, seconds)


async def sleep_until(moment: float) -> None:
    """Sleep until the monotonic clock reads `moment`."""
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
