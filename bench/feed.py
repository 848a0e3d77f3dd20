"""Feed benchmark: GET /feed catch-up, commit-to-SSE latency, and idle SSE clients' memory.

    .venv/bin/python -m bench.feed            # loads 1,000,000 events (a few minutes), measures
    .venv/bin/python -m bench.feed --reuse    # keep the loaded database from a last run

What it measures, each part against a real `paxos-events serve --no-background`:

1. catch-up: one reader follows GET /feed from position 0 in JSON pages of 1,000
   (`after=next_after`) over 1,000,000 full events (each with its events row and its
   notification in the journal, as the intake and the fetcher leave them). Reference, in the
   same run on the same rows: the sequential read of those journal `event` rows (position,
   event_id, body) straight from PostgreSQL through asyncpg. Target >= 20,000 events/s.
2. latency: an SSE client follows the feed while full events are committed at 100/s (each
   the way List Events results are stored, then the fetcher's coalescing NOTIFY); from each
   COMMIT's return to the client reading the event (one clock: both in this process).
   Target p95 <= 50 ms.
3. idle clients: the server's resident memory (VmRSS) with no SSE client, then with 100 idle
   ones; and the database connections it holds meanwhile. Target <= +50 MB.

Results go to stdout and bench/results/feed.json. The database is the embedded server under
.data/bench unless BENCH_DATABASE_URL names another; `bench_feed` is created on it (kept for
`--reuse`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from bench.database import kept_or_recreated, load_events, server_url, timed_read
from service.db.engine import create_engine, plain_url
from service.db.notify import FETCHED_CHANNEL, Waker
from service.store.listed import Listed, record_listed

EVENTS = 1_000_000
CHUNK = 50_000
PAGE = 1_000
DATABASE = "bench_feed"
READ_TOKEN = "bench-feed-read-token-0001"  # noqa: S105 - a bench credential
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "feed.json"
TARGETS = {"catch_up_events_per_s": 20_000, "sse_p95_ms": 50.0, "idle_100_sse_rss_mb": 50.0}

# Per block of 100 events: their notifications (as the intake journals a batch), then their
# full events (as the fetcher journals a batch, with the events rows `fetched`): about 700
# bytes of JSON each. (Events rows are written with the chunk: the feed joins them.)
_LOAD = """
WITH g AS (
    SELECT gen_random_uuid() AS eid, i,
           (ARRAY['identity.approved', 'identity.documents_required',
                  'transfer.crypto_deposit.completed', 'identity.kyc_refresh.completed',
                  'transfer.crypto_withdrawal.completed'])[i % 5 + 1] AS type,
           timestamptz '2025-01-01' + i * interval '31 ms' AS t
    FROM generate_series($1::bigint, $2::bigint) i
), body AS (
    SELECT g.*, json_build_object(
        'id', eid, 'type', type, 'source', 'com.paxos', 'is_test', i % 50 = 0,
        'created_at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'object_type', split_part(type, '.', 1),
        'object', json_build_object(
            'id', gen_random_uuid(), 'identity_id', 'idt-' || (i % 100000),
            'profile_id', gen_random_uuid(), 'ref_id', 'ref-' || i,
            'old_summary_status', 'PENDING', 'new_summary_status', 'APPROVED',
            'required_documents', json_build_array('PASSPORT', 'PROOF_OF_RESIDENCY'),
            'amount', (i % 9973)::text || '.25', 'asset', 'USD',
            'crypto_network', 'ETHEREUM', 'crypto_tx_hash', md5(eid::text) || md5(type),
            'created_at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
        'undelivered_webhooks', 0) AS b,
        json_build_object(
        'id', eid, 'type', type, 'source', 'com.paxos', 'object', 'event',
        'time', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'is_test', i % 50 = 0) AS note
    FROM g
), ev AS (
    INSERT INTO events (event_id, type, source, time, object, is_test, confirmed_is_test, status,
                        via, deliveries, first_received_at, last_received_at, fetched_at,
                        identity_id, object_type, undelivered_webhooks, object_id)
    SELECT eid, type, 'com.paxos', t, 'event', i % 50 = 0, i % 50 = 0, 'fetched', 'webhook', 1,
           t, t, t, 'idt-' || (i % 100000), split_part(type, '.', 1), 0,
           CASE WHEN type LIKE 'transfer.%' OR type LIKE 'orchestration.%'
                THEN b -> 'object' ->> 'id' END
    FROM body
)
INSERT INTO journal (event_id, kind, body)
SELECT eid, kind, body FROM (
    SELECT eid, 'notification' AS kind, note AS body, i, 0 AS k FROM body
    UNION ALL
    SELECT eid, 'event', b, i, 1 FROM body
) rows
ORDER BY i / 100, k, i
"""


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


# The reference: every journal `event` row in position order, with nothing done per row.
SEQUENTIAL_READ = (
    "SELECT position, event_id, body FROM journal WHERE kind = 'event' ORDER BY position"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Serve:
    base: str
    pid: int

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextmanager
def serving(url: str, logs: Path, name: str) -> Iterator[Serve]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAXOS_", "WEBHOOK_", "API_"))}
    env.update(
        DATABASE_URL=url,
        PORT=str(port),
        API_READ_TOKENS=READ_TOKEN,
        WEBHOOK_API_KEYS="bench-feed-webhook-key-01",
        PAXOS_CLIENT_ID="unused",
        PAXOS_CLIENT_SECRET="unused-bench-secret",  # noqa: S106 - never used
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
    )
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--no-background"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{log.read_text()[-3000:]}")
            try:
                httpx.get(f"{base}/health/live", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Serve(base, process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


HEADERS = {"Authorization": f"Bearer {READ_TOKEN}"}
SSE = {**HEADERS, "Accept": "text/event-stream"}


async def catch_up(serve: Serve, start: int = 0) -> tuple[int, float]:
    """Follow the feed from position `start` to its end in pages of PAGE; items and seconds."""
    async with httpx.AsyncClient(timeout=60) as http:
        after, items = start, 0
        started = time.perf_counter()
        while True:
            answer = await http.get(
                f"{serve.base}/feed", params={"after": after, "limit": PAGE}, headers=HEADERS
            )
            answer.raise_for_status()
            page = msgspec.json.decode(answer.content)
            items += len(page["items"])
            if page["next_after"] == after:
                return items, time.perf_counter() - started
            after = page["next_after"]


def listed(n: int) -> Listed:
    event_id = uuid.uuid4()
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=n)
    body = {
        "id": str(event_id),
        "type": "identity.approved",
        "source": "com.paxos",
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "is_test": False,
        "object_type": "identity",
        "object": {"id": f"idt-{n}", "identity_id": f"idt-{n}", "new_summary_status": "APPROVED"},
        "undelivered_webhooks": 0,
    }
    return Listed(
        event_id=event_id,
        type="identity.approved",
        created_at=created,
        is_test=False,
        raw=msgspec.json.encode(body).decode(),
        identity_id=f"idt-{n}",
        object_type="identity",
        undelivered_webhooks=0,
        object_id=None,
    )


async def end_of_journal(url: str) -> int:
    conn = await asyncpg.connect(plain_url(url))
    try:
        return int(await conn.fetchval("SELECT coalesce(max(position), 0) FROM journal"))
    finally:
        await conn.close()


async def sse_latency(serve: Serve, url: str, rate: float, duration_s: float) -> dict[str, Any]:
    """Commit full events at `rate` for `duration_s`; each one's commit-to-SSE time."""
    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    start = await end_of_journal(url)
    engine = create_engine(url, pool_size=2)
    waker = Waker(engine, FETCHED_CHANNEL)  # the fetcher's: one NOTIFY per 50 ms at most
    waker.start()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
            http.stream(
                "GET", f"{serve.base}/feed", params={"after": start}, headers=SSE
            ) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    item = msgspec.json.decode(line[6:])
                    received[item["event"]["id"]] = time.perf_counter()

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(1.0)
        count = int(rate * duration_s)
        began = time.perf_counter()
        for n in range(count):
            due = began + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            event = listed(n)
            async with engine.begin() as conn:
                await record_listed(conn, [event])
            committed[str(event.event_id)] = time.perf_counter()
            waker.poke()
        deadline = time.perf_counter() + 10
        while len(received) < count and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        await waker.stop()
        await engine.dispose()
    lat = [(received[i] - t) * 1000 for i, t in committed.items() if i in received]
    return {
        "events": len(committed),
        "received": len(lat),
        "rate_per_s": rate,
        "latency_ms": {k: round(v, 1) for k, v in percentiles(lat).items()},
    }


async def idle_clients(serve: Serve, url: str, clients: int) -> dict[str, Any]:
    """RSS with no SSE client, then with `clients` idle ones; DB connections held."""
    start = await end_of_journal(url)
    async with httpx.AsyncClient() as http:
        (
            await http.get(f"{serve.base}/feed", params={"after": start}, headers=HEADERS)
        ).raise_for_status()
    await asyncio.sleep(1.0)
    before = serve.rss_mb()
    conns_before = await server_connections(url)
    limits = httpx.Limits(max_connections=clients + 5)
    opened = asyncio.Event()
    ready = 0

    async def idle(http: httpx.AsyncClient) -> None:
        nonlocal ready
        async with http.stream(
            "GET", f"{serve.base}/feed", params={"after": start}, headers=SSE
        ) as response:
            response.raise_for_status()
            async for _ in response.aiter_lines():
                ready += 1
                if ready == clients:
                    opened.set()
                await asyncio.sleep(3600)

    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10, read=None)) as http:
        tasks = [asyncio.create_task(idle(http)) for _ in range(clients)]
        await asyncio.wait_for(opened.wait(), 30)
        await asyncio.sleep(5.0)  # several polls of the horizon
        during = serve.rss_mb()
        conns_during = await server_connections(url)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": clients,
        "rss_mb": {"none": round(before, 1), "idle": round(during, 1)},
        "rss_growth_mb": round(during - before, 1),
        "db_connections": {"none": conns_before, "idle": conns_during},
    }


async def server_connections(url: str) -> int:
    conn = await asyncpg.connect(plain_url(url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'paxos-events' AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


async def main(reuse: bool, server: str) -> None:
    url, kept = await kept_or_recreated(server, DATABASE, reuse)
    if not kept:
        print(f"loading {EVENTS:,} events (notifications and full events) ...", flush=True)
        await load_events(url, _LOAD, EVENTS, CHUNK)
    load_before = os.getloadavg()[0]
    rows, read_s = await timed_read(url, SEQUENTIAL_READ)
    logs = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    with serving(url, logs, "catch-up") as serve:
        items, feed_s = await catch_up(serve)
    load_after = os.getloadavg()[0]
    with serving(url, logs, "latency") as serve:
        latency = await sse_latency(serve, url, rate=100.0, duration_s=20.0)
    with serving(url, logs, "idle") as serve:
        idle = await idle_clients(serve, url, clients=100)
    rate, ref_rate = items / feed_s, rows / read_s
    p95 = latency["latency_ms"]["p95"]
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        # Other work on the machine shows here (the catch-up's client, server and database
        # share its cores).
        "load_average_1m": {"before": load_before, "after_catch_up": load_after},
        "catch_up": {
            "events": items,
            "page": PAGE,
            "seconds": round(feed_s, 1),
            "events_per_s": round(rate),
            "reference_sequential_read": {
                "rows": rows,
                "seconds": round(read_s, 1),
                "rows_per_s": round(ref_rate),
            },
            "over_reference": round(feed_s / read_s, 1),
        },
        "sse_latency": latency,
        "idle_sse": idle,
        "targets": TARGETS,
        "ok": {
            "catch_up": rate >= TARGETS["catch_up_events_per_s"],
            "sse_latency": p95 <= TARGETS["sse_p95_ms"]
            and latency["received"] == latency["events"],
            "idle_sse": idle["rss_growth_mb"] <= TARGETS["idle_100_sse_rss_mb"],
        },
        "logs": str(logs),
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["ok"]
    print(
        f"feed catch-up: {items:,} events in pages of {PAGE:,} over HTTP in {feed_s:.1f} s = "
        f"{rate:,.0f} events/s (target >= 20,000) -> {verdict(ok['catch_up'])}; reference: "
        f"sequential read of the same {rows:,} journal rows {read_s:.1f} s = {ref_rate:,.0f}/s "
        f"(feed takes {feed_s / read_s:.1f}x); 1-minute load {load_before:.2f} before, "
        f"{load_after:.2f} after"
    )
    lm = latency["latency_ms"]
    print(
        f"commit -> SSE at {latency['rate_per_s']:.0f} events/s: p50 {lm['p50']} ms, "
        f"p95 {lm['p95']} ms, p99 {lm['p99']} ms, max {lm['max']} ms; "
        f"{latency['received']}/{latency['events']} received (target p95 <= 50 ms) -> "
        f"{verdict(ok['sse_latency'])}"
    )
    print(
        f"serve with {idle['clients']} idle SSE clients: RSS {idle['rss_mb']['none']} -> "
        f"{idle['rss_mb']['idle']} MB (+{idle['rss_growth_mb']} MB, target <= +50) -> "
        f"{verdict(ok['idle_sse'])}; database connections {idle['db_connections']['none']} -> "
        f"{idle['db_connections']['idle']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep the loaded database")
    asyncio.run(main(parser.parse_args().reuse, server_url()))
