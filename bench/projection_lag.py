"""Projection lag benchmark: from a fetched event to the `identities` projection, at load.

What it measures, in one run: `paxos-events serve` (fetcher and projector in-process) against
a simulator subprocess, fed webhooks at a steady rate (default 100/s for 20 s after 2 s of
warm-up, open loop). A poller samples the `identities` checkpoint every 20 ms; for every
journal `event` row, the lag is the first sample whose checkpoint has passed the row, minus
the row's `recorded_at` (the fetch's transaction), both on the database's clock. The poll
interval bounds the error (an over-estimate of at most 20 ms). Target: p95 ≤ 1 s.

Run: `.venv/bin/python -m bench.projection_lag [--rate R] [--duration S]`. Results also go
to `bench/results/projection_lag.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.database import server_url
from bench.fetch import (
    CLI,
    INTAKE_PATH,
    UNLIMITED_RATE,
    UNTIL,
    fresh_database,
    percentiles,
    send_paced,
    service_env,
    start_simulator,
)
from bench.ingest import (
    Row,
    machine,
    servers,
    start_server,
    table,
    verdict,
    wait_until_up,
)
from service.db.engine import plain_url
from service.simulator.commands import build_universe

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "projection_lag.json"
TARGET_P95_MS = 1000.0
SAMPLE_S = 0.02

_SAMPLE = """
    SELECT extract(epoch FROM clock_timestamp())::float8 AS at,
           xid::text::numeric AS xid, position
    FROM projection_checkpoints WHERE name = 'identities'
"""
_EVENTS = """
    SELECT extract(epoch FROM recorded_at)::float8 AS at, xid::text::numeric AS xid, position
    FROM journal WHERE kind = 'event' ORDER BY xid, position
"""


async def sample(url: str, stop: asyncio.Event, into: list[tuple[float, int, int]]) -> None:
    """Record (time, checkpoint xid, checkpoint position) every SAMPLE_S until `stop`."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        while not stop.is_set():
            row = await conn.fetchrow(_SAMPLE)
            if row is not None:
                into.append((row["at"], int(row["xid"]), row["position"]))
            await asyncio.sleep(SAMPLE_S)
    finally:
        await conn.close()


async def run(
    url: str, intake: str, notifications: list[dict[str, Any]], rate: float, settle_s: float
) -> tuple[list[tuple[float, int, int]], list[Any], list[Any]]:
    samples: list[tuple[float, int, int]] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(sample(url, stop, samples))
    sent = await send_paced(intake, notifications, rate)
    # Let the last fetches and their projection land before the poller stops.
    conn = await asyncpg.connect(plain_url(url))
    try:
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            waiting = await conn.fetchval("SELECT count(*) FROM events WHERE status = 'pending'")
            behind = await conn.fetchval(
                "SELECT count(*) FROM journal j, projection_checkpoints c "
                "WHERE c.name = 'identities' AND j.kind = 'event' "
                "AND (j.xid, j.position) > (c.xid, c.position)"
            )
            if not waiting and not behind:
                break
            await asyncio.sleep(0.1)
        journal = await conn.fetch(_EVENTS)
    finally:
        await conn.close()
    await asyncio.sleep(SAMPLE_S * 2)
    stop.set()
    await poller
    return samples, sent, list(journal)


def lags_ms(samples: list[tuple[float, int, int]], journal: list[Any]) -> list[float]:
    """For each journal row: first sample at or past it, minus when it was recorded."""
    keys = [(x, p) for _, x, p in samples]
    lags = []
    # Checkpoints only move forward, so the samples are sorted by (xid, position) too.
    for row in journal:
        i = bisect.bisect_left(keys, (int(row["xid"]), row["position"]))
        if i < len(samples):
            lags.append((samples[i][0] - row["at"]) * 1000)
    return lags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    args = parser.parse_args(argv)

    admin_url = server_url()
    url = asyncio.run(fresh_database(admin_url))
    warm = int(args.warmup * args.rate)
    total = warm + int(args.duration * args.rate)
    notifications = build_universe(total, 0.0, 404, UNTIL).notifications()
    logs = Path(tempfile.mkdtemp(prefix="bench-projection-lag-"))
    with servers() as running:
        simulator = start_simulator(
            logs, "simulator", events=total, seed=404, rate=UNLIMITED_RATE, latency_s=0.02
        )
        running.append(simulator)
        wait_until_up(simulator, "/_simulator/stats")
        serve = start_server("serve", [CLI, "serve"], service_env(url, simulator, 1000.0), logs)
        running.append(serve)
        wait_until_up(serve, "/health/ready")
        print(
            f"{args.rate:g} webhooks/s for {args.warmup:g} + {args.duration:g} s into serve ...",
            flush=True,
        )
        samples, sent, journal = asyncio.run(
            run(url, serve.url + INTAKE_PATH, notifications, args.rate, 60.0)
        )
    accepted = sum(1 for s in sent if str(s.status).startswith("2"))
    measured = lags_ms(samples, journal[warm:]) if len(journal) > warm else []
    stats = percentiles(measured)
    projected = len(lags_ms(samples, journal))
    rows = [
        Row(
            "webhooks sent / 2xx",
            f"{len(sent):,} / {accepted:,}",
            "all 2xx",
            verdict(accepted == len(sent)),
        ),
        Row(
            "events fetched / projected",
            f"{len(journal):,} / {projected:,}",
            "all",
            verdict(len(journal) == accepted == projected),
        ),
        Row("lag fetch -> projection p50", f"{stats.get('p50', float('nan')):.0f} ms", "", "info"),
        Row(
            "lag fetch -> projection p95",
            f"{stats.get('p95', float('nan')):.0f} ms",
            f"<= {TARGET_P95_MS:.0f} ms",
            verdict(stats.get("p95", 1e9) <= TARGET_P95_MS),
        ),
        Row(
            "lag p99 / max",
            f"{stats.get('p99', float('nan')):.0f} / {stats.get('max', float('nan')):.0f} ms",
            "",
            "info",
        ),
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    print(
        f"\nprojection lag benchmark, {when}; {info['nproc']} cores, {info['cpu']}, "
        f"Python {info['python']}; samples every {SAMPLE_S * 1000:.0f} ms"
    )
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": when,
                "machine": info,
                "rate": args.rate,
                "duration_s": args.duration,
                "sent": len(sent),
                "accepted": accepted,
                "fetched": len(journal),
                "lag_ms": stats,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if all(r.result != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
