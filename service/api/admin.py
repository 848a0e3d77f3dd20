"""Admin routes (admin token): act on events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.console import event_status
from service.store.fetch_queue import make_due
from service.store.jobs import get_job
from service.web.auth import require_admin
from service.web.openapi import problem
from service.web.problems import Problem
from service.web.query import UuidText, parse_uuid


class Refetch(msgspec.Struct, frozen=True):
    id: uuid.UUID
    status: str


class JobView(msgspec.Struct, frozen=True):
    job_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    state: str  # queued | running | done | failed
    progress: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]
    guards = [require_admin]

    @get("/jobs/{job_id:str}", summary="A job's state and progress")
    async def job(self, engine: NamedDependency[AsyncEngine], job_id: UuidText) -> JobView:
        async with engine.connect() as conn:
            found = await get_job(conn, parse_uuid("job_id", job_id))
        if found is None:
            raise NotFoundException(f"no job with id {job_id}")
        return JobView(**found)

    @post(
        "/events/{event_id:str}/refetch",
        status_code=202,
        summary="Schedule a new Get Event for a pending, failed or not-found event now",
        responses={409: problem("The event is already fetched.")},
    )
    async def refetch(self, engine: NamedDependency[AsyncEngine], event_id: UuidText) -> Refetch:
        event_uuid = parse_uuid("event_id", event_id)
        async with engine.begin() as conn:
            status = await event_status(conn, event_uuid)
            if status is None:
                raise NotFoundException(f"no event with id {event_id}")
            if status == "fetched":
                raise Problem(
                    f"event {event_id} is already fetched",
                    status_code=409,
                    type_slug="already-fetched",
                )
            await make_due(conn, event_uuid)
        return Refetch(event_uuid, "pending")
