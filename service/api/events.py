"""GET /events and GET /events/{id}: the filters of DESIGN.md §3, keyset cursors, their 400s.

The query is parsed by hand (`service.web.query`) and documented by `event_list_operation`;
cursors are `service.web.cursor`'s.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.schemas import EventPage
from service.domain.stored import Event, Position
from service.store.events import get_event, list_events
from service.web.auth import require_read
from service.web.cursor import encode_cursor
from service.web.openapi import event_list_operation
from service.web.query import UuidText, parse_query, parse_uuid


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
        operation_class=event_list_operation(),
    )
    async def list_(
        self, request: Request[Any, Any, State], reader: NamedDependency[AsyncEngine]
    ) -> EventPage:
        return await list_event_page(request.query_params, reader)

    @get("/{event_id:str}", summary="One event")
    async def get_one(self, reader: NamedDependency[AsyncEngine], event_id: UuidText) -> Event:
        async with reader.connect() as conn:
            event = await get_event(conn, parse_uuid("event_id", event_id))
        if event is None:
            raise NotFoundException(f"no event with id {event_id}")
        return event


async def list_event_page(
    params: MultiDict[Any], engine: AsyncEngine, *, identity_id: str | None = None
) -> EventPage:
    """One page of events for the query parameters `params`.

    With `identity_id` (the path of `GET /identities/{identity_id}/events`), the listing is
    fixed to that identity and the `identity_id` query parameter is refused.
    """
    query = parse_query(params, identity_id=identity_id)
    async with engine.connect() as conn:
        page = await list_events(conn, query.filters, limit=query.limit, after=query.after)
    next_cursor = None
    if page.more:
        last = page.items[-1]
        next_cursor = encode_cursor(Position(time=last.time, event_id=last.id), query.filters)
    return EventPage(items=page.items, next_cursor=next_cursor)
