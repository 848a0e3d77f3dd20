"""Growth benchmark: the same measurements at 1,000,000 and at 10,000,000 events, and bytes.

    .venv/bin/python -m bench.growth                  # ~30 min on 2 quiet cores, ~30 GB
    .venv/bin/python -m bench.growth --small 100000 --large 200000 --runs 20   # a quick try
    .venv/bin/python -m bench.growth --keep           # keep the database (bench_growth)
    .venv/bin/python -m bench.growth --keep --resume --large 3000000   # grow what --keep left
    .venv/bin/python -m bench.growth --alternate 3    # then 1M and that, in turns; drops both
    .venv/bin/python -m bench.growth --report         # the last alternating run's figures again

One database, loaded by SQL (`INSERT .. SELECT generate_series`, chunks of 100,000 events,
the schema's real indexes kept up to date as a live journal's are): events arrive at the same
rate throughout, a year per 1,000,000 events, so growing to 10,000,000 adds nine more years
of history. Each event as the intake and the fetcher leave it: an `events` row (about 60
types, 5% test events, 97% fetched, identity ids on identity events: bench.query's mix), its
notification in the journal (98%: the rest came from List Events), and for fetched events
the full event (about 960 bytes of JSON) in the journal (and, before migration 0018, in
`events.detail`).

At each size, the same figures, each by the measuring function of its own benchmark:

- `/events` p95 for every filter case of bench.query (`bench.query.run`: first page and
  5,000 deep, through `service.store.events.list_events`);
- rebuild of `identities` from the whole journal, events/s (`service.projections.rebuild`);
- feed catch-up over the newest 1,000,000 events, events/s (bench.feed: a real `serve`, JSON
  pages of 1,000), and that server's RSS after it;
- export of the newest year (1,000,000 events) by the real CLI, events/s and peak RSS
  (bench.export);
- sealing the next 2,000,000 rows not yet sealed (the same work at each size), and `verify`
  of the whole sealed chain, rows/s;
- bytes on disk per event: each table's heap, TOAST and indexes (and each index), from
  `pg_relation_size`, `pg_total_relation_size`, `pg_indexes_size` after `VACUUM ANALYZE`.

Targets (issue #20): query p95 at 10M <= 1.2x at 1M; rebuild and export rate at 10M >= 0.8x
at 1M; memory flat (export peak RSS and the server's RSS at 10M <= 1.2x at 1M). Every figure
is printed with the 1-minute load average when it was taken (the machine is shared). Results
go to stdout and bench/results/growth.json. The database is the embedded server under
.data/bench unless BENCH_DATABASE_URL names another; `bench_growth` is dropped at the end
unless `--keep`. Check `df -h` first: 10,000,000 events take about 26 GB (2,604 bytes each
since migration 0018), and load at about 7,700-10,000 events/s on 2 quiet cores (2026-12-05:
20 minutes; hours beside other work). A run stopped while it grows (`--keep`) is continued
by `--resume`, which measures at `--large` what the first run measured at `--small`, and
anything it had not measured there yet. On a shared machine the load differs from one size's
measurement to the other's: `--alternate N` runs the query cases, the rebuild and the export
on a database of `--small` events and on the kept one in turns, N rounds
(bench/results/growth-alternating.json), and judges the targets on the median of the rounds:
the figure of record (`make bench-growth` runs both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench import audit, export, feed, query
from bench.database import drop, kept_or_recreated, load_events, recreate, server_url
from service.db.engine import create_engine, plain_url
from service.projections.rebuild import rebuild
from service.store.audit.seals import horizon, seal_next
from service.store.audit.verify import verify
from service.store.projections.registry import IDENTITIES

DATABASE = "bench_growth"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "growth.json"
ALTERNATING = RESULTS.with_name("growth-alternating.json")
EXPORT_FIGURES = ("events_per_s", "peak_rss_mb")
CHUNK = 100_000
PER_YEAR = 1_000_000  # events a year: a window of this many is what catch-up and export read
SECONDS_PER_EVENT = 365 * 24 * 3600 / PER_YEAR
START = query.START
TARGETS = {
    "query_p95_over": 1.2,
    "rebuild_rate_over": 0.8,
    "export_rate_over": 0.8,
    "rss_over": 1.2,
}
FREE_GB_NEEDED = 50
# Rows sealed at each size: about what the first million events' journal holds.
SEAL_ROWS = 2_000_000

# The tables whose size grows with the journal: its own, the events, the seals (40 bytes of
# digest per row) and the projections (by subject: bench.query's 100,000 identities; the
# rebuild measured is of identities, so the others stay as the run leaves them).
TABLES = (
    "journal",
    "events",
    "seals",
    "identities",
    "identity_controls",
    "transfers",
    "orchestrations",
)

# One chunk of events $1..$2, in time order (the time of event i is fixed by i, so growing the
# journal adds later years). $3: bench.query's type slots. The full event carries every field
# the projections read, whatever its type, as Paxos's do (about 960 bytes of JSON).
_LOAD = """
WITH g AS (
    SELECT i, gen_random_uuid() AS eid,
           $4::timestamptz + make_interval(secs => floor(i * $5::float8)) AS t,
           ($3::text[])[1 + floor(random() * cardinality($3::text[]))::int] AS type,
           random() < 0.05 AS is_test, random() AS r_status, random() AS r_identity,
           random() AS r_via
    FROM generate_series($1::bigint, $2::bigint) i
), e AS (
    SELECT g.*,
           CASE WHEN r_status < 0.970 THEN 'fetched' WHEN r_status < 0.985 THEN 'pending'
                WHEN r_status < 0.995 THEN 'failed' ELSE 'not_found' END AS status,
           CASE WHEN type LIKE 'identity.%' THEN '00000000-0000-4000-8000-'
                || lpad(to_hex(floor(100000 * r_identity ^ 2)::int), 12, '0') END AS identity_id,
           CASE WHEN type LIKE 'identity.kyc_refresh.%' THEN 'identity_kyc_refresh'
                WHEN type LIKE 'identity.control.%' THEN 'identity_control'
                WHEN type = 'identity.documents_required' THEN 'identity_documents_required'
                WHEN type LIKE 'identity.%' THEN 'identity_summary_status_change'
                WHEN type LIKE 'transfer.%' THEN 'transfer_status_change'
                WHEN type LIKE 'orchestration.%' THEN 'orchestration_status_change' END
               AS object_type,
           r_via < 0.02 AS listed,
           to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS at
    FROM g
), body AS (
    SELECT e.*, json_build_object(
        'id', eid, 'type', type, 'source', 'com.paxos', 'is_test', is_test,
        'created_at', at || lpad((i % 1000)::text, 3, '0') || 'Z',
        'object_type', object_type,
        'object', json_build_object(
            'id', gen_random_uuid(), 'identity_id', identity_id,
            'profile_id', gen_random_uuid(), 'ref_id', 'ref-' || i,
            'status', 'COMPLETED',
            'old_summary_status', 'PENDING', 'new_summary_status', 'APPROVED',
            'required_documents', json_build_array('PASSPORT', 'PROOF_OF_RESIDENCY'),
            'control_id', 'ctl-' || (i % 7), 'control_type', 'FROZEN', 'set_by', 'PAXOS',
            'is_overridable', true, 'reason_code', 'FRAUD_REVIEW',
            'last_kyc_refresh_date', '2024-01-07T00:00:00Z',
            'next_kyc_refresh_date', '2026-01-07T00:00:00Z',
            'amount', (i % 9973)::text || '.25', 'asset', 'USD', 'crypto_network', 'ETHEREUM',
            'crypto_tx_hash', md5(eid::text) || md5(type)),
        'undelivered_webhooks', 0) AS b,
        json_build_object(
        'id', eid, 'type', type, 'source', 'com.paxos', 'object', 'event',
        'time', at || 'Z', 'is_test', is_test) AS note
    FROM e
), ev AS (
    INSERT INTO events (
        event_id, type, source, time, object, is_test, confirmed_is_test, status, via,
        deliveries, first_received_at, last_received_at, receipt_times, fetched_at, attempts,
        last_error, identity_id, object_type, undelivered_webhooks{detail_column})
    SELECT eid, type, 'com.paxos', t, 'event', is_test,
           CASE WHEN status = 'fetched' THEN is_test END, status,
           CASE WHEN listed THEN 'list_events' ELSE 'webhook' END,
           CASE WHEN listed THEN 0 ELSE 1 END,
           CASE WHEN NOT listed THEN t + interval '0.3 s' END,
           CASE WHEN NOT listed THEN t + interval '0.3 s' END,
           CASE WHEN NOT listed THEN ARRAY[t + interval '0.3 s'] END,
           CASE WHEN status = 'fetched' THEN t + interval '1 s' END,
           CASE WHEN status = 'pending' THEN 0 WHEN status = 'fetched' THEN 1 ELSE 8 END,
           CASE WHEN status = 'failed' THEN 'HTTP 500 from Get Event'
                WHEN status = 'not_found' THEN 'HTTP 404 from Get Event' END,
           CASE WHEN status = 'fetched' THEN identity_id END,
           CASE WHEN status = 'fetched' THEN object_type END,
           CASE WHEN status = 'fetched' THEN 0 END{detail_value}
    FROM body
)
INSERT INTO journal (event_id, kind, body)
SELECT eid, kind, body FROM (
    SELECT eid, 'notification' AS kind, note AS body, i, 0 AS k FROM body WHERE NOT listed
    UNION ALL
    SELECT eid, 'event', b, i, 1 FROM body WHERE status = 'fetched'
) rows
ORDER BY i / 100, k, i
"""


def load_statement(has_detail: bool, has_object_id: bool = False) -> str:
    """The chunk statement for the schema at hand: `events.detail` (before migration 0018) or
    `events.object_id` (since) filled where the schema has it."""
    columns = ", detail" * has_detail + ", object_id" * has_object_id
    values = ",\n           CASE WHEN status = 'fetched' THEN b::jsonb END" * has_detail + (
        ",\n           CASE WHEN status = 'fetched' AND (type LIKE 'transfer.%' OR type LIKE "
        "'orchestration.%') THEN b -> 'object' ->> 'id' END" * has_object_id
    )
    return _LOAD.replace("{detail_column}", columns).replace("{detail_value}", values)


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def newest(last_event: int) -> int:
    """The number of the first of the newest PER_YEAR events (the window catch-up and export
    read: the same size at every size of the journal, all of it in a smaller trial run)."""
    return max(1, last_event - PER_YEAR + 1)


def time_of(i: int) -> datetime:
    """Event i's time (the load's)."""
    return START + timedelta(seconds=i * SECONDS_PER_EVENT)


def year_of(last_event: int) -> tuple[str, str]:
    """The newest PER_YEAR events' time window [since, until), as the export CLI takes it."""

    def at(i: int) -> str:
        return time_of(i).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return at(newest(last_event)), at(last_event + 1)


async def columns_of(url: str, table: str) -> set[str]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
        return {r["column_name"] for r in rows}
    finally:
        await conn.close()


async def grow(url: str, first: int, last: int) -> dict[str, Any]:
    """Load events first..last; the time it took (the VACUUM ANALYZE at the end included)."""
    columns = await columns_of(url, "events")
    before = load_now()
    started = time.perf_counter()
    args = (query.type_slots(), START, SECONDS_PER_EVENT)
    statement = load_statement("detail" in columns, "object_id" in columns)
    await load_events(url, statement, last, CHUNK, *args, first=first)
    seconds = time.perf_counter() - started
    return {
        "events": last - first + 1,
        "seconds": round(seconds, 1),
        "events_per_s": round((last - first + 1) / seconds),
        "load_1m": [before, load_now()],
    }


async def sizes(url: str, events: int) -> dict[str, Any]:
    """Bytes on disk per event: each table's heap, TOAST and indexes, and each index."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        tables: dict[str, dict[str, Any]] = {}
        for table in TABLES:
            row = await conn.fetchrow(
                "SELECT pg_relation_size($1::regclass) AS heap, "
                "pg_total_relation_size($1::regclass) - pg_relation_size($1::regclass) "
                "- pg_indexes_size($1::regclass) AS toast, "
                "pg_indexes_size($1::regclass) AS indexes, "
                "pg_total_relation_size($1::regclass) AS total",
                table,
            )
            indexes = await conn.fetch(
                "SELECT indexrelname AS name, pg_relation_size(indexrelid) AS bytes "
                "FROM pg_stat_user_indexes WHERE relname = $1 ORDER BY 2 DESC",
                table,
            )
            tables[table] = {
                **{k: int(v) for k, v in row.items()},
                "per_event": {k: round(int(v) / events) for k, v in row.items()},
                "index_per_event": {r["name"]: round(r["bytes"] / events) for r in indexes},
            }
        database = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
    total = sum(t["total"] for t in tables.values())
    return {
        "events": events,
        "tables": tables,
        "total_bytes": total,
        "total_per_event": round(total / events),
        "database_bytes": database,
    }


async def timed_rebuild(url: str) -> dict[str, Any]:
    engine = create_engine(url, pool_size=2)
    before = load_now()
    try:
        started = time.perf_counter()
        result = await rebuild(engine, IDENTITIES)
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    return {
        "events": result.done,
        "seconds": round(seconds, 1),
        "events_per_s": round(result.done / seconds),
        "load_1m": [before, load_now()],
    }


async def position_of(url: str, event_number: int) -> int:
    """The journal position just before the newest `event_number`-th event's rows (the
    feed's `after` for a catch-up over the newest PER_YEAR events)."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        total = int(await conn.fetchval("SELECT max(position) FROM journal"))
        # Rows are appended in event order, about 1.95 per event: read the position from
        # the events themselves rather than guess it.
        position = await conn.fetchval(
            "SELECT min(j.position) - 1 FROM journal j JOIN events e USING (event_id) "
            "WHERE e.time >= $1 AND e.time < $1 + interval '1 hour'",
            time_of(event_number),
        )
        return int(position if position is not None else total)
    finally:
        await conn.close()


async def feed_catch_up(url: str, last_event: int) -> dict[str, Any]:
    start = await position_of(url, newest(last_event))
    logs = Path(tempfile.mkdtemp(prefix="bench-growth-"))
    before = load_now()
    try:
        with feed.serving(url, logs, "catch-up") as serve:
            items, seconds = await feed.catch_up(serve, start)
            rss = serve.rss_mb()
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return {
        "events": items,
        "seconds": round(seconds, 1),
        "events_per_s": round(items / seconds),
        "serve_rss_mb": round(rss, 1),
        "load_1m": [before, load_now()],
    }


def timed_export(url: str, last_event: int) -> dict[str, Any]:
    since, until = year_of(last_event)
    before = load_now()
    result = export.run_export(url, since, until)
    events = result["trailer"]["events"]
    return {
        "since": since,
        "until": until,
        "events": events,
        "seconds": round(result["seconds"], 1),
        "events_per_s": round(events / result["seconds"]),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "load_1m": [before, load_now()],
    }


async def seal_and_verify(url: str) -> dict[str, Any]:
    """Seal the next SEAL_ROWS rows not yet sealed (the same work at every size), then verify
    the whole sealed chain; both timed."""
    engine = create_engine(url, pool_size=2)
    try:
        before = load_now()
        rows = 0
        started = time.perf_counter()
        through = await horizon(engine)
        while through is not None and rows < SEAL_ROWS:
            seal = await seal_next(engine, through)
            if seal is None:
                break
            rows += seal.row_count
        seal_s = time.perf_counter() - started
        middle = load_now()
        started = time.perf_counter()
        report = await verify(engine, 10 * 24 * 3600, record=False)
        verify_s = time.perf_counter() - started
    finally:
        await engine.dispose()
    if not report.ok:
        raise SystemExit(f"verify found problems: {report.problems[:3]}")
    return {
        "sealed_rows": rows,
        "seal_s": round(seal_s, 1),
        "seal_rows_per_s": round(rows / seal_s) if seal_s else None,
        "verified_rows": report.rows_checked,
        "verify_s": round(verify_s, 1),
        "verify_rows_per_s": round(report.rows_checked / verify_s),
        "load_1m": [before, middle, load_now()],
    }


async def measure(
    url: str, events: int, runs: int, figures: dict[str, Any], save: Callable[[], None]
) -> dict[str, Any]:
    """Every figure at the database's present size, `events`, into `figures`, but those it
    holds already (saved after each, so a run stopped part way keeps what it measured)."""
    figures["events"] = events

    async def queries() -> dict[str, Any]:
        before = load_now()
        results = await query.run(url, runs, show_plans=False)
        return {"results": [asdict(r) for r in results], "load_1m": [before, load_now()]}

    stages: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "queries": queries,
        "rebuild": lambda: timed_rebuild(url),
        "feed": lambda: feed_catch_up(url, events),
        "export": lambda: asyncio.to_thread(timed_export, url, events),
        "audit": lambda: seal_and_verify(url),
        # Last: the projections as the rebuild left them, the seals as sealing did.
        "sizes": lambda: sizes(url, events),
    }
    for name, stage in stages.items():
        if name not in figures:
            print(f"\n== {events:,} events: {name}", flush=True)
            figures[name] = await stage()
            save()
    return figures


def worst_p95(figures: dict[str, Any]) -> dict[str, float]:
    """Each case's worse p95 of its first and deep page."""
    return {
        r["case"]: max(p for p in (r["first_p95_ms"], r["deep_p95_ms"]) if p is not None)
        for r in figures["queries"]["results"]
    }


def compare(small: dict[str, Any], large: dict[str, Any]) -> tuple[list[str], bool]:
    """The printed comparison, one line per figure, and whether every target was met."""
    lines, ok = [], True

    def line(name: str, a: float, b: float, unit: str, target: str, passed: bool | None) -> None:
        nonlocal ok
        ratio = b / a if a else float("nan")
        verdict = "" if passed is None else ("ok" if passed else "MISSED")
        ok = ok and passed is not False
        lines.append(
            f"{name:48} {a:>12,.2f} {b:>12,.2f} {unit:9} {ratio:6.2f}x  {target:10} {verdict}"
        )

    lines.append(
        f"{'figure':48} {small['events']:>12,} {large['events']:>12,} {'':9} {'ratio':>7}  target"
    )
    q_small, q_large = worst_p95(small), worst_p95(large)
    for case, p95 in q_small.items():
        limit = TARGETS["query_p95_over"]
        line(f"p95 {case}", p95, q_large[case], "ms", f"<= {limit}x", q_large[case] <= p95 * limit)
    rate, rss = TARGETS["rebuild_rate_over"], TARGETS["rss_over"]
    both = small.keys() & large.keys()  # the alternating runs measure only some stages
    if "rebuild" in both:
        rs, rl = small["rebuild"]["events_per_s"], large["rebuild"]["events_per_s"]
        line("rebuild identities", rs, rl, "events/s", f">= {rate}x", rl >= rs * rate)
    if "feed" in both:
        fs, fl = small["feed"]["events_per_s"], large["feed"]["events_per_s"]
        line("feed catch-up, newest 1M", fs, fl, "events/s", "", None)
        ms, ml = small["feed"]["serve_rss_mb"], large["feed"]["serve_rss_mb"]
        line("  serve RSS after it", ms, ml, "MB", f"<= {rss}x", ml <= ms * rss)
    if "export" in both:
        xs, xl = small["export"]["events_per_s"], large["export"]["events_per_s"]
        rate = TARGETS["export_rate_over"]
        line("export, newest year", xs, xl, "events/s", f">= {rate}x", xl >= xs * rate)
        ps, pl = small["export"]["peak_rss_mb"], large["export"]["peak_rss_mb"]
        line("  its peak RSS", ps, pl, "MB", f"<= {rss}x", pl <= ps * rss)
    if "audit" in both:
        ss, sl = small["audit"]["seal_rows_per_s"], large["audit"]["seal_rows_per_s"]
        line("sealing 2M rows", ss or 0, sl or 0, "rows/s", "", None)
        vs, vl = small["audit"]["verify_rows_per_s"], large["audit"]["verify_rows_per_s"]
        line("verify (the sealed chain)", vs, vl, "rows/s", "", None)
    if "sizes" in both:
        bs, bl = small["sizes"]["total_per_event"], large["sizes"]["total_per_event"]
        line("bytes per event", bs, bl, "B", "", None)
    return lines, ok


def bytes_table(sizes: dict[str, Any]) -> list[str]:
    lines = [f"{'relation':52} {'bytes/event':>11}"]
    for table, t in sizes["tables"].items():
        per = t["per_event"]
        lines.append(
            f"{table:52} {per['total']:>11,}  (heap {per['heap']:,}, TOAST {per['toast']:,}, "
            f"indexes {per['indexes']:,})"
        )
        for name, b in t["index_per_event"].items():
            lines.append(f"  {name:50} {b:>11,}")
    lines.append(f"{'total':52} {sizes['total_per_event']:>11,}")
    return lines


async def unsealed(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        await audit.unseal(engine)
    finally:
        await engine.dispose()


async def alternate(server: str, small: int, runs: int, rounds: int, keep: bool) -> None:
    """The query cases, the rebuild and the export on a database of `small` events and on
    the one a `--keep` run left (bench_growth), taking turns `rounds` times: one machine, one
    hour, so the load others put on the machine falls on both alike. Loads the small one
    (`bench_growth_small`) unless it holds `small` events; drops both at the end unless
    `keep`."""
    large_url, kept = await kept_or_recreated(server, DATABASE, reuse=True)
    if not kept:
        raise SystemExit(f"no {DATABASE}: run with --keep first")
    small_url, kept = await kept_or_recreated(server, f"{DATABASE}_small", reuse=True)
    if not kept or await event_count(small_url) != small:
        small_url = await recreate(server, f"{DATABASE}_small")
        print(f"loading {small:,} events into {DATABASE}_small ...", flush=True)
        await grow(small_url, 1, small)
    sides = {"small": small_url, "large": large_url}
    taken: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for n in range(rounds):
        for side, url in sides.items():
            before = load_now()
            results = await query.run(url, runs, show_plans=False)
            rebuilt = await timed_rebuild(url)
            exported = await asyncio.to_thread(timed_export, url, await event_count(url))
            taken[side].append(
                {
                    "events": await event_count(url),
                    "queries": {
                        "results": [asdict(r) for r in results],
                        "load_1m": [before, load_now()],
                    },
                    "rebuild": rebuilt,
                    "export": exported,
                }
            )
            print(
                f"  round {n + 1}, {side}: rebuild {rebuilt['events_per_s']:,}/s, "
                f"export {exported['events_per_s']:,}/s",
                flush=True,
            )
    ALTERNATING.write_text(
        json.dumps({"machine": query.machine(), "rounds": taken}, indent=2) + "\n"
    )
    if not keep:
        for name in (DATABASE, f"{DATABASE}_small"):
            await drop(server, name)
    print("\n".join(alternating_report(taken)))
    print(f"\nwritten to {ALTERNATING.relative_to(ROOT)}")


def alternating_report(taken: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each round's figures side by side, then the figure of record: for each, the median of
    the rounds at each size, their ratio, and the target (one round's outlier, a neighbour's
    burst, moves a median of three no more than it moves the others)."""
    lines = []
    small, large = taken["small"], taken["large"]
    for n, (a, b) in enumerate(zip(small, large, strict=True)):
        lines.append(f"\nround {n + 1}: {a['events']:,} vs {b['events']:,} events")
        p95s = worst_p95(b)
        for case, p95 in worst_p95(a).items():
            other = p95s[case]
            lines.append(f"  p95 {case:46} {p95:7.2f} {other:7.2f} ms  {other / p95:5.2f}x")
        ra, rb = a["rebuild"]["events_per_s"], b["rebuild"]["events_per_s"]
        lines.append(f"  rebuild identities {ra:>38,} {rb:>7,} /s  {rb / ra:5.2f}x")
        xa, xb = a["export"]["events_per_s"], b["export"]["events_per_s"]
        lines.append(f"  export, newest year {xa:>37,} {xb:>7,} /s  {xb / xa:5.2f}x")
        ma, mb = a["export"]["peak_rss_mb"], b["export"]["peak_rss_mb"]
        lines.append(f"  export peak RSS {ma:>41} {mb:>7} MB {mb / ma:5.2f}x")

    medians: dict[str, dict[str, Any]] = {}
    for side, rounds in (("small", small), ("large", large)):
        p95s = [worst_p95(r) for r in rounds]
        medians[side] = {
            "events": rounds[0]["events"],
            "queries": {
                "results": [
                    {
                        "case": case,
                        "first_p95_ms": statistics.median(p[case] for p in p95s),
                        "deep_p95_ms": None,
                    }
                    for case in p95s[0]
                ]
            },
        }
        for stage, figures in (("rebuild", ("events_per_s",)), ("export", EXPORT_FIGURES)):
            medians[side][stage] = {
                f: statistics.median(r[stage][f] for r in rounds) for f in figures
            }
    table, ok = compare(medians["small"], medians["large"])
    lines += [f"\nmedian of {len(small)} rounds:", *table, "every target met" if ok else "MISSED"]
    return lines


async def event_count(url: str) -> int:
    conn = await asyncpg.connect(plain_url(url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def main(small: int, large: int, runs: int, keep: bool, resume: bool, server: str) -> None:
    free_gb = shutil.disk_usage(ROOT).free / 1e9
    if large >= 5_000_000 and free_gb < FREE_GB_NEEDED and not resume:
        raise SystemExit(f"{free_gb:.0f} GB free: {FREE_GB_NEEDED} GB are needed for {large:,}")
    url, kept = await kept_or_recreated(server, DATABASE, reuse=resume)
    report: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": query.machine(),
        "free_gb_at_start": round(free_gb),
        "targets": TARGETS,
    }

    def save() -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    loaded = 0
    if resume:
        # A kept database whose figures at `small` a last run recorded (stopped while it
        # grew: each chunk is one statement, so what it left is whole chunks).
        report = json.loads(RESULTS.read_text())
        if not kept or "events" not in report.get("small", {}):
            raise SystemExit(f"nothing to resume: no {DATABASE} measured at its smaller size")
        small, loaded = report["small"]["events"], await event_count(url)
        print(f"resuming: {DATABASE} holds {loaded:,} events, measured at {small:,}")
        if loaded == small:  # what was not measured there yet
            if "audit" not in report["small"]:
                await unsealed(url)  # sealing is measured from an unsealed journal
            await measure(url, small, runs, report["small"], save)
        report["large"] = {}

    try:
        if not resume:
            print(f"loading {small:,} events ...", flush=True)
            report["load_small"] = await grow(url, 1, small)
            await measure(url, small, runs, report.setdefault("small", {}), save)
        start = max(small, loaded) + 1
        print(f"\nloading {start:,} .. {large:,} ...", flush=True)
        report["load_large"] = await grow(url, start, large)
        save()
        await measure(url, large, runs, report.setdefault("large", {}), save)
    finally:
        if not keep:
            await drop(server, DATABASE)
    lines, ok = compare(report["small"], report["large"])
    report["ok"] = ok
    save()
    for name in ("load_small", "load_large"):
        ld = report[name]
        print(
            f"load {ld['events']:,} events: {ld['seconds']:,.0f} s ({ld['events_per_s']:,}/s), "
            f"1-minute load {ld['load_1m'][0]} -> {ld['load_1m'][1]}"
        )
    print()
    print("\n".join(lines))
    print(f"\nbytes on disk per event at {large:,}:")
    print("\n".join(bytes_table(report["large"]["sizes"])))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    parser.add_argument("--small", type=int, default=1_000_000, help="events first measured at")
    parser.add_argument("--large", type=int, default=10_000_000, help="events grown to")
    parser.add_argument("--runs", type=int, default=100, help="runs of each query case")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="grow a database a stopped --keep run left, to --large, and measure there",
    )
    parser.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="query cases and rebuild at --small and on what --keep left, taking turns",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help=f"print {ALTERNATING.name}'s figures again, without measuring",
    )
    args = parser.parse_args()
    if args.report:
        print("\n".join(alternating_report(json.loads(ALTERNATING.read_text())["rounds"])))
    elif args.alternate:
        asyncio.run(alternate(server_url(), args.small, args.runs, args.alternate, args.keep))
    else:
        asyncio.run(main(args.small, args.large, args.runs, args.keep, args.resume, server_url()))
