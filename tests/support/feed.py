"""Full events written the way the reconciler writes them (`record_listed`: an events row and a
journal `event` row in the caller's transaction), for the feed's tests; and an SSE reader."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.store.listed import Listed, record_listed

BASE_TIME = datetime(2026, 1, 7, tzinfo=UTC)


def full_event(
    type_: str = "identity.approved",
    *,
    is_test: bool = False,
    identity_id: str = "idt-1",
    padding: int = 0,
    n: int = 0,
) -> Listed:
    """A full event as List Events returns it; `padding` characters make its body larger."""
    event_id = uuid.uuid4()
    created = BASE_TIME + timedelta(seconds=n)
    body: dict[str, Any] = {
        "id": str(event_id),
        "type": type_,
        "source": "com.paxos",
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "is_test": is_test,
        "object_type": "identity",
        "object": {"id": identity_id, "identity_id": identity_id, "note": "x" * padding},
        "undelivered_webhooks": 0,
    }
    return Listed(
        event_id=event_id,
        type=type_,
        created_at=created,
        is_test=is_test,
        raw=msgspec.json.encode(body).decode(),
        identity_id=identity_id,
        object_type="identity",
        undelivered_webhooks=0,
        object_id=None,
    )


async def store(conn: AsyncConnection, *events: Listed) -> dict[uuid.UUID, int]:
    """Store `events` in `conn`'s transaction (not committed); their journal positions."""
    await record_listed(conn, list(events))
    rows = await conn.execute(
        text(
            "SELECT event_id, position FROM journal WHERE kind = 'event' "
            "AND event_id = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": [e.event_id for e in events]},
    )
    return {row.event_id: row.position for row in rows}


@dataclass(frozen=True)
class Message:
    """One SSE message (or comment, with `comment` set)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    @property
    def item(self) -> dict[str, Any]:
        assert self.data is not None
        decoded: dict[str, Any] = msgspec.json.decode(self.data)
        return decoded


async def sse_messages(response: httpx.Response) -> AsyncIterator[Message]:
    """The messages and comments of an SSE response, as they arrive."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield Message(**fields)
            fields = {}
        elif line.startswith(":"):
            yield Message(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
