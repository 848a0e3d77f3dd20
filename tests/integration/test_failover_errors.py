"""What a failover looks like to a client, and that each reads as an outage (503, a loop's
retry, the connection or the pool discarded), never as a bug (500) nor a hang: a write
refused in a read-only transaction, a multi-host connect that finds no read-write server
(mid-failover, every node a standby), and a statement that never gets its answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.batching import CommitFailed, GroupWriter
from service.db.engine import create_engine
from service.db.notify import listen
from service.db.outages import is_store_outage


async def test_a_write_refused_as_read_only_is_an_outage_and_drops_the_pool(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=2)
    try:
        async with engine.connect() as conn:
            before = await conn.scalar(text("SELECT pg_backend_pid()"))
        # What a connection that outlived its server's demotion meets (a standby answers the
        # same SQLSTATE 25006).
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                await conn.execute(text("SET TRANSACTION READ ONLY"))
                await conn.execute(text("INSERT INTO rate_limits (name) VALUES ('read-only')"))
        assert is_store_outage(raised.value)
        assert raised.value.connection_invalidated
        async with engine.connect() as conn:
            after = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert after != before  # the pool's old connections were discarded, not reused
    finally:
        await engine.dispose()


async def test_no_read_write_server_among_the_hosts_is_an_outage(database_url: str) -> None:
    # The test server is a primary: asking for a read-only one finds none, as asking for a
    # read-write one does while every node of a cluster is a standby.
    separator = "&" if "?" in database_url else "?"
    engine = create_engine(f"{database_url}{separator}target_session_attrs=read-only")
    try:
        with pytest.raises(DBAPIError) as raised:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert "None of the hosts match" in str(raised.value)
        assert is_store_outage(raised.value)
    finally:
        await engine.dispose()


async def test_the_listener_waits_for_a_primary_instead_of_failing(database_url: str) -> None:
    separator = "&" if "?" in database_url else "?"
    woken = asyncio.Event()
    task = asyncio.create_task(
        listen(f"{database_url}{separator}target_session_attrs=read-only", {"x": [woken]})
    )
    try:
        await asyncio.sleep(0.5)  # its first connect failed; it retries after 0.5 s
        assert not task.done(), task.exception()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not woken.is_set()  # never connected


async def test_a_held_writer_gives_up_on_a_silent_statement_and_reconnects(
    database_url: str,
) -> None:
    """A statement that gets no answer (here: it sleeps; a frozen primary's never comes)
    fails its batch after the writer's timeout, and the next batch runs on a new connection."""
    engine = create_engine(database_url, pool_size=2)
    backends: list[int] = []

    async def write(conn: AsyncConnection, items: Sequence[float]) -> list[int]:
        backends.append(int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0))
        await conn.execute(text("SELECT pg_sleep(:s)"), {"s": items[0]})
        return [backends[-1]] * len(items)

    writer: GroupWriter[float, int] = GroupWriter(
        engine, write, name="test", writers=1, single_statement=True, held_timeout_s=0.5
    )
    writer.start()
    try:
        began = time.monotonic()
        with pytest.raises(CommitFailed):
            await writer.submit(30.0)
        assert time.monotonic() - began < 5
        assert await writer.submit(0.0) != backends[0]  # a fresh connection
    finally:
        await writer.stop()
        await engine.dispose()
