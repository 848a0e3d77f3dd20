"""The NOTIFY waker: one held connection sends the wake-ups, and losing it loses nothing but
one hint (an outage, a failover, an administrator's pg_terminate_backend)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from service.db.engine import create_engine
from service.db.notify import Waker, listen

CHANNEL = "waker_test"


async def notified(event: asyncio.Event, waker: Waker) -> bool:
    event.clear()
    waker.poke()
    try:
        async with asyncio.timeout(2):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def test_the_waker_holds_one_connection_and_takes_a_new_one_when_it_is_killed(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=2)
    woken = asyncio.Event()
    listener = asyncio.create_task(listen(database_url, {CHANNEL: [woken]}))
    waker = Waker(engine, CHANNEL)
    waker.start()
    try:
        await asyncio.sleep(0.3)  # let the listener connect
        assert await notified(woken, waker)
        async with engine.connect() as conn:
            senders = await conn.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_notify(%'")
            )
            (sender,) = senders.all()
        for _ in range(3):  # the same connection sends every wake-up
            assert await notified(woken, waker)
        async with engine.connect() as conn:
            again = (
                await conn.scalars(
                    text("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_notify(%'")
                )
            ).all()
            assert again == [sender]
            await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": sender})
        # The first poke after the kill may be lost (a hint only); the next ones are not.
        await notified(woken, waker)
        assert await notified(woken, waker)
    finally:
        await waker.stop()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await engine.dispose()
