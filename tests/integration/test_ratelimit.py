"""The deployment-wide rate limit: one Postgres row shared by every process."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import create_engine
from service.paxos.ratelimit import RateLimiter
from tests.support.ratelimit import max_in_any_window


async def test_two_limiters_on_one_row_share_the_rate(
    engine: AsyncEngine, database_url: str
) -> None:
    # Two engines stand for two processes: nothing is shared but the database.
    other = create_engine(database_url)
    rate = 40.0
    limiters = [RateLimiter(engine, "paxos_api", rate), RateLimiter(other, "paxos_api", rate)]
    calls: list[float] = []

    async def caller(limiter: RateLimiter, n: int) -> None:
        for _ in range(n):
            # The permit's scheduled start: what the limiter controls. (When the waiting
            # coroutine wakes also depends on how busy the event loop is.)
            calls.append(await limiter.acquire())

    try:
        started = time.monotonic()
        await asyncio.gather(*(caller(limiters[i % 2], 15) for i in range(8)))  # 120 calls
        elapsed = time.monotonic() - started
    finally:
        await other.dispose()
    assert len(calls) == 120
    # Never above the rate in any one-second window, and the limit was used: 120 calls at
    # 40/s take about 3 s.
    assert max_in_any_window(calls) <= rate
    assert elapsed < 120 / rate * 1.25
    gaps = [b - a for a, b in zip(sorted(calls), sorted(calls)[1:], strict=False)]
    assert min(gaps) > 0  # spaced, never two at once
    assert sum(gaps) / len(gaps) >= 1 / rate * 0.9


async def test_a_pause_stops_every_process(engine: AsyncEngine, database_url: str) -> None:
    other = create_engine(database_url)
    a, b = RateLimiter(engine, "paxos_api", 100.0), RateLimiter(other, "paxos_api", 100.0)
    try:
        await a.acquire()
        await a.pause(1.0)
        paused_at = time.monotonic()
        await b.acquire()  # another process: must wait out the pause too
        waited = time.monotonic() - paused_at
    finally:
        await other.dispose()
    assert waited >= 0.9


async def test_limits_are_separate_by_name(engine: AsyncEngine) -> None:
    slow = RateLimiter(engine, "paxos_token", 1.0)
    fast = RateLimiter(engine, "paxos_api", 100.0)
    await slow.acquire()
    started = time.monotonic()
    for _ in range(10):
        await fast.acquire()
    assert time.monotonic() - started < 0.5  # not held back by the 1/s limit
    started = time.monotonic()
    await slow.acquire()
    assert time.monotonic() - started >= 0.8  # the second token request waits its second


async def test_a_stalled_process_drops_the_permits_it_is_too_late_for(engine: AsyncEngine) -> None:
    """A process that stalls (here its event loop is blocked for 0.4 s) finds the permits
    booked for the stall in the past: used, they would all leave at once and, with the
    calls after them, break the rate in that second. They are dropped instead."""
    rate = 40.0
    limiter = RateLimiter(engine, "paxos_api", rate)
    dropped_before = REGISTRY.get_sample_value("paxos_rate_limit_late_permits_total") or 0.0
    left: list[float] = []

    async def caller(n: int) -> None:
        for _ in range(n):
            await limiter.acquire()
            left.append(time.monotonic())  # when this call would leave for Paxos

    async def stall() -> None:
        await asyncio.sleep(0.5)
        time.sleep(0.4)  # noqa: ASYNC251 (on purpose: a stalled loop, as a long synchronous step would)

    await asyncio.gather(stall(), *(caller(10) for _ in range(8)))  # 80 calls
    dropped = (REGISTRY.get_sample_value("paxos_rate_limit_late_permits_total") or 0.0) - (
        dropped_before
    )
    assert len(left) == 80
    assert dropped > 0
    assert max_in_any_window(left) <= rate
