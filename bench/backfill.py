"""Backfill benchmark: List Events over a window, at Paxos's rate limit.

What it measures, in one run:

- a backfill of N events (default 100,000; 100 per page) from a simulator subprocess
  (`paxos-events simulate api`, its own API limit set above ours), with the real command
  `paxos-events backfill --since ... --until ...` at `PAXOS_API_RPS=50`: wall time from start
  to exit, process start-up and the token request included;
- the floor the rate limit sets: pages ÷ rate (the pages counted by the simulator);
- their ratio (target ≤ 1.2), and a check that the store then holds exactly N events.

Run: `.venv/bin/python -m bench.backfill [--events N] [--rps R]`. Results also go to
`bench/results/backfill.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import database
from bench.database import server_url
from bench.fetch import CLI, SIM_CLIENT_ID, SIM_CLIENT_SECRET, UNTIL, start_simulator
from bench.ingest import Row, machine, server_env, table, verdict, wait_until_up
from service.db.engine import plain_url, with_database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "backfill.json"
DATABASE = "bench_backfill"
TARGET_RATIO = 1.2


async def fresh_database(admin_url: str) -> str:
    """A fresh, migrated bench database; the server's version."""
    url = await database.recreate(admin_url, DATABASE)
    conn = await asyncpg.connect(plain_url(url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def stored(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch("SELECT via, count(*) AS n FROM events GROUP BY via")
    finally:
        await conn.close()
    return {r["via"]: r["n"] for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    args = parser.parse_args(argv)

    admin_url = server_url()
    version = asyncio.run(fresh_database(admin_url))
    url = with_database(admin_url, DATABASE)
    logs = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    simulator = start_simulator(
        logs, "simulator", events=args.events, seed=7, rate=args.rps * 4, latency_s=0.0
    )
    try:
        wait_until_up(simulator, "/_simulator/stats", timeout_s=120)
        env = server_env(url, 8000)  # the backfill command serves nothing
        env.update(
            PAXOS_API_URL=simulator.url + "/v2",
            PAXOS_TOKEN_URL=simulator.url + "/oauth2/token",
            PAXOS_CLIENT_ID=SIM_CLIENT_ID,
            PAXOS_CLIENT_SECRET=SIM_CLIENT_SECRET,
            PAXOS_API_RPS=f"{args.rps:g}",
        )
        since = UNTIL - timedelta(hours=24)
        command = [
            CLI,
            "backfill",
            "--since",
            since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "--until",
            UNTIL.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ]
        print(f"backfill of {args.events:,} events at PAXOS_API_RPS={args.rps:g} ...", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, cwd=ROOT, check=False
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        stats = httpx.get(simulator.url + "/_simulator/stats", timeout=10).json()
    finally:
        simulator.stop()
    by_status = stats["by_status"]
    pages = sum(n for key, n in by_status.items() if key.startswith("list_events "))
    throttled = by_status.get("list_events 429", 0)
    floor = pages / args.rps
    ratio = wall / floor
    held = asyncio.run(stored(url))
    if not args.keep:
        asyncio.run(database.drop(admin_url, DATABASE))

    rows = [
        Row(
            "events backfilled",
            f"{sum(held.values()):,}",
            f"{args.events:,}",
            verdict(sum(held.values()) == args.events),
        ),
        Row("List Events calls (pages)", f"{pages:,}", "", "info"),
        Row("429s from Paxos", str(throttled), "0", verdict(throttled == 0)),
        Row("wall time", f"{wall:.1f} s", "", "info"),
        Row("floor: pages / rate", f"{floor:.1f} s", "", "info"),
        Row(
            "ratio wall / floor",
            f"{ratio:.2f}",
            f"≤ {TARGET_RATIO}",
            verdict(ratio <= TARGET_RATIO),
        ),
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    print(
        f"\nbackfill benchmark, {when}; {info['nproc']} cores, {info['cpu']}, "
        f"Python {info['python']}, PostgreSQL {version}"
    )
    print(table(rows))
    print(done.stdout.strip())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "when": when,
        "machine": info,
        "postgresql": version,
        "events": args.events,
        "rps": args.rps,
        "pages": pages,
        "wall_s": wall,
        "floor_s": floor,
        "ratio": ratio,
        "throttled": throttled,
        "stored": held,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r.result != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
