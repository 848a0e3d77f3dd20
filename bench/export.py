"""Audit export benchmark: `paxos-events export` of 1,000,000 events, peak memory and rate.

    .venv/bin/python -m bench.export            # loads and seals (minutes), then measures
    .venv/bin/python -m bench.export --reuse    # keep the loaded database from a last run

The database holds 1,000,000 fetched events, each with its notification and its full event
in the journal (2,000,000 journal rows, bodies about as large as Paxos's), a third of them
delivered twice. The load is followed by sealing the whole journal (`seal_pending`, timed)
and a full `verify` (timed): the audit trail's other two costs over a journal this size.

The export runs as the real CLI in a subprocess (`python -m service export --since ...
--until ...`, JSON Lines to stdout, read and counted here as it streams), and its peak
resident memory is the kernel's figure for that process (`os.wait4`, ru_maxrss). Target:
<= 150 MB peak RSS. Results go to stdout and bench/results/export.json. The database is the
embedded server under .data/bench unless BENCH_DATABASE_URL names another; a database
`bench_export` is created on it (and kept, for `--reuse`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.database import kept_or_recreated, load_events, server_url
from service.db.engine import create_engine
from service.store.audit.seals import seal_pending
from service.store.audit.verify import verify

EVENTS = 1_000_000
CHUNK = 100_000
DATABASE = "bench_export"
ROOT = Path(__file__).resolve().parent.parent
SINCE, UNTIL = "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"
TARGET_RSS_MB = 150

_LOAD = """
WITH g AS (
    SELECT gen_random_uuid() AS eid, i,
           timestamptz '2025-01-01' + i * interval '31 ms' AS t,
           'idt-' || (i % 100000) AS ident
    FROM generate_series($1::bigint, $2::bigint) i
), ev AS (
    INSERT INTO events (event_id, type, source, time, object, is_test, status, via, deliveries,
                        first_received_at, last_received_at, receipt_times, fetched_at,
                        identity_id, object_type, undelivered_webhooks)
    SELECT eid, 'identity.approved', 'com.paxos', t, 'event', false, 'fetched', 'webhook',
           CASE WHEN i % 3 = 0 THEN 2 ELSE 1 END, t + interval '1 s',
           t + CASE WHEN i % 3 = 0 THEN interval '61 s' ELSE interval '1 s' END,
           CASE WHEN i % 3 = 0 THEN ARRAY[t + interval '1 s', t + interval '61 s']
                ELSE ARRAY[t + interval '1 s'] END,
           t + interval '2 s', ident, 'identity', 0
    FROM g
), notifications AS (
    INSERT INTO journal (event_id, kind, body)
    SELECT eid, 'notification', json_build_object(
        'id', eid, 'type', 'identity.approved', 'source', 'com.paxos',
        'time', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'object', 'event', 'is_test', false)
    FROM g
)
INSERT INTO journal (event_id, kind, body)
SELECT eid, 'event', json_build_object(
    'id', eid, 'type', 'identity.approved', 'object_type', 'identity',
    'object', json_build_object(
        'id', gen_random_uuid(), 'identity_id', ident,
        'old_summary_status', 'PENDING', 'new_summary_status', 'APPROVED',
        'required_documents', json_build_array('PASSPORT', 'PROOF_OF_RESIDENCY'),
        'last_kyc_refresh_date', '2024-01-07T00:00:00Z',
        'next_kyc_refresh_date', '2026-01-07T00:00:00Z'),
    'created_at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '123Z',
    'undelivered_webhooks', 0)
FROM g
"""


HEAD = 65536


def trailer_counts(head: bytes) -> dict[str, Any]:
    """The trailer's fields from the head of its line: all of them if the line is whole, else
    the counts before its covering seals."""
    try:
        return dict(json.loads(head))
    except ValueError:
        found = re.findall(rb'"(events|journal_rows|all_sealed)": *(true|false|\d+)', head)
        return {key.decode(): json.loads(value) for key, value in found}


def run_export(url: str, since: str = SINCE, until: str = UNTIL) -> dict[str, Any]:
    """The CLI export of [since, until) to a pipe, counted as it streams; its peak RSS from
    the kernel."""
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "warning"}
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "service", "export", "--since", since, "--until", until],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    lines = size = 0
    # The first 64 KiB of the line being read, and of the last one read: the trailer's
    # counts come first, then its covering seals (up to 400 KB each).
    head = last = b""
    while chunk := process.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
        size += len(chunk)
        *ended, rest = chunk.split(b"\n")
        for part in ended:
            last, head = (head + part)[:HEAD], b""
        head = (head + rest)[:HEAD]
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export failed: {stderr.strip()}")
    trailer = trailer_counts(last)
    return {
        "seconds": elapsed,
        "lines": lines,
        "bytes": size,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "trailer": trailer,
    }


async def main(reuse: bool, server: str) -> None:
    url, exists = await kept_or_recreated(server, DATABASE, reuse)
    engine = create_engine(url, pool_size=2)
    seal_s = None
    try:
        if not exists:
            print(f"loading {EVENTS:,} events ({2 * EVENTS:,} journal rows) ...", flush=True)
            await load_events(url, _LOAD, EVENTS, CHUNK)
            started = time.perf_counter()
            while await seal_pending(engine):
                pass
            seal_s = time.perf_counter() - started
        started = time.perf_counter()
        report = await verify(engine, 3600, record=False)
        verify_s = time.perf_counter() - started
    finally:
        await engine.dispose()
    if not report.ok:
        raise SystemExit(f"verify found problems: {report.problems[:3]}")
    load_before = os.getloadavg()[0]
    export = run_export(url)
    load_after = os.getloadavg()[0]
    trailer = export["trailer"]
    events = trailer["events"]
    rate = events / export["seconds"]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_1m": {"before": load_before, "after": load_after},
        "events": events,
        "journal_rows": trailer["journal_rows"],
        "export_s": round(export["seconds"], 1),
        "export_events_per_s": round(rate),
        "export_mb": round(export["bytes"] / 1e6),
        "export_peak_rss_mb": round(export["peak_rss_mb"], 1),
        "all_sealed": trailer["all_sealed"],
        "seal_s": None if seal_s is None else round(seal_s, 1),
        "verify_s": round(verify_s, 1),
        "verify_rows_per_s": round(report.rows_checked / verify_s),
        "target": {"peak_rss_mb": TARGET_RSS_MB},
        "ok": export["peak_rss_mb"] <= TARGET_RSS_MB
        and events == EVENTS
        and export["lines"] == EVENTS + 1,
    }
    out = ROOT / "bench" / "results" / "export.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'export (JSON Lines, CLI to a pipe)':<36} {events:,} events")
    print(f"{'  time, rate':<36} {export['seconds']:.1f} s, {rate:,.0f} events/s")
    print(f"{'  size':<36} {export['bytes'] / 1e6:,.0f} MB")
    print(
        f"{'  peak RSS of the export process':<36} {export['peak_rss_mb']:.1f} MB "
        f"(target <= {TARGET_RSS_MB} MB) -> {'ok' if result['ok'] else 'MISSED'}"
    )
    if seal_s is not None:
        print(f"{'sealing the journal':<36} {2 * EVENTS:,} rows in {seal_s:.1f} s")
    print(
        f"{'verify':<36} {report.rows_checked:,} rows in {verify_s:.1f} s "
        f"({result['verify_rows_per_s']:,} rows/s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    asyncio.run(main(parser.parse_args().reuse, server_url()))
