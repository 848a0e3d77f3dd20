"""Response shapes of the read API (DESIGN.md §3)."""

from __future__ import annotations

import msgspec

from service.domain.stored import Event


class EventPage(msgspec.Struct, frozen=True):
    items: list[Event]
    next_cursor: str | None
