"""The commit-per-request reference consumer: each webhook is one INSERT, its own transaction.

A pool of connections; each request takes one, inserts its notification (ON CONFLICT DO
NOTHING), and answers once that statement's commit returns. Postgres still shares WAL flushes
between commits that wait at the same moment, so this is not one fsync per request; it is
what a plain consumer on this stack does without batching of its own.

    DATABASE_URL=... WEBHOOK_API_KEYS=... PORT=8003 \
        .venv/bin/python -m bench.reference.commit_per_request
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from litestar import Litestar

from bench.reference.common import (
    TABLE,
    Store,
    create_reference_app,
    database_dsn,
    settings_from_env,
)
from service.domain.notification import Notification
from service.settings import Settings

# As many connections as the service's engine pool holds (pool_size 10, max_overflow 10).
POOL_SIZE = 20

_INSERT = """
    INSERT INTO webhooks (event_id, type, time, is_test, body) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
"""


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    pool = await asyncpg.create_pool(database_dsn(settings), min_size=POOL_SIZE, max_size=POOL_SIZE)
    async with pool.acquire() as conn:
        await conn.execute(TABLE)

    async def store(notification: Notification, body: str) -> bool:
        async with pool.acquire() as conn:
            inserted = await conn.fetchval(
                _INSERT,
                notification.id,
                notification.type,
                notification.time,
                notification.is_test,
                body,
            )
        return inserted is not None

    try:
        yield store
    finally:
        await pool.close()


def app_from_env() -> Litestar:
    return create_reference_app(settings_from_env(), open_store)


if __name__ == "__main__":
    from bench.reference.serving import serve_target

    serve_target("bench.reference.commit_per_request:app_from_env")
