"""Query parameters of the listings, parsed by hand: the /events filters of DESIGN.md §3.

Query parameters are parsed here rather than by Litestar's signature model: every bad one
(unknown name, bad value, repeated) must be a 400 problem that names it and says what would
be accepted. The read API and the console parse /events queries alike; the other listings
(identities, transfers, the audit export) share the pieces: times, identity ids, limits.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from litestar.datastructures import MultiDict
from litestar.params import PathParameter

from service.domain.stored import EVENT_STATUSES, EventFilter, Position
from service.web.cursor import decode_cursor
from service.web.problems import InvalidParameter

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TYPES = 50
MAX_VALUE_LENGTH = 200

EVENT_PARAMETERS = (
    "type",
    "since",
    "until",
    "is_test",
    "identity_id",
    "status",
    "order",
    "limit",
    "cursor",
)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """An /events listing request, validated: what to match, how many, and where to start."""

    filters: EventFilter
    limit: int
    after: Position | None


def parse_query(params: MultiDict[Any], *, identity_id: str | None = None) -> ListQuery:
    """The /events listing `params` ask for; an `InvalidParameter` naming the first bad one.

    With `identity_id` (from a path that names the identity), the listing is fixed to that
    identity and the `identity_id` parameter is refused.
    """
    allowed = (
        EVENT_PARAMETERS
        if identity_id is None
        else tuple(p for p in EVENT_PARAMETERS if p != "identity_id")
    )
    for name in dict.fromkeys(params.keys()):
        if name == "identity_id" and identity_id is not None:
            raise InvalidParameter(name, "not allowed here: the path names the identity")
        if name not in allowed:
            raise unknown_parameter(name, allowed)

    def single(name: str) -> str | None:
        return single_value(params, name, "; only type may repeat")

    types, prefixes = _parse_types(params.getall("type", []))
    since = parse_time("since", single("since"))
    until = parse_time("until", single("until"))
    if since is not None and until is not None and until <= since:
        raise InvalidParameter("until", "must be later than since")
    if identity_id is None:
        identity_id = parse_identity_id(single("identity_id"))
    filters = EventFilter(
        types=types,
        type_prefixes=prefixes,
        since=since,
        until=until,
        is_test=_parse_is_test(single("is_test")),
        identity_id=identity_id,
        status=_parse_choice("status", single("status"), EVENT_STATUSES),
        descending=_parse_choice("order", single("order"), ("desc", "asc")) != "asc",
    )
    limit = parse_limit(single("limit"))
    cursor = single("cursor")
    after = decode_cursor(cursor, filters) if cursor is not None else None
    return ListQuery(filters=filters, limit=limit, after=after)


def unknown_parameter(name: str, known: tuple[str, ...]) -> InvalidParameter:
    """The 400 for a parameter not in `known` (a long name is cut short in the answer)."""
    shown = name if len(name) <= 60 else name[:57] + "..."
    return InvalidParameter(shown, f"unknown parameter; known are {', '.join(known)}")


def single_value(params: MultiDict[Any], name: str, hint: str = "") -> str | None:
    """The one value of `name`, or None; `InvalidParameter` if it is given more than once
    (`hint` is added to the detail)."""
    values: list[str] = params.getall(name, [])
    if len(values) > 1:
        raise InvalidParameter(name, f"given more than once{hint}")
    return values[0] if values else None


def _parse_types(values: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Exact types and prefixes (kept with their final dot: `identity.*` -> `identity.`)."""
    if len(values) > MAX_TYPES:
        raise InvalidParameter("type", f"at most {MAX_TYPES} values")
    exact: dict[str, None] = {}
    prefixes: dict[str, None] = {}
    for value in values:
        if not value:
            raise InvalidParameter(
                "type",
                "empty; give a type such as identity.approved or a prefix such as identity.*",
            )
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidParameter("type", f"longer than {MAX_VALUE_LENGTH} characters")
        if value.endswith(".*") and len(value) > 2 and "*" not in value[:-2]:
            prefixes[value[:-1]] = None
        elif "*" in value:
            raise InvalidParameter(
                "type", f"{value!r}: a wildcard may only end a prefix, as in identity.*"
            )
        else:
            exact[value] = None
    # Sorted, so the same filter in another order gets the same cursor fingerprint.
    return tuple(sorted(exact)), tuple(sorted(prefixes))


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+\- ])(\d{2}):(\d{2}))?"
)


def parse_time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset, e.g. 2026-01-07T14:30:02Z or ...+02:00, in UTC.

    A space where the offset's sign belongs is read as `+`: an unencoded `+` in a query
    string arrives as a space, and refusing that would puzzle more people than it protects.
    """
    if value is None:
        return None
    match = _RFC3339.fullmatch(value)
    example = "as in 2026-01-07T14:30:02Z or 2026-01-07T16:30:02+02:00"
    if match is None:
        raise InvalidParameter(name, f"{value!r} is not an RFC 3339 time, {example}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if not zulu and not sign:
        raise InvalidParameter(name, f"{value!r} has no UTC offset; add Z or ±HH:MM, {example}")
    try:
        offset = timedelta(0)
        if sign:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if sign == "-":
                offset = -offset
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            micro,
            tzinfo=timezone(offset),
        )
        # In UTC too, as the database gets it: 0001-01-01T00:00:00+01:00 is not.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise InvalidParameter(name, f"{value!r} is not a valid time ({e})") from None


def _parse_is_test(value: str | None) -> bool | None:
    if value is None:
        return None
    if value not in ("true", "false"):
        raise InvalidParameter("is_test", f"{value!r}: must be true or false")
    return value == "true"


# A path parameter that must be a UUID, taken as text so that a malformed one is a 400 naming
# the parameter (`parse_uuid`) rather than a bare 404 from the router; documented as a UUID.
UuidText = Annotated[str, PathParameter(schema_extra={"format": "uuid"})]


def parse_uuid(name: str, value: str) -> uuid.UUID:
    """`value` as a UUID; an `InvalidParameter` naming `name` when it is not one."""
    try:
        if len(value) > 45:  # the longest form uuid.UUID reads: urn:uuid:...
            raise ValueError(value)
        return uuid.UUID(value)
    except ValueError:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise InvalidParameter(
            name, f"{shown!r} is not a UUID, such as 6f2c7d3e-1b1a-4f7e-9a43-0c1c1c1c1c1c"
        ) from None


def enum_value(value: str | None, *, upper: bool) -> str | None:
    """An enum filter's value in the case its values are stored in (Paxos's enums are upper
    case, the service's own statuses lower case), so that any case finds them."""
    if value is None:
        return None
    return value.upper() if upper else value.lower()


def parse_identity_id(value: str | None) -> str | None:
    """An identity id of 1 to `MAX_VALUE_LENGTH` characters, or None."""
    if value is None:
        return None
    if not value or len(value) > MAX_VALUE_LENGTH:
        raise InvalidParameter("identity_id", f"must be 1 to {MAX_VALUE_LENGTH} characters")
    return value


def _parse_choice(name: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is None or enum_value(value, upper=False) in choices:
        return enum_value(value, upper=False)
    raise InvalidParameter(name, f"{value!r}: must be one of {', '.join(choices)}")


def parse_limit(value: str | None) -> int:
    """A page size from 1 to `MAX_LIMIT`; `DEFAULT_LIMIT` when absent."""
    if value is None:
        return DEFAULT_LIMIT
    # Digits only: int() would also take " 5", "+5" and "1_0".
    if not re.fullmatch(r"\d{1,7}", value) or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidParameter("limit", f"{value!r}: must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def parse_types(values: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The `type` values of a query (exact types, prefixes with their final dot), as /events
    reads them; for the other routes that filter by type (the feed)."""
    return _parse_types(values)


def parse_is_test(value: str | None) -> bool | None:
    """An `is_test` value (`true` or `false`), or None when absent."""
    return _parse_is_test(value)
