"""Group commit: the notifications that arrive while one transaction commits share the next.

Each webhook handler calls `submit` and awaits the outcome; a few committer tasks drain the
queue, each writing everything queued at that moment in one statement and one commit, then
answering every waiting handler. Under no load a batch is a single notification and adds no
wait; under load the cost of a commit (the fsync) is shared by the whole batch.

Nothing is acknowledged before its commit: a handler only learns "accepted" or "duplicate"
after the transaction that recorded it committed, and a failed batch fails every waiter with
`StoreUnavailable` (503), never leaving one hanging.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import structlog
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.events.notification import Notification
from service.store.intake import Received, record_notifications

log = structlog.get_logger(__name__)


class CommitFailed(Exception):
    """The batch holding this notification did not commit; nothing of it was stored."""


@dataclass(slots=True)
class _Pending:
    notification: Notification
    body: str
    future: asyncio.Future[bool] = field(repr=False)


class GroupCommitter:
    """Owns the intake write path of one process; `start` it in the lifespan, `stop` after."""

    def __init__(self, engine: AsyncEngine, *, committers: int = 2, max_batch: int = 1000) -> None:
        self._engine = engine
        self._committers = committers
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def submit(self, notification: Notification, body: str) -> bool:
        """Store `notification` durably; True if it was new, False if already known.

        Raises `CommitFailed` if the store could not commit it.
        """
        if self._closing:
            raise CommitFailed("the service is shutting down")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(notification, body, future))
        self._wakeup.set()
        return await future

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group-committer-{i}")
            for i in range(self._committers)
        ]

    async def stop(self) -> None:
        """Commit what is queued, then stop the committer tasks."""
        self._closing = True
        while self._queue:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if self._queue:
                self._wakeup.set()  # let an idle committer take the rest at once
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            _fail(batch, "the service is shutting down")
            raise
        except DBAPIError as exc:
            if len(batch) > 1 and not exc.connection_invalidated:
                # A statement error that is not the connection's fault: one notification may be
                # the cause (a value Postgres refuses). Commit each alone so its neighbours
                # are not lost with it.
                log.warning(
                    "batch failed; committing its notifications one by one",
                    size=len(batch),
                    error=type(exc.orig).__name__,
                )
                for one in batch:
                    await self._commit_alone(one)
                return
            log.error("intake commit failed", size=len(batch), error=_reason(exc))
            _fail(batch, "the event store is unavailable")
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("intake commit failed", size=len(batch), error=_reason(exc))
            _fail(batch, "the event store is unavailable")

    async def _commit_alone(self, one: _Pending) -> None:
        try:
            await self._write([one])
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error(
                "notification could not be stored",
                event_id=str(one.notification.id),
                error=_reason(exc),
            )
            _fail([one], "the event store refused this notification")

    async def _write(self, batch: list[_Pending]) -> None:
        # Fold the same id delivered twice within a batch into one row with its count:
        # ON CONFLICT DO UPDATE cannot touch one row twice in a statement.
        distinct: dict[uuid.UUID, list[_Pending]] = {}
        for item in batch:
            distinct.setdefault(item.notification.id, []).append(item)
        received = [
            Received(items[0].notification, items[0].body, len(items))
            for items in distinct.values()
        ]
        async with self._engine.begin() as conn:
            inserted = await record_notifications(conn, received)
        # Committed: now, and only now, answer.
        for event_id, items in distinct.items():
            new = inserted[event_id]
            for i, item in enumerate(items):
                if not item.future.done():
                    item.future.set_result(new and i == 0)


def _fail(batch: list[_Pending], reason: str) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(CommitFailed(reason))


def _reason(exc: BaseException) -> str:
    # The exception class and the driver's first line: enough to act on, no parameters (which
    # could carry request data) and no connection string.
    orig = getattr(exc, "orig", None) or exc
    first_line = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {first_line}"[:300]
