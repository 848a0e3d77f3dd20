"""Builders of test data: notification bodies as Paxos sends them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec


def notification(
    *,
    id: uuid.UUID | str | None = None,  # noqa: A002 - the field is called id
    type: str = "identity.approved",  # noqa: A002
    time: datetime | str | None = None,
    is_test: bool | None = False,
    **overrides: Any,
) -> dict[str, Any]:
    """A valid notification dict; `is_test=None` leaves the field out, as older deliveries do."""
    when = time or datetime(2026, 1, 7, 14, 30, 2, tzinfo=UTC)
    body: dict[str, Any] = {
        "id": str(id or uuid.uuid4()),
        "type": type,
        "source": "com.paxos",
        "time": when if isinstance(when, str) else when.isoformat().replace("+00:00", "Z"),
        "object": "event",
    }
    if is_test is not None:
        body["is_test"] = is_test
    body.update(overrides)
    return body


def encode(body: Any) -> bytes:
    return msgspec.json.encode(body)
