"""Work that is only safe while one connection's session lives (it holds a session lock).

A session advisory lock belongs to the connection that took it: when that connection dies (the
backend is terminated, the server restarts or fails over, a pooler drops it), the server
releases the lock at once, and another process may take it and start the same work. Work done
on other connections of the pool does not notice; left alone, it would carry on without the
lock, two copies side by side. `while_connected` ties the work to the lock's connection: the
moment asyncpg sees that connection end, the work is cancelled and `SessionLost` raised, so
the work stops where it is (its committed steps stay; a resumable pass resumes from them
under whichever process takes the lock next).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")


class SessionLost(RuntimeError):
    """The connection holding a session lock ended while the work under it ran."""


async def while_connected(conn: AsyncConnection, work: Awaitable[T]) -> T:
    """`await work`, cancelled with `SessionLost` as soon as `conn`'s connection ends."""
    raw: Any = (await conn.get_raw_connection()).driver_connection
    task = asyncio.ensure_future(work)
    lost = False

    def on_lost(_: object) -> None:
        nonlocal lost
        lost = True
        task.cancel()

    raw.add_termination_listener(on_lost)
    try:
        return await task
    except asyncio.CancelledError:
        if lost:
            raise SessionLost("the connection holding the lock was lost") from None
        raise
    finally:
        raw.remove_termination_listener(on_lost)


async def under_session_lock(
    engine: AsyncEngine,
    take: Callable[[AsyncConnection], Awaitable[bool]],
    release: Callable[[AsyncConnection], Awaitable[None]],
    work: Callable[[], Awaitable[T]],
) -> T | None:
    """`await work()` holding a session lock that `take` takes on a connection of its own;
    None if `take` says another holds it. The lock is released however the work ends; if its
    connection is lost first, the work is stopped and `SessionLost` raised (the server has
    released the lock already, and another process may be taking it)."""
    async with engine.connect() as conn:
        # Outside any transaction: held for the whole work, and released by the database if
        # this process dies.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not await take(conn):
            return None
        try:
            result = await while_connected(conn, work())
        except SessionLost:
            await conn.invalidate()  # dead: the pool must not hand it out again
            raise
        except BaseException:
            await release(conn)
            raise
        await release(conn)
        return result
