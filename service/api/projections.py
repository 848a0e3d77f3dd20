"""The projections over HTTP: identities, transfers, orchestrations, and their rebuild.

Listings are paged like `/events`: keyset cursors (opaque, checksummed, bound to the filters
they were issued for), `limit` 1 to 1000, and a 400 problem naming any bad parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.events import list_event_page
from service.api.schemas import (
    Control,
    EventPage,
    Identity,
    IdentityPage,
    KycRefresh,
    Orchestration,
    RebuildStarted,
    Transfer,
    TransferPage,
)
from service.store.jobs import create_job
from service.store.projections import read
from service.store.projections.registry import PROJECTIONS
from service.web.auth import require_admin, require_read
from service.web.cursor import CursorCodec, fingerprint
from service.web.openapi import event_list_operation, list_operation
from service.web.problems import InvalidParameter
from service.web.query import MAX_VALUE_LENGTH, parse_limit, single_value, unknown_parameter


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
        filters[name] = value
    limit = parse_limit(single_value(params, "limit"))
    cursor = single_value(params, "cursor")
    after = _CURSORS.decode(cursor, _bound_to(kind, filters)) if cursor is not None else None
    return KeyedQuery(filters, limit, after)


IDENTITY_FILTERS = {
    "summary_status": "Identities whose summary status is this (APPROVED, DENIED, ...).",
    "control_type": "Identities with an active control of this type (FROZEN, SELL_ONLY, ...).",
}
TRANSFER_FILTERS = {
    "status": "Transfers in this status (PENDING, COMPLETED, FAILED).",
    "profile_id": "Transfers of this profile.",
    "type": "Transfers of this type (CRYPTO_DEPOSIT, WIRE_WITHDRAWAL, ...).",
}


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
        self, request: Request[Any, Any, State], engine: NamedDependency[AsyncEngine]
    ) -> IdentityPage:
        query = parse_list_query("identities", request.query_params, tuple(IDENTITY_FILTERS))
        async with engine.connect() as conn:
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

    @get("/{identity_id:str}", summary="An identity's current state")
    async def get_one(
        self, engine: NamedDependency[AsyncEngine], identity_id: FromPath[str]
    ) -> Identity:
        async with engine.connect() as conn:
            row = await read.get_identity(conn, identity_id)
        if row is None:
            raise NotFoundException(f"no identity with id {identity_id}")
        return identity_view(row)

    @get(
        "/{identity_id:str}/events",
        summary="An identity's events, filtered and paged like /events",
        operation_class=event_list_operation(with_identity_id=False),
    )
    async def events(
        self,
        request: Request[Any, Any, State],
        engine: NamedDependency[AsyncEngine],
        identity_id: FromPath[str],
    ) -> EventPage:
        return await list_event_page(request.query_params, engine, identity_id=identity_id)


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
        self, request: Request[Any, Any, State], engine: NamedDependency[AsyncEngine]
    ) -> TransferPage:
        query = parse_list_query("transfers", request.query_params, tuple(TRANSFER_FILTERS))
        async with engine.connect() as conn:
            page = await read.list_transfers(
                conn, filters=query.filters, after=query.after, limit=query.limit
            )
        items = [Transfer(**r) for r in page.rows]
        cursor = (
            encode_cursor("transfers", items[-1].transfer_id, query.filters) if page.more else None
        )
        return TransferPage(items, cursor)

    @get("/{transfer_id:str}", summary="A transfer's latest state")
    async def get_one(
        self, engine: NamedDependency[AsyncEngine], transfer_id: FromPath[str]
    ) -> Transfer:
        async with engine.connect() as conn:
            row = await read.get_transfer(conn, transfer_id)
        if row is None:
            raise NotFoundException(f"no transfer with id {transfer_id}")
        return Transfer(**row)


class OrchestrationController(Controller):
    path = "/orchestrations"
    tags = ["orchestrations"]
    guards = [require_read]

    @get("/{orchestration_id:str}", summary="An orchestration's latest state")
    async def get_one(
        self, engine: NamedDependency[AsyncEngine], orchestration_id: FromPath[str]
    ) -> Orchestration:
        async with engine.connect() as conn:
            row = await read.get_orchestration(conn, orchestration_id)
        if row is None:
            raise NotFoundException(f"no orchestration with id {orchestration_id}")
        return Orchestration(**row)


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
