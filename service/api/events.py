"""GET /events and GET /events/{id}."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.auth import require_read
from service.api.schemas import Event
from service.store.events import get_event


class EventController(Controller):
    path = "/events"
    tags = ["events"]
    guards = [require_read]

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
