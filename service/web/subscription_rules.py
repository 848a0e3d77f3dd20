"""What a push subscription's name, types, positions and times may be: the rules the admin API
and the console both apply before they call the store (one set of rules, one place)."""

from __future__ import annotations

import re
from datetime import datetime

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TYPE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?")
PRINTABLE_TYPE = re.compile(r"[\x21-\x7e]{1,200}")
MAX_TYPES = 100
MAX_POSITION = 2**63 - 1
DEFAULT_MAX_IN_FLIGHT = 16

NAME_RULE = "must be 1 to 63 of a-z, 0-9, _, . and -, starting with a letter or digit"


def name_problem(name: str) -> str | None:
    """What is wrong with `name` as a subscription name, or None."""
    return None if NAME.fullmatch(name) else NAME_RULE


def type_problem(pattern: str) -> str | None:
    """What is wrong with one entry of `types` (an exact type or a prefix such as
    `transfer.*`), or None."""
    if not PRINTABLE_TYPE.fullmatch(pattern):
        return "each must be a type of 1 to 200 printable ASCII characters"
    if not TYPE.fullmatch(pattern):
        return f"{pattern!r} is neither an exact type nor a prefix such as transfer.*"
    return None


def parse_time(value: str) -> datetime | str:
    """An RFC 3339 time with an offset, or what is wrong with `value` (a string)."""
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return "must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"
    if when.tzinfo is None:
        return "must be RFC 3339 with an offset (e.g. Z)"
    return when
