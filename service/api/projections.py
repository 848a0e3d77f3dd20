"""The projections over HTTP: identities, transfers, orchestrations, and their rebuild.

Listings are paged like `/events`: keyset cursors (opaque, checksummed, bound to the filters
they were issued for), `limit` 1 to 1000, and a 400 problem naming any bad parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import MultiDict, State
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import OpenAPIType, Operation, Parameter, Schema
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.events import list_event_page, list_operation_class
from service.api.schemas import EventPage
from service.jobs.runner import create_job
from service.projections import read
from service.projections.runner import PROJECTIONS
from service.web.auth import require_admin, require_read
from service.web.problems import InvalidParameter

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_VALUE_LENGTH = 200


# --- response shapes ----------------------------------------------------------------------


class KycRefresh(msgspec.Struct, frozen=True):
    state: str | None  # started | completed | expired, from the newest KYC-refresh event
    last_refresh_at: str | None
    next_refresh_at: str | None


class Control(msgspec.Struct, frozen=True):
    control_id: str
    control_type: str | None
    set_by: str | None
    is_overridable: bool | None
    reason_code: str | None
    created_at: str  # Paxos's created_at of the event that set it, as Paxos wrote it


class Identity(msgspec.Struct, frozen=True):
    identity_id: str
    summary_status: str | None
    required_documents: list[str]
    kyc_refresh: KycRefresh
    controls: list[Control]
    last_event_id: uuid.UUID
    last_event_type: str
    last_event_time: str  # RFC 3339 as Paxos wrote it (nanoseconds kept)
    events_count: int
    updated_at: datetime


class IdentityPage(msgspec.Struct, frozen=True):
    items: list[Identity]
    next_cursor: str | None


class Transfer(msgspec.Struct, frozen=True):
    transfer_id: str
    type: str | None
    status: str | None
    profile_id: str | None
    ref_id: str | None
    crypto_network: str | None
    crypto_tx_hash: str | None
    crypto_tx_index: str | None
    memo: str | None
    last_event_id: uuid.UUID
    last_event_type: str
    last_event_time: str
    events_count: int
    updated_at: datetime


class TransferPage(msgspec.Struct, frozen=True):
    items: list[Transfer]
    next_cursor: str | None


class Orchestration(msgspec.Struct, frozen=True):
    orchestration_id: str
    status: str | None
    ref_id: str | None
    orchestration_rule_id: str | None
    last_event_id: uuid.UUID
    last_event_type: str
    last_event_time: str
    events_count: int
    updated_at: datetime


class RebuildStarted(msgspec.Struct, frozen=True):
    job_id: uuid.UUID


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
class ListQuery:
    filters: dict[str, str | None]
    limit: int
    after: str | None


_CHECKSUM_KEY = b"paxos-event-store/projection-cursor"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,600}")


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=8, key=_CHECKSUM_KEY).digest()


def _fingerprint(kind: str, filters: dict[str, str | None]) -> str:
    canonical = msgspec.json.encode([kind, sorted(filters.items())])
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def encode_cursor(kind: str, last_id: str, filters: dict[str, str | None]) -> str:
    """An opaque cursor: the last id handed out, bound to the listing's filters."""
    body = msgspec.json.encode([1, last_id, _fingerprint(kind, filters)])
    return base64.urlsafe_b64encode(body + _checksum(body)).rstrip(b"=").decode()


def decode_cursor(kind: str, cursor: str, filters: dict[str, str | None]) -> str:
    """The id a cursor resumes after; `InvalidParameter` unless it is one of ours, for these
    filters (a cursor used with other filters would skip or repeat items)."""
    if not _BASE64URL.fullmatch(cursor):
        raise InvalidParameter("cursor", "malformed; pass next_cursor back unchanged")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidParameter("cursor", "malformed; pass next_cursor back unchanged") from None
    body, checksum = raw[:-8], raw[-8:]
    if len(raw) <= 8 or not hmac.compare_digest(checksum, _checksum(body)):
        raise InvalidParameter("cursor", "damaged or altered; pass next_cursor back unchanged")
    try:
        version, last_id, fingerprint = msgspec.json.decode(body, type=tuple[int, str, str])
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise InvalidParameter("cursor", "not a cursor of this listing; start again") from None
    if version != 1 or fingerprint != _fingerprint(kind, filters):
        raise InvalidParameter(
            "cursor", "issued for other filters or another listing; start again without it"
        )
    return last_id


def parse_list_query(kind: str, params: MultiDict[Any], filter_names: tuple[str, ...]) -> ListQuery:
    """The listing `params` ask for; an `InvalidParameter` naming the first bad one."""
    allowed = (*filter_names, "limit", "cursor")
    for name in dict.fromkeys(params.keys()):
        if name not in allowed:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise InvalidParameter(shown, f"unknown parameter; known are {', '.join(allowed)}")

    def single(name: str) -> str | None:
        values: list[str] = params.getall(name, [])
        if len(values) > 1:
            raise InvalidParameter(name, "given more than once")
        return values[0] if values else None

    filters: dict[str, str | None] = {}
    for name in filter_names:
        value = single(name)
        # Any value is accepted (Paxos adds enum values without notice); only its size is
        # checked.
        if value is not None and not 1 <= len(value) <= MAX_VALUE_LENGTH:
            raise InvalidParameter(name, f"must be 1 to {MAX_VALUE_LENGTH} characters")
        filters[name] = value
    raw_limit = single("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not re.fullmatch(r"\d{1,7}", raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise InvalidParameter(
                "limit", f"{raw_limit!r}: must be an integer from 1 to {MAX_LIMIT}"
            )
        limit = int(raw_limit)
    cursor = single("cursor")
    after = decode_cursor(kind, cursor, filters) if cursor is not None else None
    return ListQuery(filters, limit, after)


def _list_operation(filters: dict[str, str]) -> type[Operation]:
    string = Schema(type=OpenAPIType.STRING)
    docs = [
        *(
            Parameter(name=n, param_in="query", schema=string, description=d)
            for n, d in filters.items()
        ),
        Parameter(
            name="limit",
            param_in="query",
            schema=Schema(
                type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT
            ),
            description="Items per page.",
        ),
        Parameter(
            name="cursor",
            param_in="query",
            schema=string,
            description="`next_cursor` of the previous page, with the same filters.",
        ),
    ]

    @dataclass
    class ListOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *docs]

    return ListOperation


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
        operation_class=_list_operation(IDENTITY_FILTERS),
    )
    async def list_(self, request: Request[Any, Any, State]) -> IdentityPage:
        query = parse_list_query("identities", request.query_params, tuple(IDENTITY_FILTERS))
        engine: AsyncEngine = request.app.state.engine
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
        self, request: Request[Any, Any, State], identity_id: FromPath[str]
    ) -> Identity:
        engine: AsyncEngine = request.app.state.engine
        async with engine.connect() as conn:
            row = await read.get_identity(conn, identity_id)
        if row is None:
            raise NotFoundException(f"no identity with id {identity_id}")
        return identity_view(row)

    @get(
        "/{identity_id:str}/events",
        summary="An identity's events, filtered and paged like /events",
        operation_class=list_operation_class(with_identity_id=False),
    )
    async def events(
        self, request: Request[Any, Any, State], identity_id: FromPath[str]
    ) -> EventPage:
        return await list_event_page(request, identity_id=identity_id)


class TransferController(Controller):
    path = "/transfers"
    tags = ["transfers"]
    guards = [require_read]

    @get(
        "/",
        summary="Transfers, filtered and paged (in transfer id order)",
        operation_class=_list_operation(TRANSFER_FILTERS),
    )
    async def list_(self, request: Request[Any, Any, State]) -> TransferPage:
        query = parse_list_query("transfers", request.query_params, tuple(TRANSFER_FILTERS))
        engine: AsyncEngine = request.app.state.engine
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
        self, request: Request[Any, Any, State], transfer_id: FromPath[str]
    ) -> Transfer:
        engine: AsyncEngine = request.app.state.engine
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
        self, request: Request[Any, Any, State], orchestration_id: FromPath[str]
    ) -> Orchestration:
        engine: AsyncEngine = request.app.state.engine
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
        self, request: Request[Any, Any, State], name: FromPath[str]
    ) -> RebuildStarted:
        if name != "all" and name not in PROJECTIONS:
            raise NotFoundException(
                f"no projection named {name!r}; known are {', '.join(PROJECTIONS)}, all"
            )
        engine: AsyncEngine = request.app.state.engine
        async with engine.begin() as conn:
            job_id = await create_job(conn, "rebuild", {"name": name})
        return RebuildStarted(job_id)
