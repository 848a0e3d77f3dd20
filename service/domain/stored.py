"""What the store knows of one Paxos event: the notification, its delivery and fetch state.

The read API serves it as its `Event` shape (DESIGN.md §3), the console shows it, and the
store builds it straight from its rows; it lives here so that none of them imports another.
"""

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
