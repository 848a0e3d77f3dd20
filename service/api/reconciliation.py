"""Admin routes of the List Events safety net: start a backfill, read past passes."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema
from litestar.params import FromQuery, PathParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.notification import EventType
from service.store.jobs import create_job
from service.store.reconcile import get_pass, missed_in_pass, recent_passes
from service.web.auth import require_admin
from service.web.openapi import problem, request_body_operation
from service.web.problems import InvalidParameter, Problem


class BackfillRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A window of List Events to go over; `types` exact (Paxos filters one type at a time)."""

    since: datetime
    until: datetime
    types: list[EventType] = msgspec.field(default_factory=list)
    include_test: bool = False


class JobStarted(msgspec.Struct, frozen=True):
    job_id: uuid.UUID


class PassView(msgspec.Struct, frozen=True):
    pass_id: int
    kind: str  # reconcile | backfill
    job_id: uuid.UUID | None
    window_since: datetime
    window_until: datetime
    types: list[str]
    include_test: bool
    status: str  # running | done | failed
    pages: int
    found: int
    missing: int
    known: int
    started_at: datetime
    finished_at: datetime | None


class Missed(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    type: str
    created_at: datetime


class PassDetail(msgspec.Struct, frozen=True):
    pass_: PassView = msgspec.field(name="pass")
    missed: list[Missed]


class PassList(msgspec.Struct, frozen=True):
    items: list[PassView]


_BACKFILL_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["since", "until"],
    properties={
        "since": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME),
        "until": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME),
        "types": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(type=OpenAPIType.STRING, pattern=r"^[\x21-\x7e]{1,200}$"),
        ),
        "include_test": Schema(type=OpenAPIType.BOOLEAN),
    },
    additional_properties=False,
)
_MAX_BIGINT = 2**63 - 1
_decoder = msgspec.json.Decoder(BackfillRequest)


class ReconciliationController(Controller):
    path = "/admin"
    tags = ["admin"]
    guards = [require_admin]

    @post(
        "/backfill",
        status_code=202,
        summary="Start a List Events backfill over a window",
        responses={
            400: problem("The body is not JSON, or `since`/`until` are wrong."),
            413: problem("The body is too large."),
            422: problem("JSON that is not a backfill request."),
        },
        operation_class=request_body_operation(
            "application/json", _BACKFILL_SCHEMA, "The window and types to list."
        ),
    )
    async def backfill(
        self, request: Request[Any, Any, State], engine: NamedDependency[AsyncEngine]
    ) -> Response[JobStarted]:
        try:
            wanted = _decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            raise Problem(
                f"invalid backfill request: {exc}", status_code=422, type_slug="invalid-request"
            ) from None
        except msgspec.DecodeError as exc:
            raise Problem(
                f"body is not valid JSON: {exc}", status_code=400, type_slug="invalid-json"
            ) from None
        except (UnicodeDecodeError, RecursionError):
            raise Problem(
                "body is not valid JSON: invalid UTF-8, or nested too deeply",
                status_code=400,
                type_slug="invalid-json",
            ) from None
        for name, value in (("since", wanted.since), ("until", wanted.until)):
            if value.tzinfo is None:
                raise InvalidParameter(name, "must be RFC 3339 with an offset (e.g. Z)")
        if wanted.until <= wanted.since:
            raise InvalidParameter("until", "must be later than since")
        async with engine.begin() as conn:
            job_id = await create_job(
                conn,
                "backfill",
                {
                    "since": wanted.since.isoformat(),
                    "until": wanted.until.isoformat(),
                    "types": list(dict.fromkeys(wanted.types)),
                    "include_test": wanted.include_test,
                },
            )
        return Response(JobStarted(job_id), status_code=202)

    @get("/reconciliation", summary="Past List Events passes with their counts, newest first")
    async def passes(
        self, engine: NamedDependency[AsyncEngine], limit: FromQuery[int] = 20
    ) -> PassList:
        if not 1 <= limit <= 500:
            raise InvalidParameter("limit", "must be from 1 to 500")
        async with engine.connect() as conn:
            return PassList([PassView(**row) for row in await recent_passes(conn, limit)])

    @get("/reconciliation/{pass_id:str}", summary="One pass and the missed webhooks it found")
    async def one_pass(
        self,
        engine: NamedDependency[AsyncEngine],
        pass_id: Annotated[str, PathParameter(pattern=r"^[0-9]+$", description="A pass id.")],
    ) -> PassDetail:
        # Taken as text: a malformed id is a 400 naming it, not the router's bare 404.
        if not re.fullmatch(r"[0-9]{1,19}", pass_id):
            raise InvalidParameter("pass_id", f"{pass_id[:40]!r} is not a pass id (a number)")
        number = int(pass_id)
        if not 1 <= number <= _MAX_BIGINT:  # beyond the column's range: no such pass
            raise NotFoundException(f"no reconciliation pass {number}")
        async with engine.connect() as conn:
            row = await get_pass(conn, number)
            if row is None:
                raise NotFoundException(f"no reconciliation pass {number}")
            missed = await missed_in_pass(conn, number)
            return PassDetail(PassView(**row), [Missed(**m) for m in missed])
