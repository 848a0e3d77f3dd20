"""Projection test data and expectations: full events journalled as the fetcher does, the pure
folds they must agree with, and the API's view of a state."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.projections import identity_view
from service.domain import identity, latest, orchestration, transfer
from service.domain.event import ProjectedEvent
from service.store.projections import read
from service.store.tables import confirmation_body
from tests.support.fetching import Paxos


def event(
    type_: str, obj: dict[str, Any], created_at: str, event_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """A full Paxos event body as Get Event returns it."""
    return {
        "id": str(event_id or uuid.uuid4()),
        "type": type_,
        "object_type": "x",
        "object": obj,
        "created_at": created_at,
        "undelivered_webhooks": 0,
    }


async def append(
    engine: AsyncEngine, bodies: Iterable[dict[str, Any]], *, is_test: bool = False
) -> None:
    """Record fetched events as the fetcher does: events row + journal `event` row (and for a
    test event, Paxos's `test_confirmation`), in one transaction; a second append of an id adds
    nothing (the journal is unique by id and kind)."""
    async with engine.begin() as conn:
        for body in bodies:
            params = {"id": uuid.UUID(body["id"]), "type": body["type"], "is_test": is_test}
            await conn.execute(
                text(
                    "INSERT INTO events (event_id, type, source, time, object, is_test, "
                    "confirmed_is_test, status) VALUES (:id, :type, 'com.paxos', now(), 'event', "
                    ":is_test, :is_test, 'fetched') ON CONFLICT (event_id) DO NOTHING"
                ),
                params,
            )
            await conn.execute(
                text(
                    "INSERT INTO journal (event_id, kind, body) "
                    "VALUES (:id, 'event', CAST(:body AS json)) ON CONFLICT DO NOTHING"
                ),
                {"id": params["id"], "body": msgspec.json.encode(body).decode()},
            )
            if is_test:
                await conn.execute(
                    text(
                        "INSERT INTO journal (event_id, kind, body) "
                        "VALUES (:id, 'test_confirmation', CAST(:body AS json)) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {"id": params["id"], "body": confirmation_body("get_event")},
                )


def fold(bodies: Iterable[dict[str, Any]], identity_id: str) -> identity.IdentityState | None:
    """The specification: distinct events in created_at order, folded."""
    events = {b["id"]: msgspec.convert(b, ProjectedEvent) for b in bodies}
    ordered = sorted(
        (e for e in events.values() if e.key is not None),
        key=lambda e: e.key,  # type: ignore[arg-type, return-value]
    )
    state = None
    for e in ordered:
        if identity.identity_of(e) == identity_id:
            state = identity.apply(state, e)
    return state


def view_of_state(state: identity.IdentityState) -> dict[str, Any]:
    """What GET /identities/{id} should answer for a folded state (updated_at aside)."""
    return {
        "identity_id": state.identity_id,
        "summary_status": state.summary_status,
        "required_documents": list(state.required_documents or []),
        "kyc_refresh": {
            "state": state.kyc_state,
            "last_refresh_at": state.kyc_last_refresh_at,
            "next_refresh_at": state.kyc_next_refresh_at,
        },
        "controls": [
            {
                "control_id": c.control_id,
                "control_type": c.control_type,
                "set_by": c.set_by,
                "is_overridable": c.is_overridable,
                "reason_code": c.reason_code,
                "created_at": c.created_at,
            }
            for c in state.active_controls
        ],
        "last_event_id": str(state.last.event_id),
        "last_event_type": state.last_event_type,
        "last_event_time": state.last_event_time,
        "events_count": state.events_count,
    }


def view_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The API's answer for a stored row, updated_at aside."""
    view = msgspec.to_builtins(identity_view(row))
    view.pop("updated_at")
    return view  # type: ignore[no-any-return]


async def stored_view(engine: AsyncEngine, identity_id: str) -> dict[str, Any] | None:
    """The API's answer for the stored row of `identity_id`, updated_at aside."""
    async with engine.connect() as conn:
        row = await read.get_identity(conn, identity_id)
    return None if row is None else view_of_row(row)


def universe_folds(paxos: Paxos) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The identities, transfers and orchestrations the pure folds make of `paxos`'s real events."""
    identities: dict[str, Any] = {}
    transfers: dict[str, Any] = {}
    orchestrations: dict[str, Any] = {}
    for sim in paxos.universe:  # in (created_at, id) order
        if sim.is_test:
            continue
        e = ProjectedEvent(uuid.UUID(sim.id), sim.type, sim.created_at, sim.object)
        if (i := identity.identity_of(e)) is not None:
            identities[i] = identity.apply(identities.get(i), e)
        if (t := latest.subject_of(e, transfer.PREFIX)) is not None:
            transfers[t] = transfer.apply(transfers.get(t), e)
        if (o := latest.subject_of(e, orchestration.PREFIX)) is not None:
            orchestrations[o] = orchestration.apply(orchestrations.get(o), e)
    return identities, transfers, orchestrations
