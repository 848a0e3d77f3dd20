"""Push benchmark: one subscription delivering to a local receiver that answers in 10 ms.

    .venv/bin/python -m bench.push [--events 20000] [--rate 100] [--duration 20]

What it measures, against a real `paxos-events worker` (the delivering process) on a fresh
database of the benchmarks' server:

1. throughput: `--events` fetched events (each an events row and a journal `event` row, as
   the fetcher leaves them; identities spread over 5,000 keys) are in the journal before a
   subscription with `start: beginning` is created; the worker delivers them to a receiver
   process (aiohttp) that answers 204 after 10 ms. Figure: events delivered per second, from
   the first delivery to the last. Target >= 1,000 events/s.
2. latency: a new subscription (`start: now`; the first one deleted) while events are
   committed at `--rate` per second, each in a transaction of its own followed by the
   fetcher's NOTIFY; from each COMMIT's return to the receiver reading the request (one clock:
   both processes on this machine). Target p95 <= 200 ms at 100 events/s.

Results go to stdout and bench/results/push.json. The database is the embedded server under
.data/bench unless BENCH_DATABASE_URL names another; `bench_push` is created anew on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.database import recreate, server_url
from bench.fetch import percentiles
from bench.ingest import Row, free_port, machine, table, verdict
from service.db.engine import create_engine, plain_url
from service.store.subscriptions import create_subscription, delete_subscription

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "push.json"
DATABASE = "bench_push"
TARGET_RATE = 1000.0
TARGET_P95_MS = 200.0
RECEIVER_DELAY_S = 0.010
KEYS = 5000


# --- the receiver (a process of its own: `python -m bench.push --receiver PORT`) --------------


def receive(port: int, delay_s: float) -> None:
    """Answer every POST with 204 after `delay_s`, noting (webhook-id, arrival time);
    GET /stats hands the notes over (and clears them with ?clear=1)."""
    from aiohttp import web

    seen: list[tuple[str, float]] = []

    async def hook(request: web.Request) -> web.Response:
        at = time.time()
        await request.read()
        seen.append((request.headers.get("webhook-id", ""), at))
        await asyncio.sleep(delay_s)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        body = json.dumps(seen)
        if request.query.get("clear"):
            seen.clear()
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def received(port: int, *, clear: bool = False) -> list[tuple[str, float]]:
    url = f"http://127.0.0.1:{port}/stats" + ("?clear=1" if clear else "")
    return [(i, float(t)) for i, t in httpx.get(url, timeout=30).json()]


# --- setting up ------------------------------------------------------------------------------

_LOAD_EVENTS = """
    INSERT INTO events (event_id, type, source, time, object, is_test, status, fetched_at,
                        identity_id, object_type, undelivered_webhooks, deliveries,
                        first_received_at, last_received_at)
    SELECT id, 'identity.approved', 'com.paxos', now(), 'event', false, 'fetched', now(),
           'idt-' || ((n + $3) % $2), 'identity', 0, 1, now(), now()
    FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)
"""
_LOAD_JOURNAL = """
    INSERT INTO journal (event_id, kind, body)
    SELECT id, 'event',
           json_build_object('id', id, 'type', 'identity.approved', 'object_type', 'identity',
                             'object', json_build_object('identity_id',
                                                         'idt-' || ((n + $3) % $2)),
                             'created_at', '2026-01-07T14:30:02Z', 'undelivered_webhooks', 0)
    FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)
    ORDER BY n
"""


async def load(url: str, count: int) -> None:
    """`count` fetched events, identities spread over KEYS keys, in batches."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        for start in range(0, count, 5000):
            ids = [uuid.uuid4() for _ in range(min(5000, count - start))]
            async with conn.transaction():
                await conn.execute(_LOAD_EVENTS, ids, KEYS, start)
                await conn.execute(_LOAD_JOURNAL, ids, KEYS, start)
    finally:
        await conn.close()


async def subscribe(url: str, name: str, target: str, start: Any, max_in_flight: int = 16) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await create_subscription(
                conn,
                name=name,
                url=target,
                types=[],
                include_test=False,
                max_in_flight=max_in_flight,
                secret=os.urandom(32),
                start=start,
            )
    finally:
        await engine.dispose()


async def unsubscribe(url: str, name: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await delete_subscription(conn, name)
    finally:
        await engine.dispose()


def worker_env(url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAXOS_", "WEBHOOK_", "API_", "DATABASE_URL", "SUBSCRIPTION_"))
    }
    return env | {
        "DATABASE_URL": url,
        "PAXOS_API_URL": "http://127.0.0.1:9/v2",  # nothing to fetch here: never called
        "PAXOS_TOKEN_URL": "http://127.0.0.1:9/oauth2/token",
        "PAXOS_CLIENT_ID": "bench",
        "PAXOS_CLIENT_SECRET": "bench-secret-0000",
        "WEBHOOK_API_KEYS": "bench-webhook-key-0000",
        "SUBSCRIPTION_ALLOW_PRIVATE_URLS": "true",
        "LOG_LEVEL": "warning",
    }


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- the two phases ----------------------------------------------------------------------------


def throughput(
    url: str, port: int, count: int, timeout_s: float, max_in_flight: int
) -> dict[str, float]:
    received(port, clear=True)
    target = f"http://127.0.0.1:{port}/hook"
    asyncio.run(subscribe(url, "throughput", target, "beginning", max_in_flight))
    deadline = time.monotonic() + timeout_s
    got: list[tuple[str, float]] = []
    while time.monotonic() < deadline:
        got = received(port)
        if len({i for i, _ in got}) >= count:
            break
        time.sleep(0.5)
    times = sorted(t for _, t in got)
    distinct = len({i for i, _ in got})
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    asyncio.run(unsubscribe(url, "throughput"))
    return {
        "delivered": float(distinct),
        "requests": float(len(got)),
        "seconds": span,
        "rate": (len(times) - 1) / span if len(times) > 1 else 0.0,
    }


async def paced_writes(url: str, rate: float, count: int) -> dict[str, float]:
    """`count` fetched events at `rate`/s, each committed alone then NOTIFY'd as the fetcher
    does; the wall time each COMMIT returned, by event id."""
    conn = await asyncpg.connect(plain_url(url))
    committed: dict[str, float] = {}
    try:
        began = time.monotonic()
        for n in range(count):
            due = began + n / rate
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            event_id = uuid.uuid4()
            async with conn.transaction():
                await conn.execute(_LOAD_EVENTS, [event_id], KEYS, n)
                await conn.execute(_LOAD_JOURNAL, [event_id])
            committed[str(event_id)] = time.time()
            await conn.execute("SELECT pg_notify('events_fetched', '')")
    finally:
        await conn.close()
    return committed


def latency(url: str, port: int, rate: float, duration_s: float, warmup_s: float) -> Any:
    asyncio.run(subscribe(url, "latency", f"http://127.0.0.1:{port}/hook", "now"))
    time.sleep(1.0)  # the worker notices the new subscription
    received(port, clear=True)
    warm = int(warmup_s * rate)
    total = warm + int(duration_s * rate)
    committed = asyncio.run(paced_writes(url, rate, total))
    deadline = time.monotonic() + 30
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        for event_id, at in received(port):
            got.setdefault(event_id, at)
        if len(got) >= total:
            break
        time.sleep(0.2)
    order = list(committed)
    missing = [i for i in order if i not in got]
    if missing:
        print(f"not delivered within 30 s: {missing}", flush=True)
    lags = [(got[i] - committed[i]) * 1000 for i in order[warm:] if i in got]
    return len(got), total, percentiles(lags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events for the throughput")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s for the latency")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=16,
        help="the throughput subscription's max_in_flight (16: the default)",
    )
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        receive(args.receiver, RECEIVER_DELAY_S)
        return 0

    admin_url = server_url()
    url = asyncio.run(recreate(admin_url, DATABASE))
    print(f"loading {args.events:,} fetched events ...", flush=True)
    asyncio.run(load(url, args.events))
    logs = Path(tempfile.mkdtemp(prefix="bench-push-"))
    port = free_port()
    receiver = start(
        [sys.executable, "-m", "bench.push", "--receiver", str(port)], dict(os.environ), logs / "r"
    )
    worker = start(
        [sys.executable, "-m", "service", "worker"], worker_env(url), logs / "worker.log"
    )
    try:
        for _ in range(100):
            try:
                received(port)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        time.sleep(2.0)  # the worker's start
        print("throughput: one subscription from the beginning ...", flush=True)
        push = throughput(url, port, args.events, max(120.0, args.events / 100), args.max_in_flight)
        print(f"latency: {args.rate:g} events/s for {args.warmup:g} + {args.duration:g} s ...")
        got, total, lag = latency(url, port, args.rate, args.duration, args.warmup)
    finally:
        stop(worker)
        stop(receiver)
    rows = [
        Row(
            "delivered / loaded",
            f"{push['delivered']:,.0f} / {args.events:,} ({push['requests']:,.0f} requests)",
            "all",
            verdict(push["delivered"] == args.events),
        ),
        Row(
            f"push throughput, receiver answering in 10 ms, max_in_flight {args.max_in_flight}",
            f"{push['rate']:,.0f} events/s",
            f">= {TARGET_RATE:,.0f}",
            verdict(push["rate"] >= TARGET_RATE),
        ),
        Row(
            "latency phase: delivered / written",
            f"{got:,} / {total:,}",
            "all",
            verdict(got == total),
        ),
        Row("fetched -> delivered p50", f"{lag.get('p50', float('nan')):.0f} ms", "", "info"),
        Row(
            f"fetched -> delivered p95 at {args.rate:g}/s",
            f"{lag.get('p95', float('nan')):.0f} ms",
            f"<= {TARGET_P95_MS:.0f} ms",
            verdict(lag.get("p95", 1e9) <= TARGET_P95_MS),
        ),
        Row(
            "p99 / max",
            f"{lag.get('p99', float('nan')):.0f} / {lag.get('max', float('nan')):.0f} ms",
            "",
            "info",
        ),
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    print(
        f"\npush benchmark, {when}; {info['nproc']} cores, {info['cpu']}, Python {info['python']}"
    )
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": when,
                "machine": info,
                "throughput": push | {"max_in_flight": args.max_in_flight},
                "latency": {"rate": args.rate, "duration_s": args.duration, "delivered": got}
                | {f"{k}_ms": round(v, 1) for k, v in lag.items()},
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if all(r.result != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
