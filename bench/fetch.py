"""Fetch benchmark: how fast pending notifications become stored events, and how promptly.

    .venv/bin/python -m bench.fetch              # about 2 minutes
    .venv/bin/python -m bench.fetch --quick      # under a minute, smaller runs

Every phase gets a fresh, migrated database, a real `paxos-events simulate api` subprocess
(a universe of exactly the events the phase uses, seeded, no test events) and the service
as a real subprocess pointed at it. Three figures:

(a) fetch throughput with no simulated latency and no binding limit: the simulator allows
    100,000 calls/s, the service runs with PAXOS_API_RPS=10000 (no binding limit). N
    pending events are loaded first (through `service.store.intake.record_notifications`,
    the intake's own statement, in batches, without HTTP), then one `paxos-events worker`
    starts and drains them. Throughput = (N - 1) / (last - first `events.fetched_at`).
    Target >= 1,000 events/s, so that the fetcher is never the bottleneck. Note the
    ceiling: the limiter spaces calls 1 / (PAXOS_API_RPS x its safety margin) apart (0.96
    when this was written: 9,600 calls/s at the largest setting), so the target cannot be
    met as stated; the table shows the ceiling, and how close the rest of the path gets.
(b) the rate limit held: the simulator adds 100 ms to every call and allows 50 calls/s
    (answering 429 above, in any sliding second, as Paxos does); the worker runs with
    PAXOS_API_RPS=50 and drains N pending events. The simulator's `/_simulator/stats` gives
    counts only, no per-call times, so the worker reaches the simulator through a small TCP
    relay in this process that notes the time each API request (`GET /v2/events...`)
    passes it: the moment the call leaves the service, on one clock. From those times:
    sustained = (calls - 1) / (last - first call); "most in any 1 s" = the most calls in
    any half-open one-second window. The simulator's count of 429 answers is the
    independent check (its window refuses the 51st call in any sliding second, as the call
    arrives after the simulated latency). The same two figures from `events.fetched_at`
    are shown for comparison: fetched_at is stamped when outcomes are group-committed, so
    outcomes sharing a commit share a time, and its window count overstates bursts.
    Targets: sustained >= 47 calls/s, never above 50 in any second, no 429.
(c) lag from a webhook's 2xx to its stored detail at 50 webhooks/s: `paxos-events serve`
    with its background fetcher (one process, as deployed), the simulator with 20 ms of
    latency and no binding limit, PAXOS_API_RPS=10000; a paced open-loop sender posts real
    notifications of the simulator's universe at 50/s (2 s of warm-up not counted, then
    the measured part). Lag = `events.fetched_at - events.first_received_at`, both on the
    database's clock: the intake stamps first_received_at in the statement it commits
    right before answering 2xx, so the lag includes the commit and the answer (a
    millisecond or so) and never depends on two clocks agreeing. The sender's own 2xx
    times give the same lag on the client's clock, for comparison (meaningful when the
    database runs on this machine). Target p95 <= 500 ms.
(c') the same at PAXOS_API_RPS=50, for information: 50 webhooks/s against a 50 calls/s
    limit leaves the fetcher no headroom (none at all, or less than none with the
    limiter's margin), so any stall stays as lag that never drains, and a backlog grows
    at the difference. "lag p50, first / last fifth" shows whether the lag grew.

How to read the figures: all processes (sender, simulator, service, Postgres) share this
machine's cores, and the "cpu" line says how busy it was and how much of that was other
work; figures measured beside other work understate the service. "CPU per event" is the
CPU time of the service's process group, of the simulator's, and of the Postgres backends
connected to the bench database, each divided by the events handled.

Results go to stdout as a table and to bench/results/fetch.json. The database is the
embedded server under .data/bench unless BENCH_DATABASE_URL names another server (a
database `bench_fetch` is created on it, and dropped at the end). `--py-spy DIR` records
py-spy profiles (collapsed stacks, for flamegraph.pl or speedscope) of the worker in (a)
and (b) and of `serve` in (c), when py-spy is on the PATH or in the venv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from bench import database
from bench.database import server_url
from bench.ingest import (
    API_KEY,
    API_KEY_HEADER,
    INTAKE_PATH,
    Row,
    Server,
    free_port,
    machine,
    print_report,
    server_env,
    servers,
    start_server,
    verdict,
    wait_until_up,
)
from service.db.engine import create_engine, plain_url, with_database
from service.domain.notification import decode_notification
from service.paxos import ratelimit
from service.simulator.commands import build_universe
from service.store.intake import Received, record_notifications

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fetch.json"
BENCH_DATABASE = "bench_fetch"
CLI = str(Path(sys.executable).parent / "paxos-events")

# The simulator's universe: fixed, so that the simulator and this process build the same one.
UNTIL = datetime(2026, 1, 1, tzinfo=UTC)
SIM_CLIENT_ID = "sim-client"
SIM_CLIENT_SECRET = "sim-secret"
UNLIMITED_RATE = 100_000.0  # the simulator's API limit when it must not bind

TARGET_THROUGHPUT = 1000.0
A_RPS = 10000.0  # no binding limit: far above what the fetcher can do
# The limiter keeps a margin under PAXOS_API_RPS (if this version has one).
LIMITER_MARGIN = float(getattr(ratelimit, "SAFETY", 1.0))
LIMIT_RPS = 50.0
TARGET_SUSTAINED = 47.0
TARGET_LAG_P95_MS = 500.0


# --- the database -----------------------------------------------------------------------


async def pg_settings(admin_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(plain_url(with_database(admin_url, "postgres")))
    try:
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            ["server_version", "fsync", "synchronous_commit", "shared_buffers"],
        )
    finally:
        await conn.close()
    return {r["name"]: r["setting"] + (f" x {r['unit']}" if r["unit"] else "") for r in rows}


async def fresh_database(admin_url: str) -> str:
    """Drop and create the bench database, migrate it; its URL."""
    return await database.recreate(admin_url, BENCH_DATABASE)


async def drop_database(admin_url: str) -> None:
    await database.drop(admin_url, BENCH_DATABASE)


async def preload(url: str, notifications: list[dict[str, Any]], batch: int = 2000) -> None:
    """Store `notifications` as pending events with the intake's own statement (no HTTP)."""
    engine = create_engine(url, pool_size=1)
    try:
        for at in range(0, len(notifications), batch):
            received = []
            for n in notifications[at : at + batch]:
                body = msgspec.json.encode(n)
                received.append(Received(decode_notification(body), body.decode()))
            async with engine.begin() as conn:
                await record_notifications(conn, received)
    finally:
        await engine.dispose()


async def db_now(url: str) -> float:
    conn = await asyncpg.connect(plain_url(url))
    try:
        return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
    finally:
        await conn.close()


async def statuses(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM events GROUP BY status")
    finally:
        await conn.close()
    return {r["status"]: int(r["n"]) for r in rows}


def wait_drained(url: str, expected: int, process: Server, timeout_s: float) -> dict[str, int]:
    """Poll until no event is pending (and all `expected` are there); the final counts."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = asyncio.run(statuses(url))
        if sum(counts.values()) >= expected and not counts.get("pending"):
            return counts
        if process.process.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited ({process.process.returncode}):\n" + process.tail()
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained after {timeout_s:g} s: {counts}\n{process.tail()}")
        time.sleep(0.2)


async def fetched_times(url: str) -> list[float]:
    """Every fetched event's fetched_at, seconds since the epoch, in order."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM fetched_at)::float8 AS t FROM events"
            " WHERE status = 'fetched' ORDER BY fetched_at"
        )
    finally:
        await conn.close()
    return [r["t"] for r in rows]


async def outcomes_per_commit(url: str) -> dict[str, float]:
    """Fetched events per transaction: the journal's 'event' rows of one commit share an xid."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS commits, coalesce(avg(n), 0) AS mean,
                   coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY n), 0) AS p50,
                   coalesce(max(n), 0) AS max
            FROM (SELECT count(*) AS n FROM journal WHERE kind = 'event' GROUP BY xid) AS b
            """
        )
    finally:
        await conn.close()
    return {k: float(v) for k, v in row.items()}


async def receipt_and_fetch(url: str) -> dict[str, tuple[float, float | None]]:
    """event id -> (first_received_at, fetched_at), seconds since the epoch."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        rows = await conn.fetch(
            "SELECT event_id::text AS id, extract(epoch FROM first_received_at)::float8 AS r,"
            " extract(epoch FROM fetched_at)::float8 AS f FROM events"
        )
    finally:
        await conn.close()
    return {r["id"]: (r["r"], r["f"]) for r in rows}


# --- processes --------------------------------------------------------------------------


def start_simulator(
    logs: Path, name: str, *, events: int, seed: int, rate: float, latency_s: float
) -> Server:
    port = free_port()
    argv = [
        CLI,
        "simulate",
        "api",
        "--port",
        str(port),
        "--events",
        str(events),
        "--seed",
        str(seed),
        "--until",
        UNTIL.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--test-ratio",
        "0",
        "--rate",
        f"{rate:g}",
        "--latency",
        f"{latency_s:g}",
        "--client-id",
        SIM_CLIENT_ID,
    ]
    env = server_env("", port)
    del env["DATABASE_URL"]  # it has none
    env["SIMULATE_CLIENT_SECRET"] = SIM_CLIENT_SECRET
    return start_server(name, argv, env, logs)


def service_env(
    db_url: str, simulator: Server, rps: float, api_base: str | None = None
) -> dict[str, str]:
    env = server_env(db_url, free_port())
    env.update(
        {
            "PAXOS_API_URL": (api_base or simulator.url) + "/v2",
            "PAXOS_TOKEN_URL": simulator.url + "/oauth2/token",
            "PAXOS_CLIENT_ID": SIM_CLIENT_ID,
            "PAXOS_CLIENT_SECRET": SIM_CLIENT_SECRET,
            "PAXOS_API_RPS": f"{rps:g}",
        }
    )
    return env


def simulator_stats(simulator: Server) -> dict[str, Any]:
    answer = httpx.get(simulator.url + "/_simulator/stats", timeout=10.0)
    answer.raise_for_status()
    stats: dict[str, Any] = answer.json()
    return stats


def calls_with_status(stats: dict[str, Any], endpoint: str, status: int) -> int:
    return int(stats.get("by_status", {}).get(f"{endpoint} {status}", 0))


class CallRecorder:
    """A TCP relay to `upstream_port` that notes when each Paxos API request passes it.

    It runs on its own thread and event loop, so the benchmark's own work does not delay
    it. Requests are counted by their request line (`GET /v2/events`, Get Event and List
    Events, which share Paxos's limit) as the bytes arrive from the service; the token
    endpoint is not counted.
    """

    MARK = b"GET /v2/events"

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.times: list[float] = []  # time.monotonic() of each API request
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CallRecorder:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Cancelled when the relay closes: end quietly (asyncio's stream server would log a
        # cancelled handler as an error).
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                self._pipe(reader, up_writer, count=True),
                self._pipe(up_reader, writer, count=False),
                return_exceptions=True,
            )

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, count: bool
    ) -> None:
        # A request line may straddle two reads: keep the last few bytes of each.
        tail = b""
        keep = len(self.MARK) - 1
        try:
            while data := await source.read(65536):
                if count:
                    now = time.monotonic()
                    seen = tail + data
                    self.times.extend([now] * seen.count(self.MARK))
                    tail = seen[-keep:]
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


@contextlib.contextmanager
def profiled(py_spy_dir: Path | None, server: Server, name: str) -> Iterator[None]:
    """py-spy record on `server` for the block, when asked for and available."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy_dir is None or spy is None:
        if py_spy_dir is not None:
            print("py-spy not found: no profile", flush=True)
        yield
        return
    py_spy_dir.mkdir(parents=True, exist_ok=True)
    output = py_spy_dir / f"{name}.collapsed.txt"
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(server.process.pid),
            "--rate",
            "250",
            "--subprocesses",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
        print(f"profile: {output}", flush=True)


# --- figures ----------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most of `times` (sorted) in any half-open window [t, t + width)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def per_second(times: list[float]) -> list[int]:
    """Counts in consecutive whole seconds from the first time."""
    if not times:
        return []
    counts = [0] * (int(times[-1] - times[0]) + 1)
    for t in times:
        counts[int(t - times[0])] += 1
    return counts


@dataclass
class Cpu:
    """How busy the machine was during a phase, and the CPU seconds of each of our parts."""

    loadavg_before: float = 0.0
    busy: float = 0.0  # share of all cores, everything
    others: float = 0.0  # share taken by work that is not this benchmark's
    service_s: float = 0.0  # the worker or serve (its process group)
    simulator_s: float = 0.0
    postgres_s: float | None = None  # backends of our database; None when not visible


class Watch:
    """Tells this benchmark's CPU time from everyone else's, from /proc.

    Ours: this process, the service's and the simulator's process groups, and the embedded
    Postgres's backends connected to our database. Only those: the embedded server under
    .data/bench may serve other benchmarks' databases at the same time, and its shared
    processes (WAL writer, checkpointer) count as other work. With BENCH_DATABASE_URL the
    Postgres server is not ours to see, and its time is not reported.
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self.postmaster: int | None = None
        self._tick = os.sysconf("SC_CLK_TCK")

    def watch_postgres(self, data_dir: Path) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])

    @staticmethod
    def _machine() -> tuple[int, int]:
        # user nice system idle iowait irq softirq steal
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]

    def _ours(self, groups: dict[str, int]) -> dict[int, tuple[str, int]]:
        """pid -> (which part: a name from `groups`, "postgres" or "bench"; CPU ticks)."""
        names = {pgid: name for name, pgid in groups.items()}
        me = os.getpid()
        title = f" {self.database} "
        found: dict[int, tuple[str, int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                pid, ppid, pgid = int(entry.name), int(rest[1]), int(rest[2])
                ticks = int(rest[11]) + int(rest[12])  # utime + stime
                if pgid in names:
                    found[pid] = (names[pgid], ticks)
                elif pid == me:
                    found[pid] = ("bench", ticks)
                elif ppid == self.postmaster and title in Path(entry.path, "cmdline").read_text(
                    errors="replace"
                ).replace("\0", " "):
                    found[pid] = ("postgres", ticks)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return found

    @contextlib.contextmanager
    def phase(self, service: Server, simulator: Server) -> Iterator[Cpu]:
        """Measure the block."""
        groups = {"service": service.process.pid, "simulator": simulator.process.pid}
        cpu = Cpu(loadavg_before=float(Path("/proc/loadavg").read_text().split()[0]))
        total0, idle0 = self._machine()
        ours0 = self._ours(groups)
        yield cpu
        total1, idle1 = self._machine()
        ours1 = self._ours(groups)
        span = total1 - total0
        if span <= 0:
            return
        spent: dict[str, float] = {}
        for pid, (kind, ticks) in ours1.items():
            spent[kind] = spent.get(kind, 0.0) + ticks - ours0.get(pid, (kind, 0))[1]
        busy = span - (idle1 - idle0)
        cpu.busy = busy / span
        cpu.others = max(0.0, busy - sum(spent.values())) / span
        cpu.service_s = spent.get("service", 0.0) / self._tick
        cpu.simulator_s = spent.get("simulator", 0.0) / self._tick
        if self.postmaster is not None:
            cpu.postgres_s = spent.get("postgres", 0.0) / self._tick


@dataclass
class Rate:
    """A series of times (seconds): its sustained rate and its busiest second."""

    count: int = 0
    span_s: float = 0.0  # first to last
    per_s: float = 0.0  # (count - 1) / span
    max_in_1s: int = 0
    per_second: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, times: list[float]) -> Rate:
        times = sorted(times)
        if len(times) < 2:
            return cls(len(times))
        span = times[-1] - times[0]
        return cls(
            count=len(times),
            span_s=span,
            per_s=(len(times) - 1) / span if span else 0.0,
            max_in_1s=max_in_window(times),
            per_second=per_second(times),
        )


@dataclass
class Drain:
    """(a) or (b): a worker drains `events` pending events."""

    events: int
    rps: float
    simulator_rate: float
    latency_s: float
    statuses: dict[str, int] = field(default_factory=dict)
    first_fetch_after_start_s: float = 0.0
    fetched_at: Rate = field(default_factory=Rate)  # from events.fetched_at
    calls: Rate | None = None  # from the relay, when there was one
    per_commit: dict[str, float] = field(default_factory=dict)
    get_event_calls: int = 0
    get_event_429: int = 0
    token_requests: int = 0
    cpu: Cpu = field(default_factory=Cpu)

    @property
    def fetched(self) -> int:
        return self.statuses.get("fetched", 0)

    def us_per_event(self, seconds: float | None) -> float | None:
        return seconds / self.fetched * 1e6 if self.fetched and seconds is not None else None


def drain(
    args: argparse.Namespace,
    watch: Watch,
    admin_url: str,
    logs: Path,
    *,
    phase: str,
    events: int,
    rps: float,
    simulator_rate: float,
    latency_s: float,
    seed: int,
    record_calls: bool,
) -> Drain:
    """Load `events` pending events, start a worker, wait until it has fetched them all."""
    result = Drain(events, rps, simulator_rate, latency_s)
    url = asyncio.run(fresh_database(admin_url))
    notifications = build_universe(events, 0.0, seed, UNTIL).notifications()
    # The relay (in `stack`) closes after the servers have stopped.
    with contextlib.ExitStack() as stack, servers() as running:
        simulator = start_simulator(
            logs,
            f"{phase}-simulator",
            events=events,
            seed=seed,
            rate=simulator_rate,
            latency_s=latency_s,
        )
        running.append(simulator)
        wait_until_up(simulator, "/_simulator/stats")
        recorder = stack.enter_context(CallRecorder(simulator.port)) if record_calls else None
        asyncio.run(preload(url, notifications))
        started = asyncio.run(db_now(url))
        env = service_env(url, simulator, rps, recorder.url if recorder else None)
        worker = start_server(f"{phase}-worker", [CLI, "worker"], env, logs)
        running.append(worker)
        with (
            watch.phase(worker, simulator) as cpu,
            profiled(args.py_spy, worker, f"{phase}-worker"),
        ):
            # Generous: (b) needs events / 50 s; anything far beyond is a hang.
            timeout = 60 + 3 * events / min(rps, simulator_rate)
            result.statuses = wait_drained(url, events, worker, timeout)
        result.cpu = cpu
        stats = simulator_stats(simulator)
        if recorder is not None:
            result.calls = Rate.of(list(recorder.times))
    times = asyncio.run(fetched_times(url))
    result.per_commit = asyncio.run(outcomes_per_commit(url))
    result.fetched_at = Rate.of(times)
    if times:
        result.first_fetch_after_start_s = times[0] - started
    result.get_event_calls = sum(
        n for key, n in stats.get("by_status", {}).items() if key.startswith("get_event ")
    )
    result.get_event_429 = calls_with_status(stats, "get_event", 429)
    result.token_requests = int(stats.get("token_requests", 0))
    return result


# --- lag --------------------------------------------------------------------------------


@dataclass
class Lag:
    """(c): webhooks at a steady rate into `serve`; 2xx to stored detail."""

    rate: float
    duration_s: float
    warmup_s: float
    rps: float
    latency_s: float
    sent: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    measured: int = 0
    unfetched: int = 0
    lag_db_ms: dict[str, float] = field(default_factory=dict)
    lag_client_ms: dict[str, float] = field(default_factory=dict)
    send_lag_ms: dict[str, float] = field(default_factory=dict)
    # p50 of the lag of the first and of the last fifth of the measured webhooks.
    lag_trend_ms: tuple[float, float] = (0.0, 0.0)
    get_event_429: int = 0
    cpu: Cpu = field(default_factory=Cpu)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.answers.items() if not status.startswith("2"))


@dataclass
class Sent:
    event_id: str
    status: str
    answered_at: float  # time.time() when the answer arrived
    late_s: float  # how long after its scheduled time the request went out


async def send_paced(url: str, notifications: list[dict[str, Any]], rate: float) -> list[Sent]:
    """Open loop: notification i goes at start + i / rate whatever happened before it."""
    loop = asyncio.get_running_loop()
    headers = {"Content-Type": "application/json", API_KEY_HEADER: API_KEY}
    async with httpx.AsyncClient(
        timeout=10.0, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
    ) as client:
        start = loop.time() + 0.2

        async def one(i: int, notification: dict[str, Any]) -> Sent:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            late = loop.time() - due
            try:
                answer = await client.post(
                    url, content=msgspec.json.encode(notification), headers=headers
                )
                status = str(answer.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            return Sent(str(notification["id"]), status, time.time(), late)

        return await asyncio.gather(*(one(i, n) for i, n in enumerate(notifications)))


def lag(
    args: argparse.Namespace,
    watch: Watch,
    admin_url: str,
    logs: Path,
    *,
    phase: str,
    rps: float,
    seed: int,
) -> Lag:
    result = Lag(args.c_rate, args.c_duration, args.c_warmup, rps, args.c_latency)
    warm = int(args.c_warmup * args.c_rate)
    total = warm + int(args.c_duration * args.c_rate)
    url = asyncio.run(fresh_database(admin_url))
    notifications = build_universe(total, 0.0, seed, UNTIL).notifications()
    with servers() as running:
        simulator = start_simulator(
            logs,
            f"{phase}-simulator",
            events=total,
            seed=seed,
            rate=UNLIMITED_RATE,
            latency_s=args.c_latency,
        )
        running.append(simulator)
        wait_until_up(simulator, "/_simulator/stats")
        serve = start_server(
            f"{phase}-serve", [CLI, "serve"], service_env(url, simulator, rps), logs
        )
        running.append(serve)
        wait_until_up(serve, "/health/ready")
        with (
            watch.phase(serve, simulator) as cpu,
            profiled(args.py_spy, serve, f"{phase}-serve"),
        ):
            sent = asyncio.run(send_paced(serve.url + INTAKE_PATH, notifications, args.c_rate))
            accepted = sum(1 for s in sent if s.status.startswith("2"))
            # Whatever got a 2xx must be fetched; wait for it (bounded), then read the times.
            with contextlib.suppress(RuntimeError):
                wait_drained(url, accepted, serve, 60 + 3 * total / rps)
        result.cpu = cpu
        result.get_event_429 = calls_with_status(simulator_stats(simulator), "get_event", 429)
        for server in running:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} died during the run:\n{server.tail()}")
    stored = asyncio.run(receipt_and_fetch(url))
    result.sent = len(sent)
    for s in sent:
        result.answers[s.status] = result.answers.get(s.status, 0) + 1
    lag_db: list[float] = []
    lag_client: list[float] = []
    for s in sent[warm:]:
        if not s.status.startswith("2"):
            continue
        received, fetched = stored.get(s.event_id, (None, None))
        if received is None or fetched is None:
            result.unfetched += 1
            continue
        lag_db.append((fetched - received) * 1000)
        lag_client.append((fetched - s.answered_at) * 1000)
    result.measured = len(lag_db)
    fifth = max(1, len(lag_db) // 5)
    if lag_db:
        result.lag_trend_ms = (
            percentiles(lag_db[:fifth])["p50"],
            percentiles(lag_db[-fifth:])["p50"],
        )
    result.lag_db_ms = percentiles(lag_db)
    result.lag_client_ms = percentiles(lag_client)
    result.send_lag_ms = percentiles([s.late_s * 1000 for s in sent[warm:]])
    return result


# --- the run ----------------------------------------------------------------------------


@dataclass
class Measured:
    a: Drain
    b: Drain
    c: Lag
    c50: Lag | None

    @property
    def phases(self) -> dict[str, Cpu]:
        found = {"a": self.a.cpu, "b": self.b.cpu, "c": self.c.cpu}
        if self.c50 is not None:
            found["c'"] = self.c50.cpu
        return found


def measure(args: argparse.Namespace, watch: Watch, admin_url: str, logs: Path) -> Measured:
    print(f"(a) {args.a_events:,} pending events, no latency, PAXOS_API_RPS=10000 ...", flush=True)
    a = drain(
        args,
        watch,
        admin_url,
        logs,
        phase="a",
        events=args.a_events,
        rps=A_RPS,
        simulator_rate=UNLIMITED_RATE,
        latency_s=0.0,
        seed=101,
        record_calls=False,
    )
    print(f"(b) {args.b_events:,} pending events, 100 ms latency, PAXOS_API_RPS=50 ...", flush=True)
    b = drain(
        args,
        watch,
        admin_url,
        logs,
        phase="b",
        events=args.b_events,
        rps=LIMIT_RPS,
        simulator_rate=LIMIT_RPS,
        latency_s=0.1,
        seed=202,
        record_calls=True,
    )
    print(
        f"(c) {args.c_rate:g} webhooks/s for {args.c_warmup:g} + {args.c_duration:g} s into "
        f"serve, {args.c_latency * 1000:g} ms latency, PAXOS_API_RPS=1000 ...",
        flush=True,
    )
    c = lag(args, watch, admin_url, logs, phase="c", rps=A_RPS, seed=303)
    c50 = None
    if not args.skip_c50:
        print("(c') the same at PAXOS_API_RPS=50 ...", flush=True)
        c50 = lag(args, watch, admin_url, logs, phase="c50", rps=LIMIT_RPS, seed=404)
    return Measured(a, b, c, c50)


def cpu_row(label: str, cpu: Cpu, events: int) -> Row:
    def per(seconds: float | None) -> str:
        return f"{seconds / events * 1e6:.0f}" if events and seconds is not None else "n/a"

    return Row(
        label,
        f"{per(cpu.service_s)} / {per(cpu.simulator_s)} / {per(cpu.postgres_s)} us",
        "",
        "info",
    )


def lag_rows(c: Lag, name: str, rps: float, target: bool) -> list[Row]:
    db, client = c.lag_db_ms, c.lag_client_ms
    p95 = db.get("p95", math.inf)
    rows = [
        Row(
            f"{name} lag 2xx -> stored detail, {c.rate:g}/s, PAXOS_API_RPS={rps:g}: p50",
            f"{db.get('p50', math.inf):.0f} ms",
            "",
            "info",
        ),
        Row(
            "    p95 (database clock: fetched_at - first_received_at)",
            f"{p95:.0f} ms",
            f"<= {TARGET_LAG_P95_MS:g} ms" if target else "",
            verdict(p95 <= TARGET_LAG_P95_MS) if target else "info",
        ),
        Row(
            "    p99 / max",
            f"{db.get('p99', math.inf):.0f} / {db.get('max', math.inf):.0f} ms",
            "",
            "info",
        ),
        Row(
            "    lag p50, first / last fifth of the run",
            f"{c.lag_trend_ms[0]:.0f} / {c.lag_trend_ms[1]:.0f} ms",
            "",
            "info",
        ),
        Row(
            "    client clock (fetched_at - 2xx received): p50 / p95",
            f"{client.get('p50', math.inf):.0f} / {client.get('p95', math.inf):.0f} ms",
            "",
            "info",
        ),
        Row(
            "    webhooks sent / non-2xx / measured / not fetched",
            f"{c.sent:,} / {c.non_2xx} / {c.measured:,} / {c.unfetched}",
            "0 non-2xx, all fetched",
            verdict(c.non_2xx == 0 and c.unfetched == 0 and c.measured > 0),
        ),
    ]
    if not target:
        rows = [Row(r.figure, r.value, r.target, "info") for r in rows]
    return rows


def table_rows(m: Measured) -> list[Row]:
    a, b, c = m.a, m.b, m.c
    calls = b.calls or Rate()
    rows = [
        Row(
            "(a) fetch throughput, no latency, PAXOS_API_RPS=10000",
            f"{a.fetched_at.per_s:,.0f} events/s",
            f">= {TARGET_THROUGHPUT:,.0f}",
            verdict(a.fetched_at.per_s >= TARGET_THROUGHPUT),
        ),
        Row(
            "    ceiling set by the limiter (PAXOS_API_RPS x margin)",
            f"{A_RPS * LIMITER_MARGIN:,.0f} events/s",
            "",
            "info",
        ),
        Row(
            "    events fetched / loaded",
            f"{a.fetched:,} / {a.events:,}",
            "all",
            verdict(a.fetched == a.events),
        ),
        Row(
            "    first..last fetched_at / first fetch after start",
            f"{a.fetched_at.span_s:.2f} s / {a.first_fetch_after_start_s:.2f} s",
            "",
            "info",
        ),
        cpu_row("    CPU per event: worker / simulator / Postgres", a.cpu, a.fetched),
        Row(
            "    outcomes per commit: mean / max",
            f"{a.per_commit.get('mean', 0):.1f} / {a.per_commit.get('max', 0):.0f}",
            "",
            "info",
        ),
        Row(
            "(b) sustained API calls/s, 100 ms latency, RPS=50",
            f"{calls.per_s:.1f} calls/s",
            f">= {TARGET_SUSTAINED:g}",
            verdict(calls.per_s >= TARGET_SUSTAINED),
        ),
        Row(
            "    most calls in any 1 s window (call times)",
            str(calls.max_in_1s),
            f"<= {LIMIT_RPS:g}",
            verdict(0 < calls.max_in_1s <= LIMIT_RPS),
        ),
        Row(
            "    simulator: Get Event calls / 429 answers",
            f"{b.get_event_calls:,} / {b.get_event_429}",
            "0 x 429",
            verdict(b.get_event_429 == 0),
        ),
        Row(
            "    events fetched / loaded",
            f"{b.fetched:,} / {b.events:,}",
            "all",
            verdict(b.fetched == b.events),
        ),
        Row(
            "    from fetched_at: events/s / most in any 1 s",
            f"{b.fetched_at.per_s:.1f} / {b.fetched_at.max_in_1s}",
            "",
            "info",
        ),
        Row(
            "    outcomes per commit: mean / max",
            f"{b.per_commit.get('mean', 0):.1f} / {b.per_commit.get('max', 0):.0f}",
            "",
            "info",
        ),
        *lag_rows(c, "(c)", c.rps, target=True),
        cpu_row("    CPU per webhook: serve / simulator / Postgres", c.cpu, c.sent),
    ]
    if m.c50 is not None:
        rows += lag_rows(m.c50, "(c')", m.c50.rps, target=False)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fetch", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    p.add_argument("--a-events", type=int, help="pending events for (a) (default 20000)")
    p.add_argument("--b-events", type=int, help="pending events for (b) (default 1500, 30 s)")
    p.add_argument("--c-rate", type=float, default=50.0, help="webhooks/s for (c)")
    p.add_argument("--c-duration", type=float, help="measured seconds of (c) (default 20)")
    p.add_argument("--c-warmup", type=float, default=2.0, help="seconds of (c) not counted")
    p.add_argument(
        "--c-latency", type=float, default=0.02, help="simulated latency for (c), s (0.02)"
    )
    p.add_argument("--skip-c50", action="store_true", help="leave out (c') at PAXOS_API_RPS=50")
    p.add_argument(
        "--py-spy", type=Path, help="record py-spy profiles (collapsed stacks) of each phase here"
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args(argv)
    quick = args.quick
    args.a_events = args.a_events or (3000 if quick else 20_000)
    args.b_events = args.b_events or (400 if quick else 1500)
    args.c_duration = args.c_duration or (8.0 if quick else 20.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, Python {info['python']}", flush=True)

    watch = Watch(BENCH_DATABASE)
    admin_url = server_url()
    if not os.environ.get("BENCH_DATABASE_URL"):
        watch.watch_postgres(ROOT / ".data" / "bench" / "pg")
    logs = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        pg = asyncio.run(pg_settings(admin_url))
        print(f"postgres {pg.get('server_version')}: database {BENCH_DATABASE}", flush=True)
        m = measure(args, watch, admin_url, logs)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(drop_database(admin_url))
        shutil.rmtree(logs, ignore_errors=True)

    rows = table_rows(m)
    passed = all(r.result != "FAIL" for r in rows)
    print()
    print_report(
        started_at,
        info,
        pg,
        f"load: (a) {args.a_events:,} events; (b) {args.b_events:,} events; (c) "
        f"{args.c_rate:g} webhooks/s for {args.c_warmup:g} s warm-up + {args.c_duration:g} s, "
        f"{args.c_latency * 1000:g} ms simulated latency",
        m.phases,
        rows,
    )

    def drain_doc(d: Drain) -> dict[str, Any]:
        return asdict(d) | {
            "fetched": d.fetched,
            "cpu_us_per_event": {
                "service": d.us_per_event(d.cpu.service_s),
                "simulator": d.us_per_event(d.cpu.simulator_s),
                "postgres": d.us_per_event(d.cpu.postgres_s),
            },
        }

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": {**info, "postgres": pg},
        "load": {
            "quick": args.quick,
            "a_events": args.a_events,
            "b_events": args.b_events,
            "c_rate": args.c_rate,
            "c_warmup_s": args.c_warmup,
            "c_duration_s": args.c_duration,
            "c_latency_s": args.c_latency,
        },
        "figures": {
            "a_fetch_per_s": m.a.fetched_at.per_s,
            "a_limiter_ceiling_per_s": A_RPS * LIMITER_MARGIN,
            "b_sustained_calls_per_s": m.b.calls.per_s if m.b.calls else None,
            "b_max_calls_in_any_1s": m.b.calls.max_in_1s if m.b.calls else None,
            "b_simulator_429": m.b.get_event_429,
            "c_lag_p50_ms": m.c.lag_db_ms.get("p50"),
            "c_lag_p95_ms": m.c.lag_db_ms.get("p95"),
            "c50_lag_p50_ms": m.c50.lag_db_ms.get("p50") if m.c50 else None,
            "c50_lag_p95_ms": m.c50.lag_db_ms.get("p95") if m.c50 else None,
        },
        "method": {
            "a": "(fetched - 1) / (last - first events.fetched_at)",
            "b": "call times noted by a TCP relay in front of the simulator (its stats give "
            "counts only); 429s from the simulator's stats; fetched_at figures for comparison",
            "c": "events.fetched_at - events.first_received_at (database clock)",
        },
        "runs": {
            "a": drain_doc(m.a),
            "b": drain_doc(m.b),
            "c": asdict(m.c),
            "c50": asdict(m.c50) if m.c50 else None,
        },
        "table": [asdict(r) for r in rows],
        "pass": passed,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"\nwritten to {shown}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
