"""Reading events: one by id, and filtered keyset pages in (time, event_id) order.

A page must cost the same whether it is the first or the fifty-thousandth, and whichever
filters are combined. So every page is read as one or more *index range scans* that yield
rows already in (time, event_id) order, starting right after the cursor (a row comparison,
`(time, event_id) < ($t, $id)`, that is a boundary of the range); nothing is sorted but the
few rows those scans hand over.

Which scans, by filter (the indexes are in `tables.py`):

- `identity_id`: one scan of the identity index; the other filters are checked per row (an
  identity has few events, so that is cheap).
- `status` pending, failed or not_found (rare): with exact types only, the partial
  (status, type, is_test, ...) index of events not fetched; with a type prefix or no type,
  (status, is_test, ...), the types checked per row (rows read: at most the events in that
  rare status).
- exact `type`, alone or with `is_test` or `status=fetched`: the (type, is_test, ...) index
  (`fetched` is checked per row: nearly every row passes).
- a type prefix such as `identity.*`: the (type family, is_test, ...) index, where a type's
  family is its text up to its first dot (`identity.` for `identity.kyc_refresh.started`,
  `TYPE_FAMILY`). A prefix with one dot is a family, so its scan reads only matching rows; a
  longer one (`identity.kyc_refresh.*`) scans its family and checks the prefix per row.
- `status=fetched` or `is_test` without a type: the (status, is_test, ...) index.
- nothing but `since`/`until`: the (time, event_id) index.

`since` and `until` bound every scan's range. A column of the index's key that the filter
does not pin is *enumerated*: `is_test` is false or true, `status` one of four. The types
under a prefix are never enumerated: senders choose types, and a scan per stored type would
let anyone who can send a webhook make every prefix query slower (20,000 invented types cost
seconds per query, and past ~16,000 no statement could carry them). Each combination is its
own scan `ORDER BY time, event_id LIMIT n`, and their union is merged by an outer
`ORDER BY ... LIMIT n`, which Postgres runs as a Merge Append: it reads about n rows plus one
per scan, never all matching rows. The statement's text depends only on the filter's shape
(every value, the limit too, is a bound parameter), so Postgres's plan cache reuses its plan
(see `_ORDERED_SCANS_ONLY` for why that plan is safe).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import JSON, Label, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.stored import EVENT_STATUSES, Event, EventFilter, Position
from service.store.tables import EVENT_DETAIL, TYPE_FAMILY, events

EVENT_COLUMNS = (
    events.c.event_id.label("id"),
    events.c.type,
    events.c.source,
    events.c.time,
    events.c.object,
    events.c.is_test,
    events.c.status,
    events.c.via,
    events.c.deliveries,
    events.c.first_received_at,
    events.c.last_received_at,
    events.c.fetched_at,
    events.c.attempts,
    events.c.last_error,
    events.c.identity_id,
    events.c.object_type,
    events.c.undelivered_webhooks,
)
# `Event.detail`, the last field, is no column of `events`: the full event is the journal's.
DETAIL = EVENT_DETAIL.format(event_id="events.event_id")
if (*(c.name for c in EVENT_COLUMNS), "detail") != Event.__struct_fields__:
    raise RuntimeError("EVENT_COLUMNS and the Event struct list different fields")

# The one status most events end in; every other status is rare enough for a partial index.
FETCHED = "fetched"


class EventSlice(msgspec.Struct, frozen=True):
    """Up to `limit` events in order, and whether more follow the last of them."""

    items: list[Event]
    more: bool


async def get_event(conn: AsyncConnection, event_id: uuid.UUID) -> Event | None:
    """The event with `event_id`, or None."""
    detail = literal_column(DETAIL, JSON(none_as_null=True)).label("detail")
    row = (
        await conn.execute(select(*EVENT_COLUMNS, detail).where(events.c.event_id == event_id))
    ).one_or_none()
    return Event(**row._mapping) if row else None


async def list_events(
    conn: AsyncConnection,
    filters: EventFilter,
    *,
    limit: int,
    after: Position | None = None,
) -> EventSlice:
    """Up to `limit` events that match `filters`, in the filter's order, strictly after `after`.

    For the events of one identity (`GET /identities/{id}/events`), set
    `filters.identity_id`: the same scans and cursor rules apply.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    # One row more than asked tells whether another page exists, so the last page never
    # hands out a cursor that leads to an empty page.
    sql, params = listing_statement(filters, limit + 1, after)
    # The planner settings as they were (then as they are now): restored once the page is read.
    saved = tuple((await conn.exec_driver_sql(_ORDERED_SCANS_ONLY)).one())[: len(_PLANNER_SETTINGS)]
    # No `finally`: a failed statement aborts the caller's transaction, whose rollback undoes
    # these transaction-local settings anyway; restoring them there would only fail again
    # ("current transaction is aborted") and hide the real error.
    rows = (await conn.exec_driver_sql(sql, params)).all()
    await conn.exec_driver_sql(_RESTORE_PLANNER, saved)
    items = [Event(*tuple(row)) for row in rows[:limit]]
    return EventSlice(items=items, more=len(rows) > limit)


def listing_statement(
    filters: EventFilter, n: int, after: Position | None = None
) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of up to `n` events matching `filters` strictly after `after`.

    The text depends on the filter's shape only, never on a value or on `n`.
    """
    query = _Query(filters, after)
    return query.statement(query.scans(), n)


# Every scan must be an index scan that yields rows in order, read only as far as the page
# needs. Postgres may instead pick a bitmap scan and a sort, which reads every row in range:
# it does so for a prepared statement's generic plan, which cannot see the since/until values
# and guesses that a window holds a few dozen rows (a month of a common type is thousands).
# With bitmap scans and sorts off, the ordered scans are the only plans left, so the generic
# plan is as good as any; and it is used from the first run, since planning a union of many
# scans can cost more than running it. Set for this listing only (transaction-local), and
# restored within the caller's transaction, so whatever the caller runs next plans as before.
_PLANNER_SETTINGS = {
    "enable_bitmapscan": "off",
    "enable_sort": "off",
    "plan_cache_mode": "force_generic_plan",
}
# Columns: the planner settings as they were, then as they are now.
_ORDERED_SCANS_ONLY = "SELECT " + ", ".join(
    [f"current_setting('{name}')" for name in _PLANNER_SETTINGS]
    + [f"set_config('{name}', '{value}', true)" for name, value in _PLANNER_SETTINGS.items()]
)
_RESTORE_PLANNER = "SELECT " + ", ".join(
    f"set_config('{name}', ${i}, true)" for i, name in enumerate(_PLANNER_SETTINGS, start=1)
)


# The statement is SQL text assembled from the fixed fragments below, every value a bound
# parameter ($1, $2, ... straight to asyncpg). Not Core expressions, nor text() with named
# parameters: for a union of many selects those cost milliseconds of Python per request
# (expression objects, then a regex pass over the text), the plain string microseconds.
_SELECT_LIST = ", ".join(
    f'"{column.element.name}" AS "{column.name}"'
    if isinstance(column, Label)
    else f'"{column.name}"'
    for column in EVENT_COLUMNS
)
# Every field of an Event, from a statement over `events` (by that name).
EVENT_SELECT = f"{_SELECT_LIST}, {DETAIL} AS detail"
_PAGE_DETAIL = EVENT_DETAIL.format(event_id="page.id")
_ORDER = {True: '"time" DESC, event_id DESC', False: '"time", event_id'}
_OUTER_ORDER = {True: '"time" DESC, id DESC', False: '"time", id'}
# A literal, not a bound value: a generic (prepared) plan may use the partial index only if
# the statement itself implies the index's WHERE clause.
_RARE_STATUS = f"status <> '{FETCHED}'"

Scan = tuple[str, ...]


class _Query:
    """One listing's scans and statement, with the parameters they bind."""

    def __init__(self, filters: EventFilter, after: Position | None) -> None:
        self.filters = filters
        self.params: list[Any] = []
        self.common = self._common_conditions(after)

    def bind(self, value: object) -> str:
        """A placeholder for `value`, which is sent as a parameter, never spliced in."""
        self.params.append(value)
        return f"${len(self.params)}"

    def _common_conditions(self, after: Position | None) -> Scan:
        """What every scan carries: the time window and the cursor (both index conditions)."""
        f = self.filters
        conditions: list[str] = []
        if f.since is not None:
            conditions.append(f'"time" >= CAST({self.bind(f.since)} AS timestamptz)')
        if f.until is not None:
            conditions.append(f'"time" < CAST({self.bind(f.until)} AS timestamptz)')
        if after is not None:
            # A row comparison, so Postgres makes it one boundary of the index range on
            # (time, event_id) rather than an OR checked row by row.
            time_ = self.bind(after.time)
            id_ = self.bind(after.event_id)
            op = "<" if f.descending else ">"
            conditions.append(
                f'("time", event_id) {op} (CAST({time_} AS timestamptz), CAST({id_} AS uuid))'
            )
        return tuple(conditions)

    def scans(self) -> list[Scan]:
        """The index range scans whose union is exactly the matching events (module doc).

        Each scan is a tuple of conditions: equalities on the leading columns of one index,
        plus whatever that index cannot check (checked row by row, and chosen so that few
        rows fail it).
        """
        f = self.filters
        is_test_values = (False, True) if f.is_test is None else (f.is_test,)

        if f.identity_id is not None:
            scan = [f"identity_id = {self.bind(f.identity_id)}"]
            if f.has_type_filter:
                scan.append(self._type_condition())
            if f.is_test is not None:
                scan.append(_is_test(f.is_test))
            if f.status is not None:
                scan.append(f"status = {self.bind(f.status)}")
            return [tuple(scan)]

        if f.status is not None and f.status != FETCHED:
            status = f"status = {self.bind(f.status)}"
            if f.types and not f.type_prefixes:
                # ix_events_rare_status_type_is_test_time_event_id (partial: not fetched)
                return [
                    (_RARE_STATUS, status, f"type = {placeholder}", _is_test(b))
                    for placeholder in map(self.bind, f.types)
                    for b in is_test_values
                ]
            # ix_events_status_is_test_time_event_id; a prefix's types are checked row by
            # row, so the rows read are bounded by the events in this (rare) status, never
            # by how many types the prefix covers.
            by_type = (self._type_condition(),) if f.has_type_filter else ()
            return [(status, _is_test(b), *by_type) for b in is_test_values]

        if f.has_type_filter:
            # `fetched` is nearly every row, so checking it row by row discards few.
            residual = (f"status = {self.bind(FETCHED)}",) if f.status == FETCHED else ()
            prefixes = _outermost(f.type_prefixes)
            scans: list[Scan] = []
            # ix_events_type_is_test_time_event_id, for exact types no prefix covers (a
            # covered one would be listed twice).
            for placeholder in map(self.bind, _uncovered(f.types, prefixes)):
                scans += [(f"type = {placeholder}", _is_test(b), *residual) for b in is_test_values]
            # ix_events_type_family_is_test_time_event_id
            for prefix in prefixes:
                family = type_family(prefix)
                conditions = [f"{TYPE_FAMILY} = {self.bind(family)}"]
                if prefix != family:
                    # starts_with, not LIKE: a type may contain `_` or `%`.
                    conditions.append(f"starts_with(type, {self.bind(prefix)})")
                scans += [
                    (conditions[0], _is_test(b), *conditions[1:], *residual) for b in is_test_values
                ]
            return scans

        if f.status == FETCHED or f.is_test is not None:
            # ix_events_status_is_test_time_event_id, enumerating the column not pinned.
            statuses = (FETCHED,) if f.status == FETCHED else EVENT_STATUSES
            return [
                (f"status = {placeholder}", _is_test(b))
                for placeholder in map(self.bind, statuses)
                for b in is_test_values
            ]

        # ix_events_time_event_id; since/until and the cursor are its index conditions.
        return [()]

    def _type_condition(self) -> str:
        """The type filter checked row by row (on scans of an index that does not lead with
        type)."""
        f = self.filters
        alternatives = (
            [f"type = ANY(CAST({self.bind(list(f.types))} AS text[]))"] if f.types else []
        )
        # starts_with, not LIKE: a type may contain `_` or `%`, which LIKE reads as wildcards.
        alternatives += [f"starts_with(type, {self.bind(p)})" for p in f.type_prefixes]
        return "(" + " OR ".join(alternatives) + ")"

    def statement(self, scans: Sequence[Scan], n: int) -> tuple[str, tuple[Any, ...]]:
        """Each scan limited to `n` rows in order, merged in order and limited to `n` again."""
        descending = self.filters.descending
        # Bound, not written into the text: each page size would otherwise be a statement of
        # its own, prepared and planned again. With sorts and bitmap scans off, the generic
        # plan (which cannot see `n`) is the ordered scans all the same.
        limit = self.bind(int(n))
        # The full event is read for the rows of the page only: in the one scan's select
        # list, or around the merge of several (once the limit is applied).
        detail = len(scans) == 1
        branches = [
            f"SELECT {EVENT_SELECT if detail else _SELECT_LIST} FROM events"
            + (" WHERE " + " AND ".join((*scan, *self.common)) if scan or self.common else "")
            + f" ORDER BY {_ORDER[descending]} LIMIT {limit}"
            for scan in scans
        ]
        if len(branches) == 1:
            sql = branches[0]
        else:
            union = "\nUNION ALL\n".join(f"({branch})" for branch in branches)
            outer = _OUTER_ORDER[descending]
            sql = (
                f"SELECT page.*, {_PAGE_DETAIL} AS detail"
                f" FROM (\n{union}\n) AS page ORDER BY {outer} LIMIT {limit}"
            )
        return sql, tuple(self.params)


def type_family(prefix: str) -> str:
    """The family of the types a prefix selects: the prefix up to its first dot."""
    return prefix[: prefix.index(".") + 1]


def _is_test(value: bool) -> str:
    # A literal: two values only, and it lets a prepared plan pick the index range.
    return f"is_test = {'true' if value else 'false'}"


def _outermost(prefixes: Sequence[str]) -> list[str]:
    """The prefixes no other of them covers (`identity.kyc_refresh.` is inside `identity.`):
    a covered one's events would be listed twice."""
    return [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]


def _uncovered(types: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """The exact types that none of `prefixes` covers."""
    return [t for t in types if not t.startswith(tuple(prefixes))]
