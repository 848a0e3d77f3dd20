"""The group-commit reference consumer: everything queued while one INSERT commits shares the
next one.

Two writer tasks, each on a connection of its own in autocommit (as the service's intake:
one statement is one transaction), take whatever is queued and insert it with one statement
(`unnest` of arrays, ON CONFLICT DO NOTHING), then answer each waiting request: 200 only
after the commit. With one writer a batch could only form while the other waits for its
fsync; with two, one commits while the next batch forms.

    DATABASE_URL=... WEBHOOK_API_KEYS=... PORT=8002 .venv/bin/python -m bench.reference.group_commit
"""

from __future__ import annotations

import asyncio
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

WRITERS = 2

_INSERT = """
    INSERT INTO webhooks (event_id, type, time, is_test, body)
    SELECT * FROM unnest(
        CAST($1 AS uuid[]), CAST($2 AS text[]), CAST($3 AS timestamptz[]), CAST($4 AS bool[]),
        CAST($5 AS json[])
    )
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
"""

Pending = tuple[Notification, str, "asyncio.Future[bool]"]


class GroupCommit:
    def __init__(self) -> None:
        self._queue: list[Pending] = []
        self._wakeup = asyncio.Event()

    async def store(self, notification: Notification, body: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((notification, body, future))
        self._wakeup.set()
        return await future

    async def write(self, conn: asyncpg.Connection) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._queue = self._queue, []
            try:
                rows = await conn.fetch(
                    _INSERT,
                    [n.id for n, _, _ in batch],
                    [n.type for n, _, _ in batch],
                    [n.time for n, _, _ in batch],
                    [n.is_test for n, _, _ in batch],
                    [body for _, body, _ in batch],
                )
            except Exception as exc:  # noqa: BLE001 - every waiter gets its answer
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            new = {r[0] for r in rows}
            for notification, _, future in batch:
                if not future.done():
                    # A second copy of an id in one batch: the first answers "accepted".
                    future.set_result(notification.id in new)
                    new.discard(notification.id)


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    dsn = database_dsn(settings)
    connections = [await asyncpg.connect(dsn) for _ in range(WRITERS)]
    await connections[0].execute(TABLE)
    group = GroupCommit()
    writers = [asyncio.create_task(group.write(conn)) for conn in connections]
    try:
        yield group.store
    finally:
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        for conn in connections:
            await conn.close()


def app_from_env() -> Litestar:
    return create_reference_app(settings_from_env(), open_store)


if __name__ == "__main__":
    from bench.reference.serving import serve_target

    serve_target("bench.reference.group_commit:app_from_env")
