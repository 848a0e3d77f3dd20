"""Time travel: a subject's state as of any moment, as the store knew it then, and its history.

Two clocks (DESIGN.md §7): `as_of` bounds Paxos's `created_at` (when it happened, to the
nanosecond), `known_at` the journal's `recorded_at` (when the store learned it: a backfilled
event is recorded long after it happened). Both read the same rows the projections fold: a
subject's full events as the journal holds them (`doc`), real ones only (no
`test_confirmation`), and fold them with the projections' own pure folds
(`service.domain.history`), so a time-travelled answer with neither bound is the projection's
row (a property test holds the two together).

A subject's events are found through an index of the events table: an identity's by
`identity_id`, a transfer's and an orchestration's by the id inside the full event (partial
indexes of migrations 0008 and 0015, which the queries below repeat word for word so the
planner matches them). The journal row of each is one probe of its unique (event_id, kind)
index. Every event of the subject is read, and the bounds applied as the fold goes: a subject
has tens or hundreds of events, and `created_at` is not a column (the events table's `time`
is the notification's).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import history
from service.domain.event import Key
from service.store.tables import (
    ORCHESTRATION_EVENTS,
    TEST_CONFIRMATION,
    TRANSFER_EVENTS,
    TRANSFER_OBJECT_ID,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# How each kind's events are found (the index's expressions, so the planner uses it).
_SUBJECT = {
    "identities": "e.identity_id = $1",
    "transfers": f"{TRANSFER_EVENTS} AND {TRANSFER_OBJECT_ID} = $1",
    "orchestrations": f"{ORCHESTRATION_EVENTS} AND {TRANSFER_OBJECT_ID} = $1",
}


def _statement(kind: str) -> str:
    # The columns named by the index are unqualified in TRANSFER_EVENTS / TRANSFER_OBJECT_ID:
    # `e` is the only table with them in scope.
    return f"""
    SELECT j.event_id, CAST(j.doc AS text) AS doc, j.recorded_at, e.via
    FROM events e
    JOIN journal j ON j.event_id = e.event_id AND j.kind = 'event'
    WHERE {_SUBJECT[kind]}
      AND NOT EXISTS (SELECT 1 FROM journal t
                      WHERE t.event_id = e.event_id AND t.kind = '{TEST_CONFIRMATION}')
    """


STATEMENTS = {kind: _statement(kind) for kind in history.KINDS}


def ns_of(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact: microseconds * 1000)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


async def recorded_events(
    conn: AsyncConnection, kind: str, subject_id: str
) -> list[history.Recorded]:
    """Every real full event the store holds of the subject, as recorded; unordered, and
    possibly with another subject's (the folds skip those)."""
    if kind not in STATEMENTS:
        raise ValueError(f"unknown kind {kind!r}; known are {', '.join(history.KINDS)}")
    # Straight through the driver: SQLAlchemy's row handling took as long as the query (a
    # subject's hundreds of rows, on every request).
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    out = []
    for event_id, doc, recorded_at, via in await driver.fetch(STATEMENTS[kind], subject_id):
        # Anything may be of any type: a field that is not what the projections expect
        # leaves the event out, as it does the projections.
        type_, created_at, obj = history.unpack(msgspec.json.decode(doc))
        if isinstance(type_, str) and isinstance(created_at, str):
            # asyncpg's UUID is a subclass: the plain one, as everywhere else.
            out.append(
                history.Recorded.parsed(
                    uuid.UUID(bytes=event_id.bytes), type_, created_at, obj, recorded_at, via
                )
            )
    return out


def _known(
    events: list[history.Recorded], known_at: datetime | None, as_of_ns: int | None
) -> list[history.Recorded]:
    return [
        r
        for r in events
        if (known_at is None or r.recorded_at <= known_at)
        and (as_of_ns is None or (r.key is not None and r.key.ns <= as_of_ns))
    ]


async def state_as_of(
    conn: AsyncConnection,
    kind: str,
    subject_id: str,
    *,
    as_of: datetime | None,
    known_at: datetime | None,
    as_of_ns: int | None = None,
) -> dict[str, Any] | None:
    """The subject's row (as `read.py` gives it) folded from its real full events that
    happened by `as_of` (Paxos `created_at`) and were recorded by `known_at` (journal
    `recorded_at`); each bound optional. Echoes both as `as_of` and `known_at`. None when no
    event qualifies. `as_of_ns` (nanoseconds since the epoch) replaces `as_of`'s microseconds
    when the caller read more precision than a datetime holds."""
    if as_of_ns is None and as_of is not None:
        as_of_ns = ns_of(as_of)
    events = _known(await recorded_events(conn, kind, subject_id), known_at, as_of_ns)
    row = history.fold(events, kind, subject_id)
    return None if row is None else {**row, "as_of": as_of, "known_at": known_at}


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Entries of a subject's history, oldest first, and the key to read on after (None: the
    last page)."""

    entries: list[history.Entry]
    next_key: Key | None


async def history_page(
    conn: AsyncConnection,
    kind: str,
    subject_id: str,
    *,
    known_at: datetime | None,
    after: Key | None,
    limit: int,
) -> HistoryPage | None:
    """The subject's state after each of its real full events recorded by `known_at`, in the
    documented order, from the first after `after` (a previous page's `next_key`), at most
    `limit`. None when the store holds no real full event of the subject at all (a subject
    whose events were all recorded after `known_at` has an empty history)."""
    events = await recorded_events(conn, kind, subject_id)
    # Known: an event the projection folds (of the subject, its time readable).
    if not any(r.key and history.subject_of(kind, r.event) == subject_id for r in events):
        return None
    entries = history.history(_known(events, known_at, None), kind, subject_id)
    start = 0
    if after is not None:
        start = next((i for i, e in enumerate(entries) if e.key > after), len(entries))
    page = entries[start : start + limit]
    more = start + limit < len(entries)
    return HistoryPage(page, page[-1].key if more and page else None)
