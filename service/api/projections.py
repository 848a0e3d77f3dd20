"""The projections over HTTP: identities, transfers, orchestrations, and their rebuild.

Listings are paged like `/events`: keyset cursors (opaque, checksummed, bound to the filters
they were issued for), `limit` 1 to 1000, and a 400 problem naming any bad parameter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Operation, Parameter, Schema
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.api.events import list_event_page
from service.api.schemas import (
    Control,
    EventPage,
    HistoryChange,
    HistoryEvent,
    Identity,
    IdentityHistory,
    IdentityHistoryEntry,
    IdentityPage,
    KycRefresh,
    Orchestration,
    OrchestrationHistory,
    OrchestrationHistoryEntry,
    RebuildStarted,
    Transfer,
    TransferHistory,
    TransferHistoryEntry,
    TransferPage,
)
from service.domain.event import Key, time_ns
from service.domain.history import Entry
from service.store.jobs import create_job
from service.store.projections import history, read
from service.store.projections.registry import PROJECTIONS
from service.web.auth import require_admin, require_read
from service.web.cursor import CursorCodec, fingerprint
from service.web.openapi import event_list_operation, list_operation
from service.web.problems import InvalidParameter
from service.web.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_VALUE_LENGTH,
    enum_value,
    parse_limit,
    parse_time,
    single_value,
    unknown_parameter,
)


def identity_view(row: dict[str, Any]) -> Identity:
    """The API shape of a row from `read.get_identity` / `read.list_identities`."""
    controls = row["controls"] if isinstance(row["controls"], list) else []
    return Identity(
        identity_id=row["identity_id"],
        summary_status=row["summary_status"],
        required_documents=list(row["required_documents"] or []),
        kyc_refresh=KycRefresh(
            row["kyc_state"], row["kyc_last_refresh_at"], row["kyc_next_refresh_at"]
        ),
        controls=[msgspec.convert(c, Control) for c in controls],
        last_event_id=row["last_event_id"],
        last_event_type=row["last_event_type"],
        last_event_time=row["last_event_time"],
        events_count=row["events_count"],
        updated_at=row["updated_at"],
        **{k: row[k] for k in ("as_of", "known_at") if k in row},
    )


# --- query parameters and cursors ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyedQuery:
    """A listing of identities or transfers, validated: filters, page size, and the id to
    start after."""

    filters: dict[str, str | None]
    limit: int
    after: str | None


_CURSORS = CursorCodec(
    "projection",
    str,
    max_chars=600,
    foreign="not a cursor of this listing; start again",
    mismatch="issued for other filters or another listing; start again without it",
)


def _bound_to(kind: str, filters: dict[str, str | None]) -> str:
    return fingerprint([kind, sorted(filters.items())])


def encode_cursor(kind: str, last_id: str, filters: dict[str, str | None]) -> str:
    """An opaque cursor: the last id handed out, bound to the listing's filters."""
    return _CURSORS.encode(last_id, _bound_to(kind, filters))


def parse_list_query(
    kind: str, params: MultiDict[Any], filter_names: tuple[str, ...]
) -> KeyedQuery:
    """The listing `params` ask for; an `InvalidParameter` naming the first bad one."""
    allowed = (*filter_names, "limit", "cursor")
    for name in dict.fromkeys(params.keys()):
        if name not in allowed:
            raise unknown_parameter(name, allowed)
    filters: dict[str, str | None] = {}
    for name in filter_names:
        value = single_value(params, name)
        # Any value is accepted (Paxos adds enum values without notice); only its size is
        # checked.
        if value is not None and not 1 <= len(value) <= MAX_VALUE_LENGTH:
            raise InvalidParameter(name, f"must be 1 to {MAX_VALUE_LENGTH} characters")
        # Paxos's enums are upper case: any case finds them (status=pending as PENDING).
        filters[name] = enum_value(value, upper=True) if name in ENUM_FILTERS else value
    limit = parse_limit(single_value(params, "limit"))
    cursor = single_value(params, "cursor")
    after = _CURSORS.decode(cursor, _bound_to(kind, filters)) if cursor is not None else None
    return KeyedQuery(filters, limit, after)


# The filters whose values are Paxos enums, compared in upper case.
ENUM_FILTERS = frozenset({"summary_status", "control_type", "status", "type"})
IDENTITY_FILTERS = {
    "summary_status": "Identities whose summary status is this (APPROVED, DENIED, ...).",
    "control_type": "Identities with an active control of this type (FROZEN, SELL_ONLY, ...).",
}
TRANSFER_FILTERS = {
    "status": "Transfers in this status (PENDING, COMPLETED, FAILED).",
    "profile_id": "Transfers of this profile.",
    "type": "Transfers of this type (CRYPTO_DEPOSIT, WIRE_WITHDRAWAL, ...).",
}


# --- time travel: as_of, known_at, history ----------------------------------------------

AS_OF_PARAMETERS = ("as_of", "known_at")
HISTORY_PARAMETERS = ("known_at", "limit", "cursor")


@dataclass(frozen=True, slots=True)
class Bounds:
    """The two clocks a state is folded under: Paxos's event time (`as_of`, also in
    nanoseconds when given with more precision than a datetime holds) and the journal's
    recording time (`known_at`)."""

    as_of: datetime | None
    as_of_ns: int | None
    known_at: datetime | None


def _refuse_unknown(params: MultiDict[Any], allowed: tuple[str, ...]) -> None:
    for name in dict.fromkeys(params.keys()):
        if name not in allowed:
            raise unknown_parameter(name, allowed)


def _time(params: MultiDict[Any], name: str) -> tuple[datetime | None, str | None]:
    raw = single_value(params, name)
    return parse_time(name, raw), raw


def parse_bounds(params: MultiDict[Any]) -> Bounds | None:
    """`as_of` and `known_at` of a state's query (RFC 3339 with an offset), or None when
    neither is given; an `InvalidParameter` naming the first bad one."""
    _refuse_unknown(params, AS_OF_PARAMETERS)
    as_of, raw = _time(params, "as_of")
    known_at, _ = _time(params, "known_at")
    if as_of is None and known_at is None:
        return None
    # Paxos's times have nanoseconds: read them when given (the datetime keeps microseconds).
    return Bounds(as_of, time_ns(raw) if raw is not None else None, known_at)


async def state_at(
    conn: AsyncConnection, kind: str, subject_id: str, bounds: Bounds
) -> dict[str, Any] | None:
    """The subject's row folded under `bounds` (`history.state_as_of`)."""
    return await history.state_as_of(
        conn,
        kind,
        subject_id,
        as_of=bounds.as_of,
        known_at=bounds.known_at,
        as_of_ns=bounds.as_of_ns,
    )


async def subject_state(
    engine: AsyncEngine,
    kind: str,
    noun: str,
    subject_id: str,
    params: MultiDict[Any],
    current: Callable[[AsyncConnection, str], Awaitable[dict[str, Any] | None]],
) -> dict[str, Any]:
    """The subject's row: `current` (its projection's), or folded under `as_of`/`known_at`
    when given; 404 when there is none."""
    bounds = parse_bounds(params)
    async with engine.connect() as conn:
        if bounds is None:
            row = await current(conn, subject_id)
        else:
            row = await state_at(conn, kind, subject_id, bounds)
    if row is None:
        raise _not_found(noun, subject_id, bounds)
    return row


def _not_found(noun: str, subject_id: str, bounds: Bounds | None) -> NotFoundException:
    if bounds is None:
        return NotFoundException(f"no {noun} with id {subject_id}")
    by = [
        f"{name} {value.isoformat()}"
        for name, value in (("as_of", bounds.as_of), ("known_at", bounds.known_at))
        if value
    ]
    return NotFoundException(f"no event of {noun} {subject_id} qualifies ({', '.join(by)})")


S = TypeVar("S")
T = TypeVar("T")

_HISTORY_CURSORS = CursorCodec(
    "history",
    Key,
    max_chars=400,
    foreign="not a cursor of a history; start again",
    mismatch="issued for another subject or another known_at; start again without it",
)


def _history_bound_to(kind: str, subject_id: str, known_at: datetime | None) -> str:
    return fingerprint([kind, subject_id, None if known_at is None else known_at.isoformat()])


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A history's query, validated."""

    known_at: datetime | None
    limit: int
    after: Key | None


def parse_history_query(kind: str, subject_id: str, params: MultiDict[Any]) -> HistoryQuery:
    """`known_at`, `limit` and `cursor` of a history; `InvalidParameter` naming a bad one."""
    _refuse_unknown(params, HISTORY_PARAMETERS)
    known_at, _ = _time(params, "known_at")
    limit = parse_limit(single_value(params, "limit"))
    cursor = single_value(params, "cursor")
    bound = _history_bound_to(kind, subject_id, known_at)
    after = _HISTORY_CURSORS.decode(cursor, bound) if cursor is not None else None
    return HistoryQuery(known_at, limit, after)


async def history_entries(
    engine: AsyncEngine,
    kind: str,
    noun: str,
    subject_id: str,
    params: MultiDict[Any],
    entry: Callable[[HistoryEvent, bool, list[HistoryChange], S], T],
    view: Callable[[dict[str, Any]], S],
) -> tuple[list[T], str | None]:
    """A page of the subject's history as `entry`s (its event, whether it changed anything,
    what it changed, the state after it as `view` shows it) and the `next_cursor`; 404 for
    an unknown subject."""
    query = parse_history_query(kind, subject_id, params)
    async with engine.connect() as conn:
        page = await history.history_page(
            conn, kind, subject_id, known_at=query.known_at, after=query.after, limit=query.limit
        )
    if page is None:
        raise _not_found(noun, subject_id, None)
    bound = _history_bound_to(kind, subject_id, query.known_at)
    cursor = None if page.next_key is None else _HISTORY_CURSORS.encode(page.next_key, bound)
    items = [
        entry(history_event(e), e.changed, history_changes(e), view(e.state)) for e in page.entries
    ]
    return items, cursor


def history_event(entry: Entry) -> HistoryEvent:
    """The event of a history entry, as the API shows it."""
    r = entry.recorded
    return HistoryEvent(r.event.id, r.event.type, r.event.created_at, r.recorded_at, r.via)


def history_changes(entry: Entry) -> list[HistoryChange]:
    """What an entry's event changed, as the API shows it."""
    return [HistoryChange(c.field, c.before, c.after) for c in entry.changes]


def _query(name: str, schema: Schema, description: str) -> Parameter:
    return Parameter(name=name, param_in="query", schema=schema, description=description)


_TIME = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME)
_AS_OF_DOCS = [
    _query(
        "as_of",
        _TIME,
        "The state from the events that happened by then (Paxos `created_at`, to the "
        "nanosecond; RFC 3339 with an offset). 404 when none did.",
    ),
    _query(
        "known_at",
        _TIME,
        "The state from the events the store had recorded by then (the journal's "
        "`recorded_at`; RFC 3339 with an offset): what it knew at that moment.",
    ),
]
_HISTORY_DOCS = [
    _AS_OF_DOCS[1],
    _query(
        "limit",
        Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT),
        "Entries per page.",
    ),
    _query(
        "cursor",
        Schema(type=OpenAPIType.STRING),
        "`next_cursor` of the previous page, with the same `known_at`.",
    ),
]


@dataclass
class AsOfOperation(Operation):
    """Documents `as_of` and `known_at` (parsed by hand: `parse_bounds`)."""

    def __post_init__(self) -> None:
        self.parameters = [*(self.parameters or []), *_AS_OF_DOCS]


@dataclass
class HistoryOperation(Operation):
    """Documents a history's `known_at`, `limit` and `cursor` (`parse_history_query`)."""

    def __post_init__(self) -> None:
        self.parameters = [*(self.parameters or []), *_HISTORY_DOCS]


# --- routes -------------------------------------------------------------------------------


class IdentityController(Controller):
    path = "/identities"
    tags = ["identities"]
    guards = [require_read]

    @get(
        "/",
        summary="Identities, filtered and paged (in identity id order)",
        operation_class=list_operation(IDENTITY_FILTERS),
    )
    async def list_(
        self, request: Request[Any, Any, State], reader: NamedDependency[AsyncEngine]
    ) -> IdentityPage:
        query = parse_list_query("identities", request.query_params, tuple(IDENTITY_FILTERS))
        async with reader.connect() as conn:
            page = await read.list_identities(
                conn,
                summary_status=query.filters["summary_status"],
                control_type=query.filters["control_type"],
                after=query.after,
                limit=query.limit,
            )
        items = [identity_view(r) for r in page.rows]
        cursor = (
            encode_cursor("identities", items[-1].identity_id, query.filters) if page.more else None
        )
        return IdentityPage(items, cursor)

    @get(
        "/{identity_id:str}",
        summary="An identity's current state, or as of a time, as known at a time",
        operation_class=AsOfOperation,
    )
    async def get_one(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        identity_id: FromPath[str],
    ) -> Identity:
        params = request.query_params
        row = await subject_state(
            reader, "identities", "identity", identity_id, params, read.get_identity
        )
        return identity_view(row)

    @get(
        "/{identity_id:str}/history",
        summary="An identity's state after each of its events, oldest first, with what changed",
        operation_class=HistoryOperation,
    )
    async def history(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        identity_id: FromPath[str],
    ) -> IdentityHistory:
        items, cursor = await history_entries(
            reader,
            "identities",
            "identity",
            identity_id,
            request.query_params,
            IdentityHistoryEntry,
            identity_view,
        )
        return IdentityHistory(items, cursor)

    @get(
        "/{identity_id:str}/events",
        summary="An identity's events, filtered and paged like /events",
        operation_class=event_list_operation(with_identity_id=False),
    )
    async def events(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        identity_id: FromPath[str],
    ) -> EventPage:
        return await list_event_page(request.query_params, reader, identity_id=identity_id)


class TransferController(Controller):
    path = "/transfers"
    tags = ["transfers"]
    guards = [require_read]

    @get(
        "/",
        summary="Transfers, filtered and paged (in transfer id order)",
        operation_class=list_operation(TRANSFER_FILTERS),
    )
    async def list_(
        self, request: Request[Any, Any, State], reader: NamedDependency[AsyncEngine]
    ) -> TransferPage:
        query = parse_list_query("transfers", request.query_params, tuple(TRANSFER_FILTERS))
        async with reader.connect() as conn:
            page = await read.list_transfers(
                conn, filters=query.filters, after=query.after, limit=query.limit
            )
        items = [Transfer(**r) for r in page.rows]
        cursor = (
            encode_cursor("transfers", items[-1].transfer_id, query.filters) if page.more else None
        )
        return TransferPage(items, cursor)

    @get(
        "/{transfer_id:str}",
        summary="A transfer's latest state, or as of a time, as known at a time",
        operation_class=AsOfOperation,
    )
    async def get_one(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        transfer_id: FromPath[str],
    ) -> Transfer:
        params = request.query_params
        row = await subject_state(
            reader, "transfers", "transfer", transfer_id, params, read.get_transfer
        )
        return Transfer(**row)

    @get(
        "/{transfer_id:str}/history",
        summary="A transfer's state after each of its events, oldest first, with what changed",
        operation_class=HistoryOperation,
    )
    async def history(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        transfer_id: FromPath[str],
    ) -> TransferHistory:
        items, cursor = await history_entries(
            reader,
            "transfers",
            "transfer",
            transfer_id,
            request.query_params,
            TransferHistoryEntry,
            lambda state: Transfer(**state),
        )
        return TransferHistory(items, cursor)


class OrchestrationController(Controller):
    path = "/orchestrations"
    tags = ["orchestrations"]
    guards = [require_read]

    @get(
        "/{orchestration_id:str}",
        summary="An orchestration's latest state, or as of a time, as known at a time",
        operation_class=AsOfOperation,
    )
    async def get_one(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        orchestration_id: FromPath[str],
    ) -> Orchestration:
        params = request.query_params
        row = await subject_state(
            reader,
            "orchestrations",
            "orchestration",
            orchestration_id,
            params,
            read.get_orchestration,
        )
        return Orchestration(**row)

    @get(
        "/{orchestration_id:str}/history",
        summary="An orchestration's state after each of its events, oldest first, with what "
        "changed",
        operation_class=HistoryOperation,
    )
    async def history(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        orchestration_id: FromPath[str],
    ) -> OrchestrationHistory:
        items, cursor = await history_entries(
            reader,
            "orchestrations",
            "orchestration",
            orchestration_id,
            request.query_params,
            OrchestrationHistoryEntry,
            lambda state: Orchestration(**state),
        )
        return OrchestrationHistory(items, cursor)


class ProjectionAdminController(Controller):
    path = "/admin/projections"
    tags = ["admin"]
    guards = [require_admin]

    @post(
        "/{name:str}/rebuild",
        status_code=202,
        summary="Rebuild a projection (or `all`) from the journal, without stopping reads",
    )
    async def rebuild(
        self, engine: NamedDependency[AsyncEngine], name: FromPath[str]
    ) -> RebuildStarted:
        if name != "all" and name not in PROJECTIONS:
            raise NotFoundException(
                f"no projection named {name!r}; known are {', '.join(PROJECTIONS)}, all"
            )
        async with engine.begin() as conn:
            job_id = await create_job(conn, "rebuild", {"name": name})
        return RebuildStarted(job_id)
