"""`paxos-events tail`: the feed on a terminal, one line per event, straight from the store.

It reads through the same store functions as GET /feed (no HTTP): the same horizon, the same
wake-up on the fetcher's NOTIFY, the same pages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.feed import FeedEvent, FeedFilter
from service.store.following import Follower, next_page

PAGE = 100
WAIT_S = 30.0


def subject(event: FeedEvent) -> str:
    """What the event is about: its identity, else its object's id (a transfer, ...)."""
    if event.identity_id:
        return event.identity_id
    detail: Any = msgspec.json.decode(event.detail) if event.detail is not None else None
    obj: Any = detail.get("object") if isinstance(detail, dict) else None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return str(obj["id"])
    return "-"


def line(position: int, event: FeedEvent) -> str:
    """One event as a line: position, event time, type, id, subject (and `test`)."""
    when = event.time.isoformat().replace("+00:00", "Z")
    test = "  test" if event.is_test else ""
    return f"{position:>10}  {when}  {event.type}  {event.id}  {subject(event)}{test}"


async def tail(
    engine: AsyncEngine,
    database_url: str | None,
    where: FeedFilter,
    *,
    after: int | None,
    write: Callable[[str], None],
    count: int | None = None,
) -> int:
    """Write a line per event after `after` (None: from now on) until cancelled, or until
    `count` lines; the position reached."""
    follower = Follower(engine, database_url)
    written = 0
    try:
        position = after if after is not None else await follower.horizon()
        while count is None or written < count:
            page = await next_page(
                follower,
                engine,
                after=position,
                limit=PAGE if count is None else min(PAGE, count - written),
                where=where,
                wait_s=WAIT_S,
            )
            for item_position, event in page.items:
                write(line(item_position, event))
                written += 1
            position = page.next_after
        return position
    finally:
        await follower.close()
