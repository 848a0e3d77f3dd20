"""Query benchmark: the `GET /events` store query on 1,000,000 events, first page and deep.

    .venv/bin/python -m bench.query              # a few minutes (most of it loading)
    .venv/bin/python -m bench.query --reuse      # keep the loaded database from a last run
    .venv/bin/python -m bench.query --explain    # also print each case's EXPLAIN ANALYZE

What it measures: `service.store.events.list_events`, the function the HTTP handler calls,
on one pooled connection, without HTTP (no routing, JSON encoding or auth). For each filter
alone and a few combined, in the default order (newest first):

- first page: `limit=100`, no cursor;
- deep page: the page 5,000 items in, reached by walking the cursors, then timed on its own.

Each is run 100 times after a warm-up; p50 and p95 are reported. "cold" is the first call on
a new connection, for information: it prepares and plans the statement, which for a union
of ~100 scans (a type prefix over 47 types) takes several milliseconds; later calls of the
same statement on that connection reuse the plan, and the warm figures show that.

Targets: p95 <= 5 ms for both pages, and a deep page no slower than the first: deep p50 <=
first p50 * 1.25 + 0.25 ms (p50, not p95, because the same plan reads the same number of
rows, and a p95 over 100 runs moves with whatever else the machine did in that second).
A filter with fewer than 5,100 matching events has no deep page ("n/a").

Anything else running on the machine shows up in p95 first: the figures are only as quiet as
the machine was.

The data: 1,000,000 events over one year, ordered by time as they arrive, about 60 Paxos
types (transfers most, then identity, orchestration, and a few unknown types), 5% test
events, 97% fetched (1.5% pending, 1% failed, 0.5% not_found), identity ids on identity
events only (~100k distinct, skewed so some identities have hundreds of events), times on
4-second steps so many events share a timestamp. `VACUUM ANALYZE` runs before measuring.

Results go to stdout as a table and to bench/results/query.json. The database is the
embedded server under .data/bench unless BENCH_DATABASE_URL names another server; a database
`bench_query` is created on it (and kept, for `--reuse`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench import database
from bench.database import server_url
from service.db.engine import create_engine, plain_url, with_database
from service.domain.stored import EventFilter, Position
from service.simulator.universe import TRANSFER_KINDS
from service.store.events import list_events

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "query.json"
DATABASE = "bench_query"

TARGET_P95_MS = 5.0
DEEP_MARGIN = 1.25
DEEP_SLACK_MS = 0.25
PAGE = 100
DEPTH = 5_000

START = datetime(2025, 1, 1, tzinfo=UTC)
YEAR_S = 365 * 24 * 3600
STEP_S = 4  # times on 4 s steps: ~7.9M slots for 1M events, so thousands share a timestamp

# The transfer kinds Paxos documents: the simulator's list, one vocabulary for both.


def type_weights() -> dict[str, float]:
    """Relative frequency of each type: transfers ~55%, identity ~35%, orchestration ~9%."""
    weights: dict[str, float] = {}
    for rank, kind in enumerate(TRANSFER_KINDS):
        share = 8.0 / (1 + rank)  # crypto and ACH busiest, the intrabank kinds rare
        weights[f"transfer.{kind}.pending"] = share
        weights[f"transfer.{kind}.completed"] = share * 0.95
        weights[f"transfer.{kind}.failed"] = share * 0.05
    weights["transfer.internal_transfer_debit.completed"] = 1.5
    weights["transfer.internal_transfer_credit.completed"] = 1.5
    transfer_total = sum(weights.values())
    identity = {
        "identity.approved": 10.0,
        "identity.denied": 1.0,
        "identity.disabled": 0.5,
        "identity.documents_required": 4.0,
        "identity.kyc_refresh.started": 6.0,
        "identity.kyc_refresh.completed": 5.5,
        "identity.kyc_refresh.expired": 0.5,
        "identity.control.created": 1.5,
        "identity.control.deleted": 1.0,
    }
    orchestration = {
        "orchestration.processing": 4.5,
        "orchestration.completed": 4.2,
        "orchestration.failed": 0.3,
    }
    # Types Paxos may add without notice; stored like any other.
    unknown = {"identity.profile.updated": 0.6, "account.created": 0.3, "identity": 0.1}
    scale = 55.0 / transfer_total
    weights = {name: w * scale for name, w in weights.items()}
    for group, share in ((identity, 35.0), (orchestration, 9.0), (unknown, 1.0)):
        total = sum(group.values())
        weights.update({name: w * share / total for name, w in group.items()})
    return weights


def type_slots(slots: int = 10_000) -> list[str]:
    """`slots` type names, each repeated in proportion to its weight (picked at random in SQL)."""
    weights = type_weights()
    total = sum(weights.values())
    names: list[str] = []
    for name, w in weights.items():
        names.extend([name] * max(1, round(slots * w / total)))
    return names


# One chunk of events: times within [lo, hi) seconds after START, rows inserted in time
# order (as they arrive), every other column drawn per row; a fetched event's full event in
# the journal, where `/events` reads it.
LOAD_CHUNK = """
WITH e AS MATERIALIZED (
    SELECT
        gen_random_uuid() AS id,
        t.type,
        $4::timestamptz + make_interval(secs => $5::float8
            * floor(($2::float8 + random() * ($3::float8 - $2::float8)) / $5::float8)) AS time,
        random() < 0.05 AS is_test,
        CASE WHEN r_status < 0.970 THEN 'fetched'
             WHEN r_status < 0.985 THEN 'pending'
             WHEN r_status < 0.995 THEN 'failed'
             ELSE 'not_found' END AS status,
        CASE WHEN t.type LIKE 'identity.%' THEN
            '00000000-0000-4000-8000-' || lpad(to_hex(floor(100000 * r_identity ^ 2)::int), 12, '0')
        END AS identity_id,
        gen_random_uuid() AS object_id,
        r_via
    FROM (
        SELECT ($1::text[])[1 + floor(random() * cardinality($1::text[]))::int] AS type,
               random() AS r_status, random() AS r_identity, random() AS r_via
        FROM generate_series(1, $6::int)
    ) AS t
), ev AS (
    INSERT INTO events (
        event_id, type, source, time, object, is_test, status, via, deliveries,
        first_received_at, last_received_at, fetched_at, attempts, last_error,
        identity_id, object_type, undelivered_webhooks, object_id)
    SELECT
        id, type, 'com.paxos', time, 'event', is_test, status,
        CASE WHEN r_via < 0.02 THEN 'list_events' ELSE 'webhook' END,
        CASE WHEN r_via < 0.02 THEN 0 WHEN r_via > 0.97 THEN 2 ELSE 1 END,
        time + interval '0.3 seconds', time + interval '0.3 seconds',
        CASE WHEN status = 'fetched' THEN time + interval '1 second' END,
        CASE WHEN status = 'pending' THEN 0 WHEN status = 'fetched' THEN 1 ELSE 8 END,
        CASE WHEN status = 'failed' THEN 'HTTP 500 from Get Event'
             WHEN status = 'not_found' THEN 'HTTP 404 from Get Event' END,
        CASE WHEN status = 'fetched' THEN identity_id END,
        CASE WHEN status <> 'fetched' THEN NULL
             WHEN type LIKE 'identity.kyc_refresh.%' THEN 'identity_kyc_refresh'
             WHEN type LIKE 'identity.control.%' THEN 'identity_control'
             WHEN type = 'identity.documents_required' THEN 'identity_documents_required'
             WHEN type LIKE 'identity.%' THEN 'identity_summary_status_change'
             WHEN type LIKE 'transfer.%' THEN 'transfer_status_change'
             WHEN type LIKE 'orchestration.%' THEN 'orchestration_status_change' END,
        CASE WHEN status = 'fetched' THEN 0 END,
        CASE WHEN status = 'fetched' AND (type LIKE 'transfer.%' OR type LIKE 'orchestration.%')
             THEN object_id END
    FROM e
    ORDER BY time
)
INSERT INTO journal (event_id, kind, body)
SELECT id, 'event', json_build_object(
    'id', id, 'type', type, 'source', 'com.paxos', 'is_test', is_test,
    'created_at', to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'object', json_build_object(
        'id', object_id, 'identity_id', identity_id,
        'status', 'COMPLETED', 'profile_id', gen_random_uuid()))
FROM e
WHERE status = 'fetched'
ORDER BY time
"""


@dataclass(frozen=True)
class Case:
    name: str
    filters: EventFilter


@dataclass
class Result:
    case: str
    matching: int
    cold_ms: float
    first_p50_ms: float
    first_p95_ms: float
    deep_p50_ms: float | None
    deep_p95_ms: float | None
    ok: bool
    note: str


async def prepare(admin_url: str, events_n: int, reuse: bool) -> str:
    """A migrated database with `events_n` events: reused if asked and complete, else new."""
    url = with_database(admin_url, DATABASE)
    admin = await asyncpg.connect(plain_url(admin_url))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
    finally:
        await admin.close()
    if reuse and exists:
        conn = await asyncpg.connect(plain_url(url))
        try:
            count = await conn.fetchval("SELECT count(*) FROM events")
        finally:
            await conn.close()
        if count == events_n:
            print(f"reusing database {DATABASE} with {count:,} events")
            return url
    await database.recreate(admin_url, DATABASE)
    await load(url, events_n)
    return url


async def load(url: str, events_n: int, chunks: int = 20) -> None:
    """Bulk-load `events_n` events in time-ordered chunks, then VACUUM ANALYZE."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        # A bench load: losing it in a crash costs nothing, so skip waiting for each flush.
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '256MB'")
        slots = type_slots()
        started = time.perf_counter()
        span = YEAR_S / chunks
        per_chunk = events_n // chunks
        for i in range(chunks):
            n = per_chunk if i < chunks - 1 else events_n - per_chunk * (chunks - 1)
            await conn.execute(LOAD_CHUNK, slots, i * span, (i + 1) * span, START, float(STEP_S), n)
            print(
                f"\rloaded {per_chunk * i + n:>9,} events ({time.perf_counter() - started:5.1f} s)",
                end="",
                flush=True,
            )
        print()
        await conn.execute("VACUUM ANALYZE")
        print(f"VACUUM ANALYZE done ({time.perf_counter() - started:5.1f} s)")
    finally:
        await conn.close()


async def busiest_identity(conn: AsyncConnection) -> str:
    result = await conn.exec_driver_sql(
        "SELECT identity_id FROM events WHERE identity_id IS NOT NULL "
        "GROUP BY identity_id ORDER BY count(*) DESC LIMIT 1"
    )
    return str(result.scalar_one())


def cases(identity_id: str) -> list[Case]:
    """Each filter alone, then combinations (the type prefixes are the hard ones)."""
    month = (START + timedelta(days=150), START + timedelta(days=180))
    return [
        Case("no filter", EventFilter()),
        Case("type exact (common)", EventFilter(types=("transfer.crypto_deposit.completed",))),
        Case("type exact (rare)", EventFilter(types=("identity.kyc_refresh.expired",))),
        Case("type prefix identity.*", EventFilter(type_prefixes=("identity.",))),
        Case("type prefix transfer.* (47 types)", EventFilter(type_prefixes=("transfer.",))),
        Case("since/until (30 days)", EventFilter(since=month[0], until=month[1])),
        Case("is_test=true", EventFilter(is_test=True)),
        Case("is_test=false", EventFilter(is_test=False)),
        Case("identity_id (busiest)", EventFilter(identity_id=identity_id)),
        Case("status=failed", EventFilter(status="failed")),
        Case("status=fetched", EventFilter(status="fetched")),
        Case("order=asc, no filter", EventFilter(descending=False)),
        Case(
            "transfer.* + is_test=false",
            EventFilter(type_prefixes=("transfer.",), is_test=False),
        ),
        Case("type exact + is_test=true", EventFilter(types=("identity.approved",), is_test=True)),
        Case(
            "identity.* + status=failed",
            EventFilter(type_prefixes=("identity.",), status="failed"),
        ),
        Case(
            "transfer.* + status=pending + is_test=true",
            EventFilter(type_prefixes=("transfer.",), status="pending", is_test=True),
        ),
        Case("status=failed + is_test=true", EventFilter(status="failed", is_test=True)),
        Case(
            "transfer.* + 30 days + is_test=false, asc",
            EventFilter(
                type_prefixes=("transfer.",),
                since=month[0],
                until=month[1],
                is_test=False,
                descending=False,
            ),
        ),
        Case(
            "identity_id + identity.kyc_refresh.*",
            EventFilter(identity_id=identity_id, type_prefixes=("identity.kyc_refresh.",)),
        ),
        Case(
            "2 exact types + prefix + status=fetched",
            EventFilter(
                types=("transfer.wire_deposit.completed", "identity.approved"),
                type_prefixes=("orchestration.",),
                status="fetched",
            ),
        ),
    ]


async def timed(conn: AsyncConnection, filters: EventFilter, after: Position | None) -> float:
    started = time.perf_counter()
    await list_events(conn, filters, limit=PAGE, after=after)
    return (time.perf_counter() - started) * 1000


async def percentiles(
    conn: AsyncConnection, filters: EventFilter, after: Position | None, runs: int
) -> tuple[float, float]:
    for _ in range(5):  # warm-up: caches, prepared statements, plan cache
        await timed(conn, filters, after)
    samples = sorted([await timed(conn, filters, after) for _ in range(runs)])
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95


async def deep_position(conn: AsyncConnection, filters: EventFilter) -> tuple[Position | None, int]:
    """The cursor position DEPTH items in (None if fewer items follow it), and items walked."""
    after: Position | None = None
    walked = 0
    while walked < DEPTH:
        page = await list_events(conn, filters, limit=PAGE, after=after)
        walked += len(page.items)
        if not page.more:
            return None, walked
        last = page.items[-1]
        after = Position(time=last.time, event_id=last.id)
    return after, walked


async def measure(conn: AsyncConnection, case: Case, runs: int, cold: float) -> Result:
    first = await percentiles(conn, case.filters, None, runs)
    after, walked = await deep_position(conn, case.filters)
    if after is None:
        ok = first[1] <= TARGET_P95_MS
        note = f"only {walked:,} items: no deep page"
        return Result(case.name, walked, cold, *first, None, None, ok, note)
    deep = await percentiles(conn, case.filters, after, runs)
    ok = first[1] <= TARGET_P95_MS and deep[1] <= TARGET_P95_MS
    ok = ok and deep[0] <= first[0] * DEEP_MARGIN + DEEP_SLACK_MS
    return Result(case.name, walked, cold, *first, *deep, ok, "")


async def explain(conn: AsyncConnection, filters: EventFilter, after: Position | None) -> str:
    """EXPLAIN ANALYZE of the page statement list_events runs for `filters`, planned under the
    same settings (ordered scans only), with the parameter values known."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    sync_engine = conn.sync_engine
    event.listen(sync_engine, "before_cursor_execute", capture)
    try:
        await list_events(conn, filters, limit=PAGE, after=after)
    finally:
        event.remove(sync_engine, "before_cursor_execute", capture)
    # The page statement is the long one; the others set and restore planner settings.
    statement, parameters = max(captured, key=lambda c: len(c[0]))
    await conn.exec_driver_sql(
        "SELECT set_config('enable_bitmapscan', 'off', true), "
        "set_config('enable_sort', 'off', true)"
    )
    result = await conn.exec_driver_sql(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
    )
    await conn.rollback()  # ends the settings with the transaction
    return "\n".join(str(row[0]) for row in result)


def report(results: list[Result]) -> str:
    def ms(value: float | None) -> str:
        return f"{value:6.2f}" if value is not None else "   n/a"

    head = (
        f"{'case':44} {'items':>6} {'cold':>6}  {'first p50':>9} {'p95':>6}  "
        f"{'deep p50':>8} {'p95':>6}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.case:44} {r.matching:>6,} {ms(r.cold_ms)}  "
            f"{ms(r.first_p50_ms):>9} {ms(r.first_p95_ms)}  "
            f"{ms(r.deep_p50_ms):>8} {ms(r.deep_p95_ms)}  {'pass' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run(url: str, runs: int, show_plans: bool) -> list[Result]:
    engine: AsyncEngine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            version = (await conn.exec_driver_sql("SHOW server_version")).scalar_one()
            print(f"PostgreSQL {version}; timing service.store.events.list_events (no HTTP)")
            identity_id = await busiest_identity(conn)
        results = []
        for case in cases(identity_id):
            # A new server connection per case: its first call is the cold one.
            await engine.dispose()
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
                cold = await timed(conn, case.filters, None)
                result = await measure(conn, case, runs, cold)
            print(
                f"  {case.name}: cold {cold:.2f} ms, first p95 {result.first_p95_ms:.2f} ms",
                flush=True,
            )
            results.append(result)
        async with engine.connect() as conn:
            if show_plans:
                for case in cases(identity_id):
                    after, _ = await deep_position(conn, case.filters)
                    print(f"\n== {case.name} (deep page)" if after else f"\n== {case.name}")
                    print(await explain(conn, case.filters, after))
    finally:
        await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--reuse", action="store_true", help="keep a loaded database")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE plans")
    args = parser.parse_args()

    admin_url = server_url()
    url = asyncio.run(prepare(admin_url, args.events, args.reuse))
    load_before = os.getloadavg()[0]
    results = asyncio.run(run(url, args.runs, args.explain))
    load_after = os.getloadavg()[0]
    print()
    print(
        f"list_events via the store (not HTTP), limit {PAGE}, deep = {DEPTH:,} items in; "
        f"target p95 <= {TARGET_P95_MS} ms and deep <= first"
    )
    print(report(results))
    print(
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after "
        f"({os.cpu_count()} CPUs): anything above ~1 means others shared the machine"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "what": "service.store.events.list_events on one pooled connection, no HTTP",
                "events": args.events,
                "page": PAGE,
                "depth": DEPTH,
                "runs": args.runs,
                "load_average_1m": {"before": load_before, "after": load_after},
                "target": {
                    "p95_ms": TARGET_P95_MS,
                    "deep_vs_first": f"deep p50 <= first p50 * {DEEP_MARGIN} + {DEEP_SLACK_MS} ms",
                },
                "results": [asdict(r) for r in results],
                "passed": all(r.ok for r in results),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
