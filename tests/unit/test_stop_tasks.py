"""Stopping background tasks ends even a task that lost a cancellation (Python 3.11's
`asyncio.wait_for` can lose one that arrives as its wake-up completes)."""

from __future__ import annotations

import asyncio
import contextlib

from service.db.runtime import stop_tasks


async def test_a_task_that_loses_one_cancellation_is_still_stopped() -> None:
    lost = 0

    async def loop_losing_one() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # as a wait_for that returned its wake-up instead

    stubborn = asyncio.create_task(loop_losing_one())
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await stop_tasks([stubborn, plain])
    assert stubborn.cancelled() and plain.cancelled()
    assert lost == 1


async def test_cancel_then_gather_alone_would_wait_for_ever() -> None:
    # What stop_tasks replaces: the same task, cancelled once, never ends.
    async def loop_losing_one() -> None:
        lost = False
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost = True

    task = asyncio.create_task(loop_losing_one())
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.3)
    assert not done
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
