"""The events projections fold, and the order they are folded in (pure; no I/O).

Paxos promises no delivery order, so every projection orders events by their own
`created_at` (to the nanosecond), ties broken by event id, and applies an event to a field
only when it is newer than the event that set the field. `time_ns` turns `created_at` into an
integer with the same arithmetic as the SQL in `store/projections/fold.py`, so the two can
never disagree.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

# RFC 3339 as Paxos writes it: up to 9 fractional digits (more are cut, as Paxos's own
# sort would), `Z` or a numeric offset. `fold._EXTRACT` makes the same checks without a regex.
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
NS = 1_000_000_000
# RFC 3339's range of each field (the year's: nanoseconds since the epoch must fit the
# database's bigint). Beyond them a time could overflow that bigint and stop the projection.
# The SQL twin (`fold._EXTRACT`) checks the same table.
FIELD_RANGES = {
    "year": (1678, 2261),
    "month": (1, 12),
    "day": (1, 31),
    "hour": (0, 23),
    "minute": (0, 59),
    "second": (0, 60),
    "zone_hour": (0, 23),
    "zone_minute": (0, 59),
}


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).

    Plain arithmetic on purpose: a projection must never fail on a malformed date (one bad
    event would stop it for good), so nothing here raises; the SQL does the same sums.
    """
    y = year - (1 if month <= 2 else 0)
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def time_ns(text: object) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 `created_at`, or None if it is not one.

    Fields are checked against FIELD_RANGES (a 31st of February passes, and counts on into
    March; a 60th second counts as the next minute's first).
    """
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        return None
    zone_length = 1 if text[-1] in "Zz" else 6
    fields = {
        "year": int(text[0:4]),
        "month": int(text[5:7]),
        "day": int(text[8:10]),
        "hour": int(text[11:13]),
        "minute": int(text[14:16]),
        "second": int(text[17:19]),
        "zone_hour": int(text[-5:-3]) if zone_length == 6 else 0,
        "zone_minute": int(text[-2:]) if zone_length == 6 else 0,
    }
    if not all(low <= fields[name] <= high for name, (low, high) in FIELD_RANGES.items()):
        return None
    days = days_from_civil(fields["year"], fields["month"], fields["day"])
    seconds = days * 86400 + fields["hour"] * 3600 + fields["minute"] * 60 + fields["second"]
    offset = fields["zone_hour"] * 3600 + fields["zone_minute"] * 60
    seconds -= offset if text[-6] == "+" else -offset
    fraction = text[20 : len(text) - zone_length] if text[19] == "." else ""
    return seconds * NS + int(fraction[:9].ljust(9, "0"))


class Key(msgspec.Struct, frozen=True, order=True, array_like=True):
    """Where an event sits in Paxos's order: `created_at` in nanoseconds, then id."""

    ns: int
    event_id: uuid.UUID


class ProjectedEvent(msgspec.Struct, frozen=True):
    """A full Paxos event (Get Event's body) as the projections read it."""

    id: uuid.UUID
    type: str
    created_at: str
    object: Any = None

    @property
    def key(self) -> Key | None:
        """The event's place in Paxos's order; None when `created_at` is unreadable."""
        ns = time_ns(self.created_at)
        return None if ns is None else Key(ns, self.id)

    def text(self, name: str) -> str | None:
        """A string field of the object; anything else (missing, a number, ...) is None."""
        value = self.object.get(name) if isinstance(self.object, dict) else None
        return value if isinstance(value, str) else None

    def flag(self, name: str) -> bool | None:
        """A boolean field of the object, or None."""
        value = self.object.get(name) if isinstance(self.object, dict) else None
        return value if isinstance(value, bool) else None


def newer(candidate: Key, current: Key | None) -> bool:
    """Whether an event at `candidate` replaces what was set by the event at `current`."""
    return current is None or candidate > current
