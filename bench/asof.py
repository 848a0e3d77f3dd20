"""Time-travel benchmark: `?as_of=` and `/history` on a 10,000,000-event journal, over HTTP.

    .venv/bin/python -m bench.asof            # loads 10M events (tens of minutes), measures, drops
    .venv/bin/python -m bench.asof --keep     # keep the loaded database (then --reuse)
    .venv/bin/python -m bench.asof --reuse    # measure on the database a --keep run left

What it measures, against a real `paxos-events serve --no-background` (bench/feed.py's
`serving`), one request at a time after a warm-up, p50/p95/p99 over ROUNDS requests:

- `GET /identities/{id}?as_of=T` on identities with 10 events and with 200 events (as_of after
  the last, so every event is folded);
- the same with `known_at` too;
- `GET /identities/{id}/history?limit=1000` on the 200-event identities (every entry, with its
  state and changes, in one page).

Targets (issue #18): p95 <= 5 ms (10 events), <= 20 ms (200 events), history of 200 events
<= 30 ms. It also prints the EXPLAIN (ANALYZE, BUFFERS) of the store's statement for each size,
to show the reads go through the events table's identity index and the journal's unique key.

The data: 10,000,000 full events (journal `event` rows and their `fetched` events rows,
INSERT ... SELECT generate_series in chunks): 60% identity events over 600,000 identities
(10 each), 40% transfer events; among them, spread over the whole journal, 5 identities
with exactly 200 events and 5 with exactly 10; each identity event's type drawn at random from
eight (status changes, documents, KYC refreshes, controls created and deleted). Times on 31 ms
steps with nanoseconds.
`VACUUM ANALYZE` runs before measuring. About 20 GB on disk: check `df -h` first.

Results go to stdout and bench/results/asof.json. The database is the embedded server under
.data/bench unless BENCH_DATABASE_URL names another; `bench_asof` is created on it and dropped
at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.database import drop, kept_or_recreated, load_events, server_url
from bench.feed import HEADERS, machine, percentiles, serving
from service.db.engine import plain_url
from service.store.projections.history import STATEMENTS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "asof.json"
DATABASE = "bench_asof"
EVENTS = 10_000_000
CHUNK = 100_000
ROUNDS = 300
TARGETS_MS = {"as_of_10": 5.0, "as_of_200": 20.0, "history_200": 30.0}
FREE_GB_NEEDED = 40

# Who event i is about: 5 identities with 200 events (i % 50,000 in 7..11, spread over the
# journal), 5 with 10 (i % 1,000,000 in 13..17), else an ordinary identity (6 in 10) or a
# transfer (4 in 10).
_LOAD = """
WITH g AS (
    SELECT gen_random_uuid() AS eid, i,
           CASE WHEN i % 50000 BETWEEN 7 AND 11 THEN 'bench-200-' || (i % 50000 - 7)
                WHEN i % 1000000 BETWEEN 13 AND 17 THEN 'bench-10-' || (i % 1000000 - 13)
                WHEN i % 10 < 6 THEN 'idt-' || (i % 1000000)
           END AS ident,
           to_char(timestamp '2025-01-01' + i * interval '31 ms', 'YYYY-MM-DD"T"HH24:MI:SS.US')
               || lpad((i % 1000)::text, 3, '0') || 'Z' AS created_at,
           timestamptz '2025-01-01' + i * interval '31 ms' AS t
    FROM generate_series($1::bigint, $2::bigint) i
), typed AS (
    SELECT g.*,
           CASE WHEN ident IS NULL
                THEN (ARRAY['transfer.crypto_deposit.pending', 'transfer.crypto_deposit.completed',
                            'transfer.wire_withdrawal.pending', 'transfer.wire_withdrawal.completed'
                           ])[i % 4 + 1]
                ELSE (ARRAY['identity.documents_required', 'identity.denied',
                            'identity.approved', 'identity.kyc_refresh.started',
                            'identity.kyc_refresh.completed', 'identity.control.created',
                            'identity.control.deleted', 'identity.approved']
                     )[get_byte(uuid_send(eid), 0) % 8 + 1]
           END AS type
    FROM g
), body AS (
    SELECT typed.*, json_build_object(
        'id', eid, 'type', type, 'object_type', split_part(type, '.', 1),
        'object', CASE WHEN ident IS NULL THEN json_build_object(
                'id', 'trf-' || (i / 10 % 2000000), 'type', 'CRYPTO_DEPOSIT',
                'status', CASE WHEN type LIKE '%.pending' THEN 'PENDING' ELSE 'COMPLETED' END,
                'profile_id', 'prf-' || (i % 100000), 'ref_id', 'ref-' || i,
                'crypto_network', 'ETHEREUM', 'crypto_tx_hash', md5(eid::text))
            ELSE json_build_object(
                'id', gen_random_uuid(), 'identity_id', ident,
                'old_summary_status', 'PENDING',
                'new_summary_status', CASE type WHEN 'identity.denied' THEN 'DENIED'
                                                WHEN 'identity.approved' THEN 'APPROVED' END,
                'required_documents', json_build_array('PASSPORT', 'PROOF_OF_RESIDENCY'),
                'control_id', 'ctl-' || (i % 3), 'control_type', 'FROZEN', 'set_by', 'PAXOS',
                'is_overridable', true, 'reason_code', 'FRAUD_REVIEW',
                'last_kyc_refresh_date', created_at,
                'next_kyc_refresh_date', '2027-01-07T00:00:00Z')
            END,
        'created_at', created_at, 'undelivered_webhooks', 0) AS b
    FROM typed
), ev AS (
    INSERT INTO events (event_id, type, source, time, object, is_test, confirmed_is_test,
                        status, via, deliveries, first_received_at, last_received_at,
                        fetched_at, identity_id, object_type, undelivered_webhooks, object_id)
    SELECT eid, type, 'com.paxos', t, 'event', false, false, 'fetched',
           CASE WHEN i % 20 = 0 THEN 'list_events' ELSE 'webhook' END,
           CASE WHEN i % 20 = 0 THEN 0 ELSE 1 END, t, t, t, ident, split_part(type, '.', 1), 0,
           CASE WHEN type LIKE 'transfer.%' OR type LIKE 'orchestration.%'
                THEN b -> 'object' ->> 'id' END
    FROM body
)
INSERT INTO journal (event_id, kind, body)
SELECT eid, 'event', b FROM body ORDER BY i
"""

TEN = [f"bench-10-{k}" for k in range(5)]
TWO_HUNDRED = [f"bench-200-{k}" for k in range(5)]
AS_OF = "2030-01-01T00:00:00Z"  # after every event: all of them are folded
KNOWN_AT = "2099-01-01T00:00:00Z"


async def timed(http: httpx.AsyncClient, url: str, params: dict[str, Any], expect: int) -> float:
    started = time.perf_counter()
    response = await http.get(url, params=params, headers=HEADERS)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    body = response.json()
    count = len(body["items"]) if "items" in body else body["events_count"]
    if count != expect:
        raise RuntimeError(f"{url}: {count} events or entries, expected {expect}")
    return elapsed


async def measure(
    base: str, subjects: list[str], suffix: str, params: dict[str, Any], expect: int
) -> dict[str, float]:
    """p50/p95/p99/max in ms over ROUNDS requests, round-robin over `subjects`, after a warm-up
    of one request per subject."""
    async with httpx.AsyncClient(timeout=30) as http:
        for s in subjects:
            await timed(http, f"{base}/identities/{s}{suffix}", params, expect)
        times = [
            await timed(
                http, f"{base}/identities/{subjects[n % len(subjects)]}{suffix}", params, expect
            )
            for n in range(ROUNDS)
        ]
    return {k: round(v, 2) for k, v in percentiles(times).items()}


async def explain(url: str, identity_id: str) -> str:
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + STATEMENTS["identities"], identity_id
        )
        return "\n".join(r[0] for r in rows)
    finally:
        await conn.close()


def occurrences(events: int, modulus: int, remainder: int) -> int:
    """How many of 1..events leave `remainder` divided by `modulus`: a subject's events."""
    return (events - remainder) // modulus + 1 if events >= remainder else 0


async def load(url: str, events: int) -> None:
    print(f"loading {events:,} events (journal and events rows) ...", flush=True)
    started = time.perf_counter()
    await load_events(url, _LOAD, events, CHUNK)
    print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)


async def main(server: str, reuse: bool, keep: bool, events: int) -> None:
    free_gb = shutil.disk_usage(ROOT).free / 1e9
    ten, two_hundred = occurrences(events, 1_000_000, 13), occurrences(events, 50_000, 7)
    url, kept = await kept_or_recreated(server, DATABASE, reuse)
    try:
        if not kept:
            needed = FREE_GB_NEEDED * events / EVENTS
            if free_gb < needed:
                raise SystemExit(f"{free_gb:.0f} GB free; the load needs {needed:.0f}")
            await load(url, events)
        plans = {s: await explain(url, s) for s in (TEN[0], TWO_HUNDRED[0])}
        logs = Path(tempfile.mkdtemp(prefix="bench-asof-"))
        with serving(url, logs, "asof") as serve:
            load_before = os.getloadavg()[0]
            figures = {
                # For reference: a plain indexed read of the same 10 events (GET .../events),
                # what the server answers at best on this machine at this moment.
                "events_10_reference": await measure(
                    serve.base, TEN, "/events", {"limit": 100}, ten
                ),
                "as_of_10": await measure(serve.base, TEN, "", {"as_of": AS_OF}, ten),
                "as_of_200": await measure(
                    serve.base, TWO_HUNDRED, "", {"as_of": AS_OF}, two_hundred
                ),
                "as_of_known_at_200": await measure(
                    serve.base,
                    TWO_HUNDRED,
                    "",
                    {"as_of": AS_OF, "known_at": KNOWN_AT},
                    two_hundred,
                ),
                "history_200": await measure(
                    serve.base, TWO_HUNDRED, "/history", {"limit": 1000}, two_hundred
                ),
            }
            load_after = os.getloadavg()[0]
    finally:
        if not keep:
            await drop(server, DATABASE)
            print(f"dropped database {DATABASE}")
    ok = {name: figures[name]["p95"] <= target for name, target in TARGETS_MS.items()}
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "events": events,
        "subject_events": {"ten": ten, "two_hundred": two_hundred},
        "rounds": ROUNDS,
        "load_average_1m": {"before": load_before, "after": load_after},
        "figures_ms": figures,
        "targets_p95_ms": TARGETS_MS,
        "plans": plans,
        "ok": all(ok.values()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for name, plan in plans.items():
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) of {name}'s events:\n{plan}")
    print(
        f"\n{events:,} events, {ROUNDS} requests each, over HTTP (1-minute load "
        f"{load_before:.2f} before, {load_after:.2f} after):"
    )
    for name, f in figures.items():
        target = TARGETS_MS.get(name)
        verdict = (
            ""
            if target is None
            else f"  (target p95 <= {target} ms: " + ("ok)" if ok[name] else "MISSED)")
        )
        print(
            f"  {name:<20} p50 {f['p50']:6.2f}  p95 {f['p95']:6.2f}  p99 {f['p99']:6.2f} ms"
            f"{verdict}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="measure a kept database")
    parser.add_argument("--keep", action="store_true", help="keep the database for --reuse")
    parser.add_argument("--events", type=int, default=EVENTS, help="a smaller load, to try it")
    args = parser.parse_args()
    asyncio.run(main(server_url(), args.reuse, args.keep, args.events))
