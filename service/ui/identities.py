"""An identity's page: its projected state and its events, newest first, a page at a time."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, get
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.stored import Position
from service.store.events import list_events
from service.store.projections.read import get_identity
from service.ui.errors import ConsoleError
from service.ui.pages import PAGE_SIZE, page
from service.ui.session import Session
from service.web.cursor import encode_cursor
from service.web.problems import InvalidParameter
from service.web.query import parse_query


class IdentityPages(Controller):
    path = "/identities"

    @get("/{identity_id:str}")
    async def identity_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        identity_id: FromPath[str],
    ) -> Template:
        cursor = request.query_params.get("cursor")
        try:
            query = parse_query(
                MultiDict([("cursor", cursor)] if cursor else []), identity_id=identity_id
            )
        except InvalidParameter as exc:
            raise ConsoleError(status_code=400, detail=exc.detail) from None
        async with engine.connect() as conn:
            identity = await get_identity(conn, identity_id)
            found = await list_events(conn, query.filters, limit=PAGE_SIZE, after=query.after)
        if identity is None and not found.items:
            raise ConsoleError(status_code=404, detail=f"No identity with id {identity_id}.")
        next_url = None
        if found.more:
            last = found.items[-1]
            next_url = f"/ui/identities/{identity_id}?" + urlencode(
                {"cursor": encode_cursor(Position(last.time, last.id), query.filters)}
            )
        return page(
            "identity.html",
            session,
            identity_id=identity_id,
            identity=identity,
            items=found.items,
            next_url=next_url,
        )
