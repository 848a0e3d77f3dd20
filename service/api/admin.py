"""Admin routes (admin token): act on events."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.auth import require_admin
from service.api.problems import Problem
from service.store.fetch_queue import make_due
from service.store.tables import events


class Refetch(msgspec.Struct, frozen=True):
    id: uuid.UUID
    status: str


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]
    guards = [require_admin]

    @post(
        "/events/{event_id:uuid}/refetch",
        status_code=202,
        summary="Schedule a new Get Event for a pending, failed or not-found event now",
    )
    async def refetch(
        self, request: Request[Any, Any, State], event_id: FromPath[uuid.UUID]
    ) -> Refetch:
        engine: AsyncEngine = request.app.state.engine
        async with engine.begin() as conn:
            status = await conn.scalar(select(events.c.status).where(events.c.event_id == event_id))
            if status is None:
                raise NotFoundException(f"no event with id {event_id}")
            if status == "fetched":
                raise Problem(
                    f"event {event_id} is already fetched",
                    status_code=409,
                    type_slug="already-fetched",
                )
            await make_due(conn, event_id)
            await conn.execute(text("SELECT pg_notify('events_pending', '')"))
        return Refetch(event_id, "pending")
