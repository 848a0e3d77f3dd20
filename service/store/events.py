"""Reading events: one by id, and filtered keyset pages."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.api.schemas import Event
from service.store.tables import events

EVENT_COLUMNS = (
    events.c.event_id.label("id"),
    events.c.type,
    events.c.source,
    events.c.time,
    events.c.object,
    events.c.is_test,
    events.c.status,
    events.c.via,
    events.c.deliveries,
    events.c.first_received_at,
    events.c.last_received_at,
    events.c.fetched_at,
    events.c.attempts,
    events.c.last_error,
    events.c.identity_id,
    events.c.object_type,
    events.c.undelivered_webhooks,
    events.c.detail,
)


async def get_event(conn: AsyncConnection, event_id: uuid.UUID) -> Event | None:
    """The event with `event_id`, or None."""
    row = (
        await conn.execute(select(*EVENT_COLUMNS).where(events.c.event_id == event_id))
    ).one_or_none()
    return Event(**row._mapping) if row else None
