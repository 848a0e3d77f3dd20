"""The intake write path: webhook notifications, group-committed (see `service.db.batching`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.batching import CommitFailed, GroupWriter
from service.db.notify import PENDING_CHANNEL, Waker
from service.domain.notification import Notification
from service.store.intake import Received, prefer_generic_plans, record_notifications

__all__ = ["CommitFailed", "GroupCommitter"]

Item = tuple[Notification, str]


async def _record(conn: AsyncConnection, items: Sequence[Item]) -> list[bool]:
    # Fold the same id delivered twice within a batch into one row with its count:
    # ON CONFLICT DO UPDATE cannot touch one row twice in a statement.
    distinct: dict[uuid.UUID, list[int]] = {}
    for i, (notification, _) in enumerate(items):
        distinct.setdefault(notification.id, []).append(i)
    received = [
        Received(items[positions[0]][0], items[positions[0]][1], len(positions))
        for positions in distinct.values()
    ]
    new = await record_notifications(conn, received)
    outcome = [False] * len(items)
    for event_id, positions in distinct.items():
        outcome[positions[0]] = new[event_id]  # later copies in the batch are duplicates
    return outcome


class GroupCommitter:
    """Stores notifications durably; `submit` answers only after the commit."""

    def __init__(self, engine: AsyncEngine, *, committers: int = 2, max_batch: int = 1000) -> None:
        self._writer: GroupWriter[Item, bool] = GroupWriter(
            engine,
            _record,
            name="intake",
            writers=committers,
            max_batch=max_batch,
            single_statement=True,
            prepare=prefer_generic_plans,
        )
        self._pending = Waker(engine, PENDING_CHANNEL)

    async def submit(self, notification: Notification, body: str) -> bool:
        """True if `notification` was new, False if already known; `CommitFailed` if not stored."""
        new = await self._writer.submit((notification, body))
        if new:
            self._pending.poke()
        return new

    def start(self) -> None:
        self._writer.start()
        self._pending.start()

    async def stop(self) -> None:
        await self._writer.stop()
        await self._pending.stop()
