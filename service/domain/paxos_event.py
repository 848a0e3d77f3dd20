"""A full Paxos event as Get Event and List Events return it (PAXOS.md §2); pure data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


class PaxosEvent(msgspec.Struct, frozen=True):
    """An Event as Get Event and List Events return it (PAXOS.md §2)."""

    id: str
    type: str
    # Kept as Paxos wrote it (RFC 3339, up to nanoseconds): a datetime would round it to
    # microseconds, and paging by time must repeat Paxos's own value exactly.
    created_at: str
    object_type: str | None = None
    object: dict[str, Any] | None = None
    undelivered_webhooks: int | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A full event: `event` decoded, `raw` the JSON exactly as Paxos sent it."""

    event: PaxosEvent
    raw: str


# The event types whose events are found by their object's id (`events.object_id`).
FOUND_BY_OBJECT_ID = ("transfer.", "orchestration.")


def object_id_of(event_type: str, obj: Any) -> str | None:
    """What a transfer's or an orchestration's events are found by: its object's `id`
    (a string); None for other events."""
    if not event_type.startswith(FOUND_BY_OBJECT_ID) or not isinstance(obj, dict):
        return None
    value = obj.get("id")
    return value if isinstance(value, str) else None


def identity_id_of(fetched: Fetched) -> str | None:
    """The identity an event is about, when its object names one."""
    obj = fetched.event.object or {}
    value = obj.get("identity_id")
    return value if isinstance(value, str) and value else None
