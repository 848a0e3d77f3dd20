"""Time-travel test data and expectations: full events recorded as the fetcher and the
reconciler record them (events row with its identity and object id, journal row at a chosen
`recorded_at`), and the straightforward folds the answers must equal."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import identity, latest, orchestration, transfer
from service.domain.event import ProjectedEvent, time_ns
from service.domain.paxos_event import Fetched, PaxosEvent, identity_id_of, object_id_of
from service.store.tables import confirmation_body

_EVENTS = text(
    "INSERT INTO events (event_id, type, source, time, object, is_test, confirmed_is_test, "
    "status, via, identity_id, object_id) VALUES (:id, :type, 'com.paxos', now(), 'event', "
    ":is_test, :is_test, 'fetched', :via, :identity_id, :object_id) "
    "ON CONFLICT (event_id) DO NOTHING"
)
_JOURNAL = text(
    "INSERT INTO journal (event_id, kind, body, recorded_at) "
    "VALUES (:id, :kind, CAST(:body AS json), coalesce(CAST(:at AS timestamptz), now())) "
    "ON CONFLICT DO NOTHING"
)


async def record(
    engine: AsyncEngine,
    bodies: Iterable[dict[str, Any]],
    *,
    is_test: bool = False,
    via: str = "webhook",
    recorded_at: datetime | None = None,
) -> None:
    """Store full events as the fetcher (`via="webhook"`) or a backfill (`"list_events"`)
    does: the events row `fetched` with the identity and object id the fetcher derives, the
    journal `event` row (recorded at `recorded_at`, default now), a test event's
    `test_confirmation`; in one transaction. A second record of an id adds nothing."""
    async with engine.begin() as conn:
        for body in bodies:
            raw = msgspec.json.encode(body).decode()
            fetched = Fetched(msgspec.convert(body, PaxosEvent), raw)
            event_id = uuid.UUID(body["id"])
            await conn.execute(
                _EVENTS,
                {
                    "id": event_id,
                    "type": body["type"],
                    "is_test": is_test,
                    "via": via,
                    "identity_id": identity_id_of(fetched),
                    "object_id": object_id_of(fetched.event.type, fetched.event.object),
                },
            )
            rows = [("event", raw)]
            if is_test:
                rows.append(("test_confirmation", confirmation_body("get_event")))
            for kind, journal_body in rows:
                await conn.execute(
                    _JOURNAL,
                    {"id": event_id, "kind": kind, "body": journal_body, "at": recorded_at},
                )


KIND_OF_PREFIX = {
    "identity.": "identities",
    "transfer.": "transfers",
    "orchestration.": "orchestrations",
}


def subject(kind: str, e: ProjectedEvent) -> str | None:
    if kind == "identities":
        return identity.identity_of(e)
    prefix = transfer.PREFIX if kind == "transfers" else orchestration.PREFIX
    return latest.subject_of(e, prefix)


def straightforward_fold(
    kind: str,
    subject_id: str,
    recorded: Iterable[tuple[dict[str, Any], datetime]],
    *,
    as_of_ns: int | None = None,
    known_at: datetime | None = None,
) -> Any:
    """The specification of an as_of / known_at answer: the subject's (real) events that
    happened by `as_of_ns` and were recorded by `known_at`, sorted by created_at in
    nanoseconds then id, folded with the projection's fold from nothing."""
    chosen = []
    for body, at in recorded:
        e = msgspec.convert(body, ProjectedEvent)
        ns = time_ns(e.created_at)
        if ns is None or subject(kind, e) != subject_id:
            continue
        if (as_of_ns is None or ns <= as_of_ns) and (known_at is None or at <= known_at):
            chosen.append((ns, e.id, e))
    chosen.sort(key=lambda c: (c[0], c[1]))
    apply = {
        "identities": identity.apply,
        "transfers": transfer.apply,
        "orchestrations": orchestration.apply,
    }[kind]
    state: Any = None
    for _, _, e in chosen:
        state = apply(state, e)
    return state


def view_of_latest(kind: str, state: latest.LatestState) -> dict[str, Any]:
    """What GET /transfers/{id} or /orchestrations/{id} answers for a folded state (updated_at
    aside)."""
    key = "transfer_id" if kind == "transfers" else "orchestration_id"
    return {
        key: state.subject_id,
        **state.fields,
        "last_event_id": str(state.last.event_id),
        "last_event_type": state.last_event_type,
        "last_event_time": state.last_event_time,
        "events_count": state.events_count,
    }
