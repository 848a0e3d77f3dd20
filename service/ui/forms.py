"""The events filter form: what it asks of the /events query, and how to show it filled in."""

from __future__ import annotations

import re
from typing import Any

from litestar.datastructures import MultiDict

EVENT_FORM_FIELDS = ("type", "since", "until", "is_test", "status", "identity_id", "order")

_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")


def as_rfc3339(value: str) -> str:
    """A datetime-local form value (no offset) read as UTC; anything else as typed."""
    value = value.strip()
    if _LOCAL_TIME.fullmatch(value):
        return value + (":00Z" if value.count(":") == 1 else "Z")
    return value


def split_types(value: str) -> list[str]:
    """The event types in a field that lists them separated by spaces or commas."""
    return [t for t in re.split(r"[\s,]+", value) if t]


def event_query(params: MultiDict[Any]) -> list[tuple[str, str]]:
    """The /events query the form asks for: empty fields dropped, types split, times in UTC."""
    pairs: list[tuple[str, str]] = []
    for name in EVENT_FORM_FIELDS:
        for value in params.getall(name, []):
            value = str(value).strip()
            if not value:
                continue
            if name == "type":
                pairs += [("type", t) for t in split_types(value)]
            elif name in ("since", "until"):
                pairs.append((name, as_rfc3339(value)))
            else:
                pairs.append((name, value))
    return pairs


def form_values(params: MultiDict[Any]) -> dict[str, str]:
    """The filter form's fields as the person typed them, to show the form filled in."""
    return {name: " ".join(str(v) for v in params.getall(name, [])) for name in EVENT_FORM_FIELDS}


def raw_filter_pairs(params: MultiDict[Any]) -> list[tuple[str, str]]:
    """The filter form's fields as received (for links that keep the filters)."""
    return [
        (name, str(value))
        for name in EVENT_FORM_FIELDS
        for value in params.getall(name, [])
        if str(value).strip()
    ]
