"""The feed: full events in journal-position order, read only below a position horizon.

Positions come from a sequence: assigned at INSERT, visible at COMMIT, out of order. A reader
that follows `position > after` would skip a row whose transaction commits after a higher
position's. So the feed is read only up to a *horizon*: a position H such that every position
<= H is final (its row committed, or the value burned for good). `sample` and `Horizon` find
one without blocking any writer (the reasoning is at `_WRITERS`); `read_page` reads up to it.

Why not the projections' `(xid, position)` order below `pg_snapshot_xmin`? It is gap-safe in
`(xid, position)` order, but a feed's cursor is a position: a transaction that took its xid
early (an UPDATE of `events` first) and inserts a *higher* position can commit while one with a
later xid still holds a *lower* position; xmin then lets the higher one out first. The
horizon here is the sealer's (`audit/seals.horizon`: every inserter holds ROW EXCLUSIVE on the
journal from before its position is drawn until it ends) read from `pg_locks` instead of by
taking a lock, so neither the intake nor the fetcher ever waits for a feed reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import Label
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.stored import Event, EventFields
from service.store.events import EVENT_COLUMNS

# How many journal rows one read may look at, per item asked for: a reader whose filters drop
# most rows still gets an answer (and a `next_after` past what was read) in bounded time.
SCAN_PER_ITEM = 10

# The sequence's last value. Its cache must stay 1 (the default): a backend that cached values
# would hand out positions <= this later without having held the lock when it was read.
_LAST = "SELECT pg_sequence_last_value(pg_get_serial_sequence('journal', 'position')::regclass)"

# The transactions that may be inserting into the journal right now. Every INSERT takes ROW
# EXCLUSIVE on the table before the identity's nextval runs (at parse or plan time) and keeps
# it until its transaction commits or rolls back (a rolled-back savepoint takes its rows with
# it). So if this is read *after* `_LAST`, a position <= that last value that is not final yet
# belongs to one of the transactions listed here; once they have all ended, every such
# position is final. Fast-path locks are listed too. Reading `pg_locks` blocks nobody.
_WRITERS = """
    SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}')
    FROM pg_locks
    WHERE locktype = 'relation'
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND relation = 'journal'::regclass
      AND mode = 'RowExclusiveLock' AND granted
      AND pid IS DISTINCT FROM pg_backend_pid()
"""


# Read replicas. The horizon cannot be sampled on a hot standby: its pg_locks holds none of
# the primary's ROW EXCLUSIVE locks (a standby would call every position final at once) and
# its sequence runs up to 32 values ahead (sequences are WAL-logged in advance). So it is
# always sampled on the primary, with the WAL insert position read after the writers: every
# commit that made the horizon's positions final was in the WAL before it (a transaction
# writes its commit record before it releases its locks). A replica that has replayed past
# that position sees every row up to the horizon. LSNs as byte offsets (numeric, exact).
_WAL_NOW = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
_REPLAYED = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"


@dataclass(frozen=True, slots=True)
class Sample:
    """The journal's last position, the transactions that were writing it just after, and
    (when asked for, on the primary) the WAL position just after that."""

    last: int
    writers: frozenset[str]
    lsn: int | None = None


async def sample(conn: AsyncConnection, *, lsn: bool = False) -> Sample:
    """Read the last position handed out, then who may still hold one (in that order), then,
    with `lsn`, the primary's WAL insert position."""
    last = (await conn.exec_driver_sql(_LAST)).scalar()
    writers = await writing(conn)
    wal = int((await conn.exec_driver_sql(_WAL_NOW)).scalar_one()) if lsn else None
    return Sample(0 if last is None else int(last), writers, wal)


async def replayed(conn: AsyncConnection) -> int | None:
    """How far `conn`'s server has replayed the primary's WAL; None on the primary itself."""
    value = (await conn.exec_driver_sql(_REPLAYED)).scalar()
    return None if value is None else int(value)


async def writing(conn: AsyncConnection) -> frozenset[str]:
    """The virtual transaction ids that hold ROW EXCLUSIVE on the journal now."""
    return frozenset((await conn.exec_driver_sql(_WRITERS)).scalar() or ())


@dataclass(slots=True)
class Horizon:
    """The highest position known final, from samples taken over time (pure bookkeeping).

    A sample with no writers is final at once. One with writers waits until a later look at
    the writers finds none of them: then its `last` is final. Samples whose writers are still
    running are kept (a bounded number: dropping one only delays the horizon, never breaks it).
    """

    final: int = 0
    # A WAL position past the commits that made `final` final (None: not sampled).
    final_lsn: int | None = None
    pending: list[Sample] = field(default_factory=list)
    max_pending: int = 32

    def observe(self, new: Sample) -> int:
        """Take `new` (its writers read after its `last`, and after every earlier sample):
        settle the pending samples none of whose writers still writes; the final position.
        Whatever `new` settles, its own look at the writers proves it: its `lsn` (read after
        that look) becomes `final_lsn`."""
        before = self.final
        still: list[Sample] = []
        for old in self.pending:
            if old.writers.isdisjoint(new.writers):
                self.final = max(self.final, old.last)
            else:
                still.append(old)
        if not new.writers:
            self.final = max(self.final, new.last)
            still = []
        elif new.last > self.final:
            # An older sample whose writers include all of the new one's settles no sooner
            # and says less: drop it.
            still = [old for old in still if not old.writers >= new.writers]
            if len(still) < self.max_pending:
                still.append(new)
        self.pending = still
        if self.final > before and new.lsn is not None:
            self.final_lsn = new.lsn
        return self.final

    @property
    def settled(self) -> bool:
        """No sample is waiting on a writer."""
        return not self.pending


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """What a feed reader wants: exact types or type prefixes (either matches; none: all),
    and test events or real ones (None: both)."""

    types: tuple[str, ...] = ()
    type_prefixes: tuple[str, ...] = ()
    is_test: bool | None = None


class FeedEvent(EventFields, frozen=True):
    """An `Event` whose `detail` is the stored JSON text, passed on undecoded: a page of the
    feed is mostly details, and decoding them to re-encode them was a quarter of its cost.
    Encoded, it is the same JSON value as the `Event` (whitespace aside)."""

    detail: msgspec.Raw | None


@dataclass(frozen=True, slots=True)
class FeedSlice:
    """Up to `limit` items (position, event) in position order, and where to read on from:
    past every row this read looked at, items or not."""

    items: list[tuple[int, FeedEvent]]
    next_after: int


def _column_name(column: Any) -> str:
    return str(column.element.name if isinstance(column, Label) else column.name)


def _selected(column: Any) -> str:
    return f'e."{_column_name(column)}" AS "{column.name}"'


# The detail is the journal row's body (the feed reads full events' rows), as its text.
_EVENT_SELECT = ", ".join(_selected(c) for c in EVENT_COLUMNS) + ', j.body::text AS "detail"'
# Rows become FeedEvents by position, and must stay Events field for field.
if Event.__struct_fields__ != FeedEvent.__struct_fields__:
    raise RuntimeError("Event and FeedEvent list different fields")

# The journal range (after, through] read in position order (its primary key), at most
# `scan` rows of it, each full event joined with its events row. Run lazily: the nested loop
# stops at the `limit`-th match, so a page of unfiltered events reads about `limit` rows.
_PAGE = """
    SELECT j.position, {columns}
    FROM (
        SELECT position, event_id, kind, body FROM journal
        WHERE position > $1 AND position <= $2
        ORDER BY position
        LIMIT $3
    ) j
    JOIN events e ON e.event_id = j.event_id
    WHERE j.kind = 'event'{conditions}
    ORDER BY j.position
    LIMIT $4
"""

# How far a read that found fewer than `limit` items got: the count and last position of the
# rows in its range (an index-only scan of the primary key, mostly).
_SCANNED = """
    SELECT count(*), max(position) FROM (
        SELECT position FROM journal
        WHERE position > $1 AND position <= $2
        ORDER BY position
        LIMIT $3
    ) j
"""


def _conditions(where: FeedFilter, params: list[Any]) -> str:
    def bind(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    conditions: list[str] = []
    if where.types or where.type_prefixes:
        alternatives = [f"e.type = ANY({bind(list(where.types))}::text[])"] if where.types else []
        # starts_with, not LIKE: a type may hold `_` or `%`.
        alternatives += [f"starts_with(e.type, {bind(p)})" for p in where.type_prefixes]
        conditions.append("(" + " OR ".join(alternatives) + ")")
    if where.is_test is not None:
        conditions.append(f"e.is_test = {bind(where.is_test)}")
    return "".join(f"\n      AND {c}" for c in conditions)


def _feed_event(values: tuple[Any, ...]) -> FeedEvent:
    fields = list(values)
    if fields[-1] is not None:  # detail, the last column, as in Event
        fields[-1] = msgspec.Raw(one_line(fields[-1]))
    return FeedEvent(*fields)


def one_line(json_text: str) -> str:
    """The JSON text as received, on one line: an SSE message's `data` is one line, and Paxos
    may send its JSON spread over several (a line break can only be whitespace between
    tokens: inside a string JSON escapes it)."""
    if "\n" in json_text or "\r" in json_text:
        return msgspec.json.format(json_text, indent=0)
    return json_text


async def read_page(
    conn: AsyncConnection,
    *,
    after: int,
    through: int,
    limit: int,
    where: FeedFilter = FeedFilter(),  # noqa: B008 - frozen
    scan: int | None = None,
) -> FeedSlice:
    """The items in positions (after, through] that match `where`, up to `limit` of them,
    looking at no more than `scan` journal rows (default `SCAN_PER_ITEM` per item).

    `through` must be a horizon (every position <= it final) found *before* this call, so
    that this statement's snapshot sees every row up to it. `next_after` is the last item's
    position when the page is full; else the last row looked at when `scan` rows were; else
    `through` (everything up to it was read). Never less than `after`.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if through <= after:
        return FeedSlice(items=[], next_after=after)
    scan = scan if scan is not None else SCAN_PER_ITEM * limit
    params: list[Any] = [after, through, scan, limit]
    sql = _PAGE.format(columns=_EVENT_SELECT, conditions=_conditions(where, params))
    rows = (await conn.exec_driver_sql(sql, tuple(params))).all()
    items = [(int(row[0]), _feed_event(tuple(row)[1:])) for row in rows]
    if len(items) == limit:
        return FeedSlice(items=items, next_after=items[-1][0])
    scanned: tuple[Any, ...] = tuple(
        (await conn.exec_driver_sql(_SCANNED, (after, through, scan))).one()
    )
    count, last = scanned
    next_after = int(last) if count >= scan and last is not None else through
    return FeedSlice(items=items, next_after=next_after)
