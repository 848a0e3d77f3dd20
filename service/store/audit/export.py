"""Audit exports: every event of a window (optionally one identity's) with the evidence of what
Paxos told us and when, streamed in constant memory, in JSON Lines or CSV.

Each record carries the events row (type, status, `via`, the delivery count, the first, last
and every kept receipt time, the fetch time, the notification's `is_test` and Paxos's
`confirmed_is_test`) and, for each of its journal rows (the notification as received, the full
event as fetched, Paxos's confirmation of a test event), the row's position, `recorded_at`, its
canonical hash and its body as the exact text stored, a JSON string: exactly what the seal
chain hashes, so an auditor can recompute each row's hash from the export alone and match it
with the seals (docs/audit.md).

The last record is a trailer: how many events, the journal positions they span, the seals
covering those positions (with their key ids and signatures) and whether every exported row is
sealed. In JSON Lines the trailer also carries `covering_seals`: every seal whose range meets
the span of exported positions, in full (prev_hash, range, rows_digest, hash, key id, signature), so
`paxos-events verify-export` can check the export with no database (docs/audit.md).

Events are read in (time, event_id) keyset batches, each a short statement of its own: memory
stays constant however large the window, and no long transaction holds back
pg_snapshot_xmin (which the projector waits on). The price: an event that arrives during the
export, at a point the export has already passed, is not in it (a window in the past is
stable).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.canonical import canonical_time, row_hash_sql
from service.store.audit.seals import SealInfo, covering, head
from service.store.tables import TEST_CONFIRMATION

FORMATS = ("jsonl", "csv")
BATCH = 1000
_SEALS_PER_QUERY = 16

CSV_COLUMNS = (
    "record",
    "event_id",
    "type",
    "source",
    "time",
    "object",
    "is_test",
    "confirmed_is_test",
    "identity_id",
    "status",
    "via",
    "deliveries",
    "first_received_at",
    "last_received_at",
    "receipt_times",
    "fetched_at",
    "attempts",
    "notification_position",
    "notification_recorded_at",
    "notification_row_hash",
    "notification_body",
    "event_position",
    "event_recorded_at",
    "event_row_hash",
    "event_body",
    "test_confirmation_position",
    "test_confirmation_recorded_at",
    "test_confirmation_row_hash",
    "test_confirmation_body",
    "trailer",
)


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """Which events to export (event time in [since, until), one identity or all), and how."""

    since: datetime | None = None
    until: datetime | None = None
    identity_id: str | None = None
    format: str = "jsonl"


_SELECT = f"""
    SELECT e.event_id, e.type, e.source, e.time, e.object, e.is_test, e.confirmed_is_test,
           e.identity_id, e.status,
           e.via, e.deliveries, e.first_received_at, e.last_received_at, e.receipt_times,
           e.fetched_at, e.attempts,
           n.position AS n_position, n.recorded_at AS n_recorded_at,
           {row_hash_sql("n")} AS n_hash, n.body::text AS n_body,
           f.position AS f_position, f.recorded_at AS f_recorded_at,
           {row_hash_sql("f")} AS f_hash, f.body::text AS f_body,
           c.position AS c_position, c.recorded_at AS c_recorded_at,
           {row_hash_sql("c")} AS c_hash, c.body::text AS c_body
    FROM events e
    LEFT JOIN journal n ON n.event_id = e.event_id AND n.kind = 'notification'
    LEFT JOIN journal f ON f.event_id = e.event_id AND f.kind = 'event'
    LEFT JOIN journal c ON c.event_id = e.event_id AND c.kind = '{TEST_CONFIRMATION}'
    WHERE ($1::timestamptz IS NULL OR (e.time, e.event_id) > ($1::timestamptz, $2::uuid))
      AND ($3::timestamptz IS NULL OR e.time >= $3::timestamptz)
      AND ($4::timestamptz IS NULL OR e.time < $4::timestamptz)
      AND {{identity}}
    ORDER BY e.time, e.event_id
    LIMIT $6::int
"""
# Two statement texts, so each gets a plan that uses its index: (time, event_id) for all
# events, (identity_id, time, event_id) for one identity.
_SELECT_ALL = _SELECT.format(identity="$5::text IS NULL")
_SELECT_IDENTITY = _SELECT.format(identity="e.identity_id = $5::text")


class _Span:
    """The journal positions an export has covered, and how many of them are unsealed."""

    def __init__(self, sealed_through: int | None) -> None:
        self.sealed_through = sealed_through
        self.first: int | None = None
        self.last: int | None = None
        self.rows = 0
        self.unsealed = 0

    def add(self, position: int | None) -> None:
        if position is None:
            return
        self.rows += 1
        self.first = position if self.first is None else min(self.first, position)
        self.last = position if self.last is None else max(self.last, position)
        if self.sealed_through is None or position > self.sealed_through:
            self.unsealed += 1


async def _fetch(engine: AsyncEngine, statement: str, args: tuple[Any, ...]) -> list[Any]:
    """One batch, on a pooled connection held only for the statement."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        async with driver.transaction(readonly=True):
            # A batch is 1,000 rows of index lookups: starting parallel workers for it costs
            # more than they save (measured on the 1,000,000-event benchmark).
            await driver.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            rows: list[Any] = await driver.fetch(statement, *args)
            return rows


def _journal_row(position: Any, recorded_at: Any, digest: Any, body: Any) -> dict[str, Any] | None:
    if position is None:
        return None
    return {
        "position": position,
        "recorded_at": canonical_time(recorded_at),
        "row_hash": bytes(digest).hex(),
        "body": body,
    }


def _record(r: Any) -> dict[str, Any]:
    return {
        "record": "event",
        "event_id": r["event_id"],
        "type": r["type"],
        "source": r["source"],
        "time": r["time"],
        "object": r["object"],
        "is_test": r["is_test"],
        "confirmed_is_test": r["confirmed_is_test"],
        "identity_id": r["identity_id"],
        "status": r["status"],
        "via": r["via"],
        "deliveries": r["deliveries"],
        "first_received_at": r["first_received_at"],
        "last_received_at": r["last_received_at"],
        "receipt_times": r["receipt_times"] or [],
        "fetched_at": r["fetched_at"],
        "attempts": r["attempts"],
        "notification": _journal_row(r["n_position"], r["n_recorded_at"], r["n_hash"], r["n_body"]),
        "event": _journal_row(r["f_position"], r["f_recorded_at"], r["f_hash"], r["f_body"]),
        "test_confirmation": _journal_row(
            r["c_position"], r["c_recorded_at"], r["c_hash"], r["c_body"]
        ),
    }


def _seal_summary(seal: SealInfo | None) -> dict[str, Any] | None:
    if seal is None:
        return None
    return {
        "seal_id": seal.seal_id,
        "first_position": seal.first_position,
        "last_position": seal.last_position,
        "hash": seal.hash_hex,
        "key_id": seal.key_id,
        "signature": seal.signature_hex,
    }


async def export(
    engine: AsyncEngine,
    query: ExportQuery,
    *,
    batch: int = BATCH,
    on_trailer: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[bytes]:
    """The export of `query`, a chunk (`batch` records) at a time; the trailer last (also
    handed to `on_trailer`, for a summary)."""
    encoder = msgspec.json.Encoder()
    async with engine.connect() as conn:
        start_head = await head(conn)
        await conn.commit()
    span = _Span(start_head.last_position if start_head else None)
    if query.format == "csv":
        yield _csv_lines([CSV_COLUMNS])
    count = 0
    statement = _SELECT_ALL if query.identity_id is None else _SELECT_IDENTITY

    def batch_after(after: tuple[datetime, uuid.UUID] | None) -> asyncio.Task[list[Any]]:
        args = (*(after or (None, None)), query.since, query.until, query.identity_id, batch)
        return asyncio.ensure_future(_fetch(engine, statement, args))

    # The next batch is read while this one is encoded and sent: the database and this
    # process work at the same time.
    pending: asyncio.Task[list[Any]] | None = batch_after(None)
    try:
        while pending is not None:
            rows = await pending
            pending = None
            if not rows:
                break
            if len(rows) == batch:
                pending = batch_after((rows[-1]["time"], rows[-1]["event_id"]))
            records = [_record(r) for r in rows]
            for record in records:
                span.add(record["notification"] and record["notification"]["position"])
                span.add(record["event"] and record["event"]["position"])
                span.add(record["test_confirmation"] and record["test_confirmation"]["position"])
            count += len(records)
            if query.format == "csv":
                yield _csv_lines(_csv_row(encoder, record) for record in records)
            else:
                yield b"".join(encoder.encode(record) + b"\n" for record in records)
    finally:
        if pending is not None:  # the reader went away: stop the read ahead
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
    trailer = await _trailer(engine, query, count, span)
    if on_trailer is not None:
        on_trailer(trailer)
    if query.format == "csv":
        yield _csv_lines(
            [["trailer", *([""] * (len(CSV_COLUMNS) - 2)), encoder.encode(trailer).decode()]]
        )
    else:
        # The covering seals, streamed into the trailer's last field (each is up to 400 KB of
        # row digests: never all of them in memory at once).
        opening = encoder.encode({"record": "trailer", **trailer})
        yield opening[:-1] + b',"covering_seals":['
        separator = b""
        async for seal in _covering_seals(engine, span):
            yield separator + encoder.encode(seal)
            separator = b","
        yield b"]}\n"


async def _covering_seals(engine: AsyncEngine, span: _Span) -> AsyncIterator[dict[str, Any]]:
    """Every seal whose range meets [span.first, span.last], in id order, in full."""
    if span.first is None or span.last is None:
        return
    after = 0
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT seal_id, first_position, last_position, row_count, prev_hash, "
                        "rows_digest, hash, key_id, signature FROM seals "
                        "WHERE seal_id > :after AND last_position >= :first "
                        "AND first_position <= :last ORDER BY seal_id LIMIT :n"
                    ),
                    {"after": after, "first": span.first, "last": span.last, "n": _SEALS_PER_QUERY},
                )
            ).all()
        if not rows:
            return
        for r in rows:
            yield {
                "seal_id": r.seal_id,
                "first_position": r.first_position,
                "last_position": r.last_position,
                "row_count": r.row_count,
                "prev_hash": bytes(r.prev_hash).hex(),
                "rows_digest": bytes(r.rows_digest).hex(),
                "hash": bytes(r.hash).hex(),
                "key_id": r.key_id,
                "signature": bytes(r.signature).hex() if r.signature is not None else None,
            }
        after = rows[-1].seal_id


async def _trailer(
    engine: AsyncEngine, query: ExportQuery, count: int, span: _Span
) -> dict[str, Any]:
    async with engine.connect() as conn:
        first = await covering(conn, span.first) if span.first is not None else None
        last = await covering(conn, span.last) if span.last is not None else None
        newest = await head(conn)
    return {
        "since": query.since,
        "until": query.until,
        "identity_id": query.identity_id,
        "events": count,
        "journal_rows": span.rows,
        "journal_positions": {"first": span.first, "last": span.last},
        # The seals whose ranges hold the first and last exported journal rows: the chain from
        # one to the other covers every exported row that is sealed.
        "seals": {"first": _seal_summary(first), "last": _seal_summary(last)},
        # Every exported row sealed by the end of the export (the seals form a contiguous
        # range, so a row at or below the head's last position is sealed).
        "all_sealed": span.unsealed == 0
        or (newest is not None and span.last is not None and span.last <= newest.last_position),
        # Exported rows that were above the head seal when the export started.
        "unsealed_rows": span.unsealed,
        "head": _seal_summary(newest),
    }


def _csv_value(encoder: msgspec.json.Encoder, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | uuid.UUID):
        return str(value)
    return encoder.encode(value).decode()


def _csv_row(encoder: msgspec.json.Encoder, record: dict[str, Any]) -> list[str]:
    n = record["notification"] or {}
    f = record["event"] or {}
    c = record["test_confirmation"] or {}
    flat = {
        **{
            k: v
            for k, v in record.items()
            if k not in ("notification", "event", "test_confirmation")
        },
        "notification_position": n.get("position"),
        "notification_recorded_at": n.get("recorded_at"),
        "notification_row_hash": n.get("row_hash"),
        "notification_body": n.get("body"),
        "event_position": f.get("position"),
        "event_recorded_at": f.get("recorded_at"),
        "event_row_hash": f.get("row_hash"),
        "event_body": f.get("body"),
        "test_confirmation_position": c.get("position"),
        "test_confirmation_recorded_at": c.get("recorded_at"),
        "test_confirmation_row_hash": c.get("row_hash"),
        "test_confirmation_body": c.get("body"),
    }
    return [_csv_value(encoder, flat.get(column)) for column in CSV_COLUMNS]


def _csv_lines(rows: Any) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")
