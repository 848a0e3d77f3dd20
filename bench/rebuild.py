"""Rebuild benchmark: `identities` from 1,000,000 journal events over 100,000 identities.

    .venv/bin/python -m bench.rebuild            # loads the journal (a few minutes), then measures
    .venv/bin/python -m bench.rebuild --reuse    # keep the loaded database from a last run

What it measures, in the same run on the same rows:

- a plain sequential read: every journal `event` row (`position`, `event_id`, `body`) in the
  projector's (xid, position) order, through asyncpg to Python, on one connection;
- `service.projections.rebuild.rebuild(engine, IDENTITIES)`, start to end: every journal row
  extracted from its parsed copy (`doc`, written with the row) and staged (on
  `rebuild.WORKERS` connections), folded into the shadow tables, secondary indexes built, and
  the swap.

It reports the rebuild's events/s and its time over the read's. Targets: >= 100,000 events/s
and <= 3x the sequential read. The journal is 1,000,000 identity events, ten per identity,
interleaved in time as they would arrive (an identity's events are spread over the whole
journal, the worst case for batched upserts): documents required, status changes, KYC
refreshes, controls created and deleted. Results go to stdout and bench/results/rebuild.json.
The database is the embedded server under .data/bench unless BENCH_DATABASE_URL names another;
a database `bench_rebuild` is created on it (and kept, for `--reuse`, which migrates it to
head first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.database import kept_or_recreated, load_events, server_url, timed_read
from service.db.engine import create_engine
from service.projections.rebuild import rebuild
from service.store.projections.registry import IDENTITIES

EVENTS = 1_000_000
IDENTITIES_N = 100_000
CHUNK = 100_000
DATABASE = "bench_rebuild"
ROOT = Path(__file__).resolve().parent.parent

# One identity's ten events, by their index in the story.
_LOAD = """
WITH g AS (
    SELECT gen_random_uuid() AS eid, i, i % $3 AS ident, (i / $3) % 10 AS step
    FROM generate_series($1::bigint, $2::bigint) i
), typed AS (
    SELECT g.*, (ARRAY['identity.documents_required', 'identity.denied',
                       'identity.documents_required', 'identity.approved',
                       'identity.kyc_refresh.started', 'identity.kyc_refresh.expired',
                       'identity.kyc_refresh.started', 'identity.kyc_refresh.completed',
                       'identity.control.created', 'identity.control.deleted'])[step + 1] AS type
    FROM g
), ev AS (
    INSERT INTO events (event_id, type, source, time, object, is_test, status, identity_id)
    SELECT eid, type, 'com.paxos', timestamptz '2025-01-01' + i * interval '31 ms', 'event',
           false, 'fetched', 'idt-' || ident
    FROM typed
)
INSERT INTO journal (event_id, kind, body)
SELECT eid, 'event', json_build_object(
    'id', eid, 'type', type, 'object_type', 'x',
    'object', json_build_object(
        'id', gen_random_uuid(), 'identity_id', 'idt-' || ident,
        'old_summary_status', 'PENDING',
        'new_summary_status', CASE type WHEN 'identity.denied' THEN 'DENIED'
                                        WHEN 'identity.approved' THEN 'APPROVED' END,
        'required_documents', json_build_array('PASSPORT', 'PROOF_OF_RESIDENCY'),
        'control_id', 'ctl-' || ident, 'control_type', 'FROZEN', 'set_by', 'PAXOS',
        'is_overridable', true, 'reason_code', 'FRAUD_REVIEW',
        'last_kyc_refresh_date', '2024-01-07T00:00:00Z',
        'next_kyc_refresh_date', '2026-01-07T00:00:00Z'),
    'created_at', to_char(timestamp '2025-01-01' + i * interval '31 ms',
                          'YYYY-MM-DD"T"HH24:MI:SS.US') || lpad((i % 1000)::text, 3, '0') || 'Z',
    'undelivered_webhooks', 0)
FROM typed
"""


# The reference: the rebuild's own read order, with nothing done per row.
SEQUENTIAL_READ = (
    "SELECT position, event_id, body FROM journal WHERE kind = 'event' ORDER BY xid, position"
)


async def main(reuse: bool, server: str) -> None:
    url, exists = await kept_or_recreated(server, DATABASE, reuse)
    engine = create_engine(url, pool_size=2)
    try:
        if not exists:
            print(f"loading {EVENTS:,} journal events over {IDENTITIES_N:,} identities ...")
            await load_events(url, _LOAD, EVENTS, CHUNK, IDENTITIES_N)
        load_before = os.getloadavg()[0]
        rows, read_s = await timed_read(url, SEQUENTIAL_READ)
        started = time.perf_counter()
        result = await rebuild(engine, IDENTITIES)
        rebuild_s = time.perf_counter() - started
        load_after = os.getloadavg()[0]
    finally:
        await engine.dispose()
    rate = result.done / rebuild_s
    ratio = rebuild_s / read_s
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "events": rows,
        "identities": IDENTITIES_N,
        "load_average_1m": {"before": load_before, "after": load_after},
        "sequential_read_s": round(read_s, 2),
        "rebuild_s": round(rebuild_s, 2),
        "rebuild_events_per_s": round(rate),
        "rebuild_over_read": round(ratio, 2),
        "target": {"events_per_s": 100_000, "over_read": 3.0},
        "ok": rate >= 100_000 and ratio <= 3.0,
    }
    out = ROOT / "bench" / "results" / "rebuild.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"rebuild of identities: {rows:,} events in {rebuild_s:.1f} s = {rate:,.0f} events/s; "
        f"sequential read {read_s:.1f} s; ratio {ratio:.2f}x "
        f"(targets >= 100,000/s, <= 3x) -> {'ok' if report['ok'] else 'MISSED'}; "
        f"1-minute load {load_before:.2f} before, {load_after:.2f} after"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    asyncio.run(main(parser.parse_args().reuse, server_url()))
