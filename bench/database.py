"""The benchmarks' databases: each run gets a fresh, migrated one of its own name."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import asyncpg

from service.db.engine import create_engine, plain_url, start_embedded_postgres, with_database
from service.db.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent


def server_url() -> str:
    """A URL on the benchmarks' Postgres server with the right to create databases: the
    embedded one under .data/bench unless BENCH_DATABASE_URL names another. Call it outside
    an event loop (the embedded server's start runs a loop of its own)."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres(ROOT / ".data" / "bench")


async def _admin(admin_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(plain_url(with_database(admin_url, "postgres")))


async def drop(admin_url: str, name: str) -> None:
    """Drop database `name` on the server of `admin_url`, closing its connections."""
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def recreate(admin_url: str, name: str, revision: str = "head") -> str:
    """Drop and create database `name`, migrate it to `revision`; its URL."""
    url, _ = await kept_or_recreated(admin_url, name, reuse=False, revision=revision)
    return url


async def kept_or_recreated(
    admin_url: str, name: str, reuse: bool, revision: str = "head"
) -> tuple[str, bool]:
    """Database `name`: kept as a last run left it when `reuse` and it exists, else created
    anew; migrated to head either way (a kept one may predate a migration). Its URL, and
    whether it was kept (so holds a last run's data)."""
    conn = await _admin(admin_url)
    try:
        kept = reuse and bool(
            await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        )
        if not kept:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    engine = create_engine(url, pool_size=1)
    try:
        await upgrade(engine, revision)
    finally:
        await engine.dispose()
    return url, kept


async def load_events(
    url: str, statement: str, events: int, chunk: int, *args: object, first: int = 1
) -> None:
    """Generated events, fast: `statement` once per chunk with $1, $2 = the chunk's first and
    last event number (then `args`), numbers `first` to `events`, then VACUUM ANALYZE so the
    measured plans are the usual, and `settle`."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        # A bench load: losing it in a crash costs nothing, so skip waiting for each flush.
        await conn.execute("SET synchronous_commit = off")
        for start in range(first, events + 1, chunk):
            last = min(start + chunk - 1, events)
            await conn.execute(statement, start, last, *args)
            print(f"  loaded {last:,} events", flush=True)
        await conn.execute("VACUUM ANALYZE")
        await settle(conn)
    finally:
        await conn.close()


async def settle(conn: asyncpg.Connection) -> None:
    """Write out what a load left dirty, so the measurements after it do not pay for it: a
    checkpoint (a load of gigabytes leaves one due, and the WAL and the data files to
    write), then the operating system's dirty pages. On 10,000,000 events (2026-12-05) a
    rebuild right after the load ran at 166,511 events/s; the same rebuild of the same
    database, run again once the machine had written everything out, at 406,540."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")  # superuser or pg_checkpoint only
    await asyncio.to_thread(os.sync)


async def timed_read(url: str, query: str) -> tuple[int, float]:
    """Every row of `query` through an asyncpg cursor: how many, and in how many seconds (the
    reference a benchmark compares its reader with)."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        started = time.perf_counter()
        rows = 0
        async with conn.transaction():
            async for _ in conn.cursor(query, prefetch=10_000):
                rows += 1
        return rows, time.perf_counter() - started
    finally:
        await conn.close()
