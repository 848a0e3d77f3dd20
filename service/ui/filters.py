"""The console templates' Jinja filters: times as `<time>` in UTC, ages in a readable unit."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from markupsafe import Markup, escape

_PAXOS_UTC = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?Z")


def utc(value: datetime | str | None) -> Markup:
    """A time as `<time>`, in UTC; console.js puts the reader's local time in its title."""
    if value is None:
        return Markup('<span class="none">—</span>')
    if isinstance(value, str):
        # As Paxos wrote it (nanoseconds kept in the attribute); shown like the others.
        match = _PAXOS_UTC.fullmatch(value)
        shown = f"{match.group(1)} {match.group(2)} UTC" if match else value
        return Markup('<time datetime="{}" title="{}">{}</time>').format(
            escape(value), escape(value), escape(shown)
        )
    when = value.astimezone(UTC)
    iso = when.isoformat().replace("+00:00", "Z")
    shown = when.strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, shown, shown)


def age(seconds: float | None) -> str:
    """A duration in seconds as s, min or h, whichever reads best."""
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
