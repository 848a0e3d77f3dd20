"""The identities pages: the list (by summary status, control, last event time; keyset paged)
and one identity: its state now or as of a time, what each event changed, and its events."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, get
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.domain.stored import Position
from service.store.events import list_events
from service.store.projections.read import Page, get_identity, list_identities
from service.ui.errors import ConsoleError
from service.ui.pages import PAGE_SIZE, page
from service.ui.session import Session
from service.ui.subjects import CHANGED, Form, Window, list_page, travel
from service.web.cursor import encode_cursor
from service.web.problems import InvalidParameter
from service.web.query import parse_query

SUMMARY_STATUSES = ("PENDING", "APPROVED", "DENIED", "DISABLED", "ERROR")
LIST_FIELDS = ("summary_status", "control_type", *CHANGED)


class IdentityPages(Controller):
    path = "/identities"

    @get("/")
    async def identities_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
    ) -> Template:
        async def fetch(conn: AsyncConnection, form: Form, window: Window) -> Page:
            return await list_identities(
                conn,
                # Stored as Paxos sends them, in capitals: any case typed finds them.
                summary_status=form.typed["summary_status"].upper() or None,
                control_type=form.typed["control_type"].upper() or None,
                **window,
            )

        return await list_page(
            request.query_params,
            session,
            reader,
            nav="identities",
            fields=LIST_FIELDS,
            id_key="identity_id",
            statuses=SUMMARY_STATUSES,
            fetch=fetch,
        )

    @get("/{identity_id:str}")
    async def identity_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
        identity_id: FromPath[str],
    ) -> Template:
        params = request.query_params
        cursor = params.get("cursor")
        try:
            query = parse_query(
                MultiDict([("cursor", cursor)] if cursor else []), identity_id=identity_id
            )
        except InvalidParameter as exc:
            raise ConsoleError(status_code=400, detail=exc.detail) from None
        base_url = f"/ui/identities/{identity_id}"
        async with reader.connect() as conn:
            identity = await get_identity(conn, identity_id)
            found = await list_events(conn, query.filters, limit=PAGE_SIZE, after=query.after)
            travelled = await travel(conn, "identities", identity_id, params, base_url)
        if identity is None and not found.items:
            raise ConsoleError(status_code=404, detail=f"No identity with id {identity_id}.")
        next_url = None
        if found.more:
            last = found.items[-1]
            next_url = f"{base_url}?" + urlencode(
                {"cursor": encode_cursor(Position(last.time, last.id), query.filters)}
            )
        return page(
            "identity.html",
            session,
            status_code=400 if travelled.form.problems else 200,
            nav="identities",
            identity_id=identity_id,
            identity=travelled.shown(identity),
            travelling=travelled.travelling,
            form=travelled.form,
            timeline=travelled.timeline,
            items=found.items,
            next_url=next_url,
        )
