"""The events pages: the filtered list (refreshed by htmx), one event with its journal rows,
and scheduling a new Get Event for one."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, get, post
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.stored import EVENT_STATUSES, Position
from service.store.audit.seals import covering as covering_seal
from service.store.console import event_status, journal_rows
from service.store.events import get_event, list_events
from service.store.fetch_queue import make_due
from service.ui.errors import ConsoleError
from service.ui.forms import event_query, form_values, raw_filter_pairs
from service.ui.pages import NOTICES, PAGE_SIZE, checked_form, page
from service.ui.session import Session
from service.web.cursor import encode_cursor
from service.web.problems import InvalidParameter
from service.web.query import parse_query

REFRESH_S = 5


class EventPages(Controller):
    path = "/events"

    @get("/")
    async def events_page(
        self,
        request: HTMXRequest,
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
    ) -> Template:
        params = request.query_params
        pairs = event_query(params)
        cursor = params.get("cursor")
        problem = None
        items: list[Any] = []
        next_url = None
        try:
            query = parse_query(MultiDict([*pairs, *([("cursor", cursor)] if cursor else [])]))
        except InvalidParameter as exc:
            problem = exc.detail
        else:
            async with reader.connect() as conn:
                found = await list_events(conn, query.filters, limit=PAGE_SIZE, after=query.after)
            items = found.items
            if found.more:
                last = items[-1]
                next_cursor = encode_cursor(
                    Position(time=last.time, event_id=last.id), query.filters
                )
                next_url = "/ui/events?" + urlencode(
                    [*raw_filter_pairs(params), ("cursor", next_cursor)]
                )
        refresh_url = "/ui/events?" + urlencode(raw_filter_pairs(params))
        context: dict[str, Any] = {
            "items": items,
            "form": form_values(params),
            "statuses": EVENT_STATUSES,
            "problem": problem,
            "next_url": next_url,
            "first_page": cursor is None,
            "refresh_url": refresh_url,
            "refresh_s": REFRESH_S,
        }
        if request.htmx and request.htmx.target == "event-rows":
            return page("event_rows.html", session, **context)
        return page("events.html", session, status_code=400 if problem else 200, **context)

    @get("/{event_id:uuid}")
    async def event_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
        event_id: FromPath[uuid.UUID],
    ) -> Template:
        async with reader.connect() as conn:
            event = await get_event(conn, event_id)
            if event is None:
                raise ConsoleError(status_code=404, detail=f"No event with id {event_id}.")
            journal = await journal_rows(conn, event_id)
            covering = {row.position: await covering_seal(conn, row.position) for row in journal}
        notification = next((r for r in journal if r.kind == "notification"), None)
        full = next((r for r in journal if r.kind == "event"), None)
        return page(
            "event.html",
            session,
            event=event,
            journal=journal,
            covering=covering,
            notification=notification,
            full=full,
            notice=NOTICES.get(request.query_params.get("notice") or ""),
        )

    @post("/{event_id:uuid}/refetch", status_code=303)
    async def refetch(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        event_id: FromPath[uuid.UUID],
    ) -> Redirect:
        await checked_form(request, session, admin=True)
        async with engine.begin() as conn:
            status = await event_status(conn, event_id)
            if status is None:
                raise ConsoleError(status_code=404, detail=f"No event with id {event_id}.")
            if status == "fetched":
                raise ConsoleError(status_code=409, detail=f"Event {event_id} is already fetched.")
            await make_due(conn, event_id)
        return Redirect(f"/ui/events/{event_id}?notice=refetch", status_code=303)
