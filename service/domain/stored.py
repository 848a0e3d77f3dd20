"""What the store knows of one Paxos event: the notification, its delivery and fetch state.

The read API serves it as its `Event` shape (DESIGN.md §3), the console shows it, and the
store builds it straight from its rows; it lives here so that none of them imports another.
So do the terms of a listing (`EventFilter`, `Position`): the store answers them, and the
web layer parses them from a query string and binds cursors to them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

# Where fetching the full event stands (the `events.status` column's CHECK constraint).
EVENT_STATUSES = ("pending", "fetched", "failed", "not_found")


class EventFields(msgspec.Struct, frozen=True):
    """Every field of an `Event` but its `detail`: shared with the feed's variant of it, whose
    detail is the stored JSON text (service/store/feed.py)."""

    id: uuid.UUID
    type: str
    source: str
    time: datetime
    object: str
    is_test: bool
    status: str
    via: str
    deliveries: int
    first_received_at: datetime | None
    last_received_at: datetime | None
    fetched_at: datetime | None
    attempts: int
    last_error: str | None
    identity_id: str | None
    object_type: str | None
    undelivered_webhooks: int | None


class Event(EventFields, frozen=True):
    """One Paxos event as the store knows it: the notification, its delivery and fetch state."""

    detail: dict[str, Any] | None


class EventFilter(msgspec.Struct, frozen=True):
    """What a listing of events is restricted to; fields left at their default restrict nothing.

    `types` and `type_prefixes` together are one filter (an event matches either); a prefix
    keeps its final dot (`identity.` for `identity.*`). `since` is inclusive, `until`
    exclusive, both on the event's time.
    """

    types: tuple[str, ...] = ()
    type_prefixes: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    is_test: bool | None = None
    identity_id: str | None = None
    status: str | None = None
    descending: bool = True

    @property
    def has_type_filter(self) -> bool:
        return bool(self.types or self.type_prefixes)


class Position(msgspec.Struct, frozen=True):
    """A place in the (time, event_id) order: a page starts strictly after it."""

    time: datetime
    event_id: uuid.UUID
