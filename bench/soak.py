"""Soak: a real `serve` (intake, fetcher, projector) at a steady webhook rate for minutes.

What it measures: `paxos-events serve` against a simulator subprocess (20 ms latency), fed
webhooks open loop at `--rate` (default 100/s) for `--minutes` (default 10). Every few
seconds it samples the server's resident memory (VmRSS) and the fetch backlog. At the end it
waits for the backlog and the projections to drain, then reports: errors (non-2xx answers,
no answers, events not fetched, error lines in the server's log), webhook latency p50/p99,
and memory growth from the end of the warm-up (the first fifth of the run, at least 30 s) to
the end. Targets: no error, growth under 10%.

Run: `make soak`, or `.venv/bin/python -m bench.soak [--minutes M] [--rate R]`. Results also
go to `bench/results/soak.json`. Not part of `make bench` (it takes ten minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from bench.database import drop, recreate, server_url
from bench.fetch import (
    CLI,
    INTAKE_PATH,
    UNLIMITED_RATE,
    UNTIL,
    percentiles,
    service_env,
    start_simulator,
)
from bench.ingest import (
    API_KEY,
    API_KEY_HEADER,
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
RESULTS = ROOT / "bench" / "results" / "soak.json"
BENCH_DATABASE = "bench_soak"
SAMPLE_S = 5.0
MAX_GROWTH = 0.10
IN_FLIGHT = 200  # requests outstanding at most; beyond it the sender falls behind, and says so


@dataclass
class Sample:
    at_s: float  # since the start of the load
    rss_mb: float
    pending: int


@dataclass
class Load:
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    late: int = 0  # requests that left more than a second after their due time
    send_s: float = 0.0  # from the first request out to the last answer in
    samples: list[Sample] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    """The process's resident set size, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def sampler(pid: int, url: str, started: float, into: list[Sample]) -> None:
    """Every SAMPLE_S: the server's RSS and the fetch backlog."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        while True:
            pending = await conn.fetchval("SELECT count(*) FROM events WHERE status = 'pending'")
            into.append(Sample(time.monotonic() - started, rss_mb(pid), int(pending)))
            await asyncio.sleep(SAMPLE_S)
    finally:
        await conn.close()


async def send(
    intake: str, notifications: list[dict[str, Any]], rate: float, pid: int, url: str
) -> Load:
    """Open loop: notification i is due at start + i / rate, whatever happened before it."""
    load = Load()
    headers = {"Content-Type": "application/json", API_KEY_HEADER: API_KEY}
    slots = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:

        async def one(body: bytes) -> None:
            sent = time.perf_counter()
            try:
                answer = await client.post(intake, content=body, headers=headers)
                status = str(answer.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            finally:
                slots.release()
            load.latencies_ms.append((time.perf_counter() - sent) * 1000)
            load.statuses[status] = load.statuses.get(status, 0) + 1

        started = time.monotonic()
        watch = asyncio.create_task(sampler(pid, url, started, load.samples))
        tasks: set[asyncio.Task[None]] = set()
        for i, notification in enumerate(notifications):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await slots.acquire()
            if time.monotonic() - due > 1.0:
                load.late += 1
            task = asyncio.create_task(one(msgspec.json.encode(notification)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        load.send_s = time.monotonic() - started
        await drain(url, timeout_s=120.0)
        watch.cancel()
    return load


async def drain(url: str, timeout_s: float) -> None:
    """Wait until nothing is pending and the projections have caught up (or the time is up)."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            waiting = await conn.fetchval("SELECT count(*) FROM events WHERE status = 'pending'")
            behind = await conn.fetchval(
                "SELECT count(*) FROM journal j, projection_checkpoints c "
                "WHERE j.kind = 'event' AND (j.xid, j.position) > (c.xid, c.position) "
                "AND c.name IN ('identities', 'transfers', 'orchestrations')"
            )
            if not waiting and not behind:
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def statuses(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM events GROUP BY status")
    finally:
        await conn.close()
    return {r["status"]: int(r["n"]) for r in rows}


def memory(samples: list[Sample], warmup_s: float) -> tuple[float, float, float]:
    """RSS after the warm-up and at the end (each the median of up to 3 samples), and the
    largest sample, in MB."""
    after = [s.rss_mb for s in samples if s.at_s >= warmup_s][:3]
    end = [s.rss_mb for s in samples][-3:]
    if not after or not end:
        raise RuntimeError("too few memory samples: run longer")
    return statistics.median(after), statistics.median(end), max(s.rss_mb for s in samples)


def error_lines(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "[error" in line or "Traceback" in line
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second")
    args = parser.parse_args(argv)
    duration_s = args.minutes * 60
    warmup_s = max(30.0, duration_s / 5)
    total = int(duration_s * args.rate)

    admin_url = server_url()
    url = asyncio.run(recreate(admin_url, BENCH_DATABASE))
    notifications = build_universe(total, 0.0, 7007, UNTIL).notifications()
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    loadavg = float(Path("/proc/loadavg").read_text().split()[0])
    try:
        with servers() as running:
            simulator = start_simulator(
                logs, "simulator", events=total, seed=7007, rate=UNLIMITED_RATE, latency_s=0.02
            )
            running.append(simulator)
            wait_until_up(simulator, "/_simulator/stats", timeout_s=120)
            serve = start_server("serve", [CLI, "serve"], service_env(url, simulator, 1000.0), logs)
            running.append(serve)
            wait_until_up(serve, "/health/ready")
            print(
                f"{args.rate:g} webhooks/s for {args.minutes:g} min into serve "
                f"(pid {serve.process.pid}); logs in {logs}",
                flush=True,
            )
            load = asyncio.run(
                send(serve.url + INTAKE_PATH, notifications, args.rate, serve.process.pid, url)
            )
            errors_logged = error_lines(serve.log)
        stored = asyncio.run(statuses(url))
    finally:
        asyncio.run(drop(admin_url, BENCH_DATABASE))
    accepted = load.statuses.get("200", 0)
    failed_answers = sum(n for s, n in load.statuses.items() if s != "200")
    fetched = stored.get("fetched", 0)
    after_warmup, end, peak = memory(load.samples, warmup_s)
    growth = (end - after_warmup) / after_warmup
    latency = percentiles(load.latencies_ms)
    rows = [
        Row(
            "webhooks sent / 2xx",
            f"{total:,} / {accepted:,}",
            "all 2xx",
            verdict(accepted == total),
        ),
        Row(
            "answers not 2xx",
            f"{failed_answers} {load.statuses}",
            "0",
            verdict(failed_answers == 0),
        ),
        Row(
            "events fetched",
            f"{fetched:,} of {accepted:,} {stored}",
            "all",
            verdict(fetched == accepted),
        ),
        Row(
            "error lines in the server log",
            str(len(errors_logged)),
            "0",
            verdict(not errors_logged),
        ),
        Row(
            "webhook latency p50 / p99",
            f"{latency['p50']:.1f} / {latency['p99']:.1f} ms",
            "",
            "info",
        ),
        Row(
            "RSS after warm-up / end / peak",
            f"{after_warmup:.0f} / {end:.0f} / {peak:.0f} MB",
            "",
            "info",
        ),
        Row(
            "RSS growth after warm-up",
            f"{growth:+.1%}",
            f"< {MAX_GROWTH:.0%}",
            verdict(growth < MAX_GROWTH),
        ),
        # The load generator's own lag: on a busy machine it falls behind (and bunches its
        # requests); the figures then understate the service.
        Row(
            "achieved rate / requests > 1 s late",
            f"{total / load.send_s:.1f}/s / {load.late:,}",
            f"{args.rate:g}/s / 0",
            "info",
        ),
    ]
    info = machine()
    print(
        f"\nsoak, {when}; {info['nproc']} cores, {info['cpu']}, Python {info['python']}; "
        f"{args.rate:g}/s for {args.minutes:g} min, warm-up {warmup_s:.0f} s; "
        f"1-min loadavg before: {loadavg:.2f}"
    )
    print(table(rows))
    if load.late > total / 100:
        print(
            f"WARNING: {load.late:,} requests left more than 1 s late: the machine was too busy "
            "for an even load; rerun on a quiet machine"
        )
    for line in errors_logged[:5]:
        print("  log:", line[:200])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": when,
                "machine": info,
                "loadavg_before": loadavg,
                "rate": args.rate,
                "minutes": args.minutes,
                "warmup_s": warmup_s,
                "sent": total,
                "answers": load.statuses,
                "late": load.late,
                "send_s": round(load.send_s, 1),
                "events": stored,
                "error_lines": len(errors_logged),
                "latency_ms": latency,
                "rss_mb": {"after_warmup": after_warmup, "end": end, "peak": peak},
                "rss_growth": round(growth, 4),
                "samples": [
                    {"at_s": round(s.at_s, 1), "rss_mb": round(s.rss_mb, 1), "pending": s.pending}
                    for s in load.samples
                ],
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if all(r.result != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
