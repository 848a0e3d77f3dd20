"""GET /events and GET /events/{id}: the filters of DESIGN.md §3, keyset cursors, their 400s.

Query parameters are parsed here, by hand, rather than by Litestar's signature model: every
bad one (unknown name, bad value, repeated) must be a 400 problem that names it and says
what would be accepted. The OpenAPI document describes them all the same (`ListOperation`).

A cursor is base64url of a small JSON array: a version, the (time, event_id) of the last
item handed out, and a fingerprint of the filters and order it was issued for, followed by a
checksum. A cursor used with other filters would silently skip or repeat events, so it is
refused; so is one that was cut or altered. The checksum is not a secret: a forged cursor
could only choose where a listing starts, among events the caller may list anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import MultiDict, State
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
)
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.schemas import EventPage
from service.domain.stored import Event
from service.store.events import EventFilter, Position, get_event, list_events
from service.store.tables import EVENT_STATUSES
from service.web.auth import require_read
from service.web.problems import PROBLEM_JSON, InvalidParameter

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TYPES = 50
MAX_VALUE_LENGTH = 200

PARAMETERS = (
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


# --- OpenAPI ------------------------------------------------------------------------------


def _query_parameter(name: str, schema: Schema, description: str) -> Parameter:
    return Parameter(name=name, param_in="query", schema=schema, description=description)


def query_parameter_docs(*, with_identity_id: bool = True) -> list[Parameter]:
    """The OpenAPI description of the listing's query parameters."""
    string = Schema(type=OpenAPIType.STRING)
    time = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME)
    docs = [
        Parameter(
            name="type",
            param_in="query",
            schema=Schema(type=OpenAPIType.ARRAY, items=string, max_items=MAX_TYPES),
            explode=True,
            style="form",
            description=(
                "Event type, exact (`identity.approved`) or a prefix ending in `.*` "
                "(`identity.*` matches `identity.approved` and "
                "`identity.kyc_refresh.started`). Repeat for several: any may match."
            ),
        ),
        _query_parameter(
            "since", time, "Events at or after this time (RFC 3339 with offset, e.g. `...Z`)."
        ),
        _query_parameter(
            "until", time, "Events before this time (exclusive; RFC 3339 with offset)."
        ),
        _query_parameter(
            "is_test",
            Schema(type=OpenAPIType.BOOLEAN),
            "`true`: sandbox test events only; `false`: real events only; absent: both.",
        ),
        _query_parameter("identity_id", string, "Events about this Paxos identity."),
        _query_parameter(
            "status",
            Schema(type=OpenAPIType.STRING, enum=list(EVENT_STATUSES)),
            "Fetch state of the full event.",
        ),
        _query_parameter(
            "order",
            Schema(type=OpenAPIType.STRING, enum=["desc", "asc"], default="desc"),
            "By event time, then id.",
        ),
        _query_parameter(
            "limit",
            Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT),
            "Items per page.",
        ),
        _query_parameter(
            "cursor",
            string,
            "`next_cursor` of the previous page, with the same filters and order.",
        ),
    ]
    return [d for d in docs if with_identity_id or d.name != "identity_id"]


_BAD_PARAMETER = OpenAPIResponse(
    description="A bad query parameter; the problem's `parameter` member names it.",
    content={PROBLEM_JSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
)


def list_operation_class(*, with_identity_id: bool = True) -> type[Operation]:
    """An Operation that documents the listing's query parameters and its 400 answer."""
    docs = query_parameter_docs(with_identity_id=with_identity_id)

    @dataclass
    class ListOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *docs]
            self.responses = {**(self.responses or {}), "400": _BAD_PARAMETER}

    return ListOperation


# --- routes -------------------------------------------------------------------------------


class EventController(Controller):
    path = "/events"
    tags = ["events"]
    guards = [require_read]

    @get(
        "/",
        summary="Events, filtered and paged",
        description=(
            "Events in event-time order (newest first unless `order=asc`), ties broken by id. "
            "Pass `next_cursor` back as `cursor`, with the same filters, for the next page; "
            "it is null on the last page."
        ),
        # Parameters are parsed by hand (parse_query) and documented here.
        operation_class=list_operation_class(),
    )
    async def list_(self, request: Request[Any, Any, State]) -> EventPage:
        return await list_event_page(request)

    @get("/{event_id:uuid}", summary="One event")
    async def get_one(
        self, request: Request[Any, Any, State], event_id: FromPath[uuid.UUID]
    ) -> Event:
        engine: AsyncEngine = request.app.state.engine
        async with engine.connect() as conn:
            event = await get_event(conn, event_id)
        if event is None:
            raise NotFoundException(f"no event with id {event_id}")
        return event


async def list_event_page(
    request: Request[Any, Any, State], *, identity_id: str | None = None
) -> EventPage:
    """One page of events for `request`'s query parameters.

    With `identity_id` (the path of `GET /identities/{identity_id}/events`), the listing is
    fixed to that identity and the `identity_id` query parameter is refused.
    """
    query = parse_query(request.query_params, identity_id=identity_id)
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn:
        page = await list_events(conn, query.filters, limit=query.limit, after=query.after)
    next_cursor = None
    if page.more:
        last = page.items[-1]
        next_cursor = encode_cursor(Position(time=last.time, event_id=last.id), query.filters)
    return EventPage(items=page.items, next_cursor=next_cursor)


# --- query parameters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A listing request, validated: what to match, how many, and where to start."""

    filters: EventFilter
    limit: int
    after: Position | None


def parse_query(params: MultiDict[Any], *, identity_id: str | None = None) -> ListQuery:
    """The listing `params` ask for; an `InvalidParameter` naming the first bad one."""
    allowed = (
        PARAMETERS if identity_id is None else tuple(p for p in PARAMETERS if p != "identity_id")
    )
    for name in dict.fromkeys(params.keys()):
        if name == "identity_id" and identity_id is not None:
            raise InvalidParameter(name, "not allowed here: the path names the identity")
        if name not in allowed:
            raise InvalidParameter(
                _shown(name), f"unknown parameter; known are {', '.join(allowed)}"
            )

    def single(name: str) -> str | None:
        values: list[str] = params.getall(name, [])
        if len(values) > 1:
            raise InvalidParameter(name, "given more than once; only type may repeat")
        return values[0] if values else None

    types, prefixes = _parse_types(params.getall("type", []))
    since = _parse_time("since", single("since"))
    until = _parse_time("until", single("until"))
    if since is not None and until is not None and until <= since:
        raise InvalidParameter("until", "must be later than since")
    if identity_id is None:
        identity_id = _parse_identity_id(single("identity_id"))
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
    limit = _parse_limit(single("limit"))
    cursor = single("cursor")
    after = decode_cursor(cursor, filters) if cursor is not None else None
    return ListQuery(filters=filters, limit=limit, after=after)


def _shown(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


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


def _parse_time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset, e.g. 2026-01-07T14:30:02Z or ...+02:00.

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


def _parse_identity_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_VALUE_LENGTH:
        raise InvalidParameter("identity_id", f"must be 1 to {MAX_VALUE_LENGTH} characters")
    return value


def _parse_choice(name: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is None or value in choices:
        return value
    raise InvalidParameter(name, f"{value!r}: must be one of {', '.join(choices)}")


def _parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    # Digits only: int() would also take " 5", "+5" and "1_0".
    if not re.fullmatch(r"\d{1,7}", value) or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidParameter("limit", f"{value!r}: must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


# --- cursors ------------------------------------------------------------------------------

_CURSOR_VERSION = 1
_CHECKSUM_BYTES = 8
_CHECKSUM_KEY = b"paxos-event-store/events-cursor"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class _CursorBody(msgspec.Struct, array_like=True, frozen=True):
    version: int
    time_us: int  # microseconds since the epoch: exact, and no time zone to get wrong
    event_id: uuid.UUID
    fingerprint: str


def fingerprint(filters: EventFilter) -> str:
    """A short digest of everything that decides which events follow a cursor, and in what
    order (not the limit: pages may differ in size)."""

    def us(t: datetime | None) -> int | None:
        return None if t is None else (t - _EPOCH) // _MICROSECOND

    canonical = msgspec.json.encode(
        [
            filters.types,
            filters.type_prefixes,
            us(filters.since),
            us(filters.until),
            filters.is_test,
            filters.identity_id,
            filters.status,
            filters.descending,
        ]
    )
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES, key=_CHECKSUM_KEY).digest()


def encode_cursor(position: Position, filters: EventFilter) -> str:
    """The opaque `next_cursor` for the listing `filters` after `position`."""
    body = msgspec.json.encode(
        _CursorBody(
            version=_CURSOR_VERSION,
            time_us=(position.time - _EPOCH) // _MICROSECOND,
            event_id=position.event_id,
            fingerprint=fingerprint(filters),
        )
    )
    return base64.urlsafe_b64encode(body + _checksum(body)).rstrip(b"=").decode()


_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,400}")


def decode_cursor(cursor: str, filters: EventFilter) -> Position:
    """Where a cursor from `encode_cursor` resumes; `InvalidParameter` if it is not one of
    ours, or was issued for other filters or another order."""
    if not _BASE64URL.fullmatch(cursor):
        raise InvalidParameter("cursor", "malformed; pass next_cursor back unchanged")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidParameter("cursor", "malformed; pass next_cursor back unchanged") from None
    body, checksum = raw[:-_CHECKSUM_BYTES], raw[-_CHECKSUM_BYTES:]
    if len(raw) <= _CHECKSUM_BYTES or not hmac.compare_digest(checksum, _checksum(body)):
        raise InvalidParameter("cursor", "damaged or altered; pass next_cursor back unchanged")
    try:
        decoded = msgspec.json.decode(body, type=_CursorBody)
        if decoded.version != _CURSOR_VERSION:
            raise ValueError("version")
        time = _EPOCH + decoded.time_us * _MICROSECOND
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, OverflowError):
        raise InvalidParameter("cursor", "not a cursor of this service; start again") from None
    if decoded.fingerprint != fingerprint(filters):
        raise InvalidParameter(
            "cursor",
            "issued for other filters or another order; repeat the query that returned it, "
            "or start again without a cursor",
        )
    return Position(time=time, event_id=decoded.event_id)
