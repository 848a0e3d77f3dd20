"""Response shapes of the read API (DESIGN.md §3)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec


class Event(msgspec.Struct, frozen=True):
    """One Paxos event as the store knows it: the notification, its delivery and fetch state."""

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
    detail: dict[str, Any] | None


class EventPage(msgspec.Struct, frozen=True):
    items: list[Event]
    next_cursor: str | None
