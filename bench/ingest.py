"""Webhook intake benchmark: how many Paxos notifications one `serve` process stores, and
how that compares with the least a consumer on the same stack could do.

    .venv/bin/python -m bench.ingest            # about 4 minutes; needs `wrk` on the PATH

One run starts, side by side on the same embedded PostgreSQL (a fresh database each):

- `serve`: the real `paxos-events serve --no-background` (API-key auth, group commit);
- `ref-group`: `bench.reference.group_commit`, a minimal consumer on the same stack (Litestar,
  msgspec, asyncpg, the same key check and validation) with group commit into one table;
- `ref-request`: `bench.reference.commit_per_request`, the same with one commit per request;
- `ceiling`: `bench.ceiling`, the service's own intake path storing nothing;

all served by the ASGI server of `serve`, and measures:

(a) stored/s: `wrk` (1 thread, 64 connections) posts notifications, each with a new random
    id, to each server in turn, ROUNDS times (the order rotates every round, so a drift of
    the machine's load lands on every server alike); stored/s is the rows its table gained,
    counted in the database, per second of the run. Medians and the spread (min-max) of the
    rounds. Targets: serve >= 0.9x ref-group and >= 2x ref-request (medians). Every 2xx must
    be stored, and no answer may be non-2xx. "Server CPU per stored webhook" is the server
    process group's own CPU time (/proc/<pid>/stat) divided by what it stored: where the
    ratio goes even when the machine is not quiet.
(b) ceiling/s: the same load against `bench.ceiling`: what the path costs without the store.
(c) ratio serve/ceiling: the share of the ceiling the durable path keeps, beside
    ref-group/ceiling, the share a minimal consumer that stores keeps. Reported, no longer
    a target: its 0.8 (set when the ceiling answered ~7,400/s, 2026-11-27) is out of reach of
    any consumer that stores at 25,000/s, 39 us an answer (ref-group kept 0.42, 2026-12-05);
    the references are the store's yardsticks (#20).
(d) duplicates/s: the same notification over and over (Paxos retrying), against serve;
    each answer is "duplicate" and bumps a counter on one row.
(e) p50 / p99 latency at a steady 100 requests/s (new ids), measured by a paced open-loop
    client from each request's *scheduled* send time, so a slow answer cannot hide the
    requests queued behind it (no coordinated omission). Target p99 <= 10 ms. It runs
    first, so the saturation runs' aftermath (autovacuum, dirty buffers) does not land in it.

`--contenders` picks other servers for the same rounds, e.g. `serve@granian`,
`serve@uvicorn-h11` (the service's app under another ASGI server: bench.reference.serving),
`ref-group@granian`. `--hold` keeps the servers up after the run (to attach py-spy).

How to read the figures: these are saturation rates on this machine, with `wrk`, the servers
and Postgres sharing its cores, so they say more about each other (the ratios) than about a
deployment. "notifications per commit" comes from the journal's transaction ids: how much
group commit shared during (a). The "cpu per phase" line says how busy the whole machine was
and how much of that was other work; figures measured beside other work understate the
servers (a warning says so), and only a quiet machine gives figures worth publishing.

Results go to stdout as a table and to bench/results/ingest.json. The databases are on the
embedded server under .data/bench unless BENCH_DATABASE_URL names another server (databases
`bench_ingest`, `bench_ingest_baseline`, `bench_ref_group`, `bench_ref_request` are created on
it, one per contender, and dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import database
from bench.database import server_url
from service.db.engine import plain_url, with_database

ROOT = Path(__file__).resolve().parent.parent
WRK_DIR = ROOT / "bench" / "wrk"
RESULTS = ROOT / "bench" / "results" / "ingest.json"
BENCH_DATABASE = "bench_ingest"
# `baseline` writes its own database, migrated by this checkout as `serve`'s is: were it to
# share `serve`'s, each would store into a journal twice the size the references' hold.
BASELINE_DATABASE = "bench_ingest_baseline"
# The reference consumers' databases: one table each (bench.reference.common.TABLE).
REFERENCE_DATABASES = {"ref-group": "bench_ref_group", "ref-request": "bench_ref_request"}
DATABASES = (BENCH_DATABASE, BASELINE_DATABASE, *REFERENCE_DATABASES.values())
API_KEY = "bench-api-key-00001"
API_KEY_HEADER = "X-Api-Key"
READ_TOKEN = "bench-read-token"
INTAKE_PATH = "/webhooks/paxos"

# Issue #20: the service against the references, stored/s medians of one run.
TARGET_VS_GROUP = 0.9
TARGET_VS_REQUEST = 2.0
TARGET_P99_MS = 10.0
# DESIGN.md §6: one process must take everything Paxos sends, 10 webhooks x 100/s.
TARGET_ACCEPTED = 1000.0


# --- the machine ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@dataclass
class Usage:
    """How busy the machine was during one phase: shares of all its cores, and CPU seconds."""

    loadavg_before: float = 0.0
    busy: float = 0.0  # everything
    others: float = 0.0  # processes that are not this benchmark's (other work on the box)
    server_cpu_s: float = 0.0  # the server under test (its process group)
    postgres_cpu_s: float = 0.0  # the embedded Postgres, all its processes


class MachineWatch:
    """Tells the benchmark's CPU time from everyone else's, from /proc.

    Ours: this process and its reaped children (wrk), the servers' process groups, and the
    embedded Postgres (its postmaster and every backend). With BENCH_DATABASE_URL the
    Postgres server is not ours to see, so its time counts as "others".
    """

    def __init__(self) -> None:
        self.pgids: set[int] = set()
        self.postmaster: int | None = None
        self._tick = os.sysconf("SC_CLK_TCK")

    def watch_postgres(self, data_dir: Path) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])

    @staticmethod
    def _machine() -> tuple[int, int]:
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]

    def _ours(self) -> dict[int, tuple[str, int]]:
        """pid -> (what it is: a server's pgid, "postgres" or "bench"; CPU ticks so far)."""
        me = os.getpid()
        found: dict[int, tuple[str, int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            rest = stat[stat.rindex(")") + 2 :].split()
            pid, ppid, pgid = int(entry.name), int(rest[1]), int(rest[2])
            ticks = int(rest[11]) + int(rest[12])  # utime + stime
            if pgid in self.pgids:
                found[pid] = (str(pgid), ticks)
            elif self.postmaster is not None and self.postmaster in (pid, ppid):
                if pid == self.postmaster or self._serves_us(entry.path):
                    found[pid] = ("postgres", ticks)
            elif pid == me:
                found[pid] = ("bench", ticks)
        return found

    @staticmethod
    def _serves_us(proc: str) -> bool:
        """Whether a process of the watched server works for the bench database.

        A client backend's title names its database ("postgres: user db [local] idle"), and
        another database's backends on the same server (bench.query shares .data/bench) are
        other work; the reference consumers' databases are ours. The server's own helpers
        (walwriter, checkpointer, ...) count as ours.
        """
        try:
            title = Path(proc, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        words = title.split()
        if len(words) >= 4 and (words[3] == "[local]" or "(" in words[3]):
            return words[2] in DATABASES
        if "autovacuum worker" in title:
            return any(name in title for name in DATABASES) or len(words) <= 3
        return True

    def _children(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (usage.ru_utime + usage.ru_stime) * self._tick

    @contextlib.contextmanager
    def phase(self, server: int | None = None) -> Iterator[Usage]:
        """Measure the block; `server` is the pid (and pgid) of the server under test."""
        usage = Usage(loadavg_before=float(Path("/proc/loadavg").read_text().split()[0]))
        total0, idle0 = self._machine()
        ours0, children0 = self._ours(), self._children()
        yield usage
        total1, idle1 = self._machine()
        ours1, children1 = self._ours(), self._children()
        span = total1 - total0
        if span <= 0:
            return
        spent: dict[str, float] = {}
        for pid, (kind, ticks) in ours1.items():
            before = ours0.get(pid, (kind, 0))[1]
            spent[kind] = spent.get(kind, 0.0) + ticks - before
        busy = span - (idle1 - idle0)
        ours = sum(spent.values()) + children1 - children0
        usage.busy = busy / span
        usage.others = max(0.0, busy - ours) / span
        usage.server_cpu_s = spent.get(str(server), 0.0) / self._tick
        usage.postgres_cpu_s = spent.get("postgres", 0.0) / self._tick


# --- the database -----------------------------------------------------------------------


async def recreate_database(admin_url: str) -> dict[str, str]:
    """Drop and create the bench databases (the service's migrated, the references' empty:
    each creates its table), and return the server's settings."""
    await database.recreate(admin_url, BENCH_DATABASE)
    await database.recreate(admin_url, BASELINE_DATABASE)
    admin = await asyncpg.connect(plain_url(with_database(admin_url, "postgres")))
    try:
        for name in REFERENCE_DATABASES.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(plain_url(with_database(admin_url, BENCH_DATABASE)))
    try:
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            [
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "commit_delay",
                "shared_buffers",
                "max_wal_size",
                "max_connections",
            ],
        )
    finally:
        await conn.close()
    return {r["name"]: r["setting"] + (f" x {r['unit']}" if r["unit"] else "") for r in rows}


async def drop_database(admin_url: str) -> None:
    for name in DATABASES:
        await database.drop(admin_url, name)


async def stored_rows(url: str, table: str) -> int:
    """Rows in `table` (the service's `events`, a reference's `webhooks`)."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 - ours
    finally:
        await conn.close()


async def settled_rows(url: str, table: str, *, quiet_s: float = 0.3, limit_s: float = 10.0) -> int:
    """`stored_rows` once the count stops moving: requests wrk abandoned may still commit."""
    last = await stored_rows(url, table)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = await stored_rows(url, table)
        if now == last:
            return now
        last = now
    return last


@dataclass
class Mark:
    """Where the tables stood before a phase."""

    events: int
    position: int


async def mark(url: str) -> Mark:
    conn = await asyncpg.connect(plain_url(url))
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM events) AS events,"
            " (SELECT coalesce(max(position), 0) FROM journal) AS position"
        )
    finally:
        await conn.close()
    return Mark(row["events"], row["position"])


async def settled_mark(url: str, *, quiet_s: float = 0.5, limit_s: float = 10.0) -> Mark:
    """`mark` once the counts stop moving: requests wrk abandoned may still commit."""
    last = await mark(url)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = await mark(url)
        if now == last:
            return now
        last = now
    return last


async def batch_sizes(url: str, since: Mark) -> dict[str, float]:
    """Notifications per commit after `since`: the journal rows of one transaction share an
    xid, so this is exactly how the group committer batched new ids."""
    conn = await asyncpg.connect(plain_url(url))
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS commits, coalesce(avg(n), 0) AS mean,
                   coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY n), 0) AS p50,
                   coalesce(percentile_disc(0.99) WITHIN GROUP (ORDER BY n), 0) AS p99,
                   coalesce(max(n), 0) AS max
            FROM (SELECT count(*) AS n FROM journal
                  WHERE position > $1 AND kind = 'notification' GROUP BY xid) AS b
            """,
            since.position,
        )
    finally:
        await conn.close()
    return {k: float(v) for k, v in row.items()}


async def deliveries(url: str, event_id: uuid.UUID) -> int:
    conn = await asyncpg.connect(plain_url(url))
    try:
        n = await conn.fetchval("SELECT deliveries FROM events WHERE event_id = $1", event_id)
    finally:
        await conn.close()
    return int(n or 0)


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server subprocess in its own process group, with its output in a log file."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_server(
    name: str, argv: list[str], env: dict[str, str], logs: Path, *, cwd: Path = ROOT
) -> Server:
    log = logs / f"{name}.log"
    port = int(env["PORT"])
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches every child
        )
    return Server(name, port, process, log)


def wait_until_up(server: Server, path: str, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited ({server.process.returncode}):\n{server.tail()}"
            )
        try:
            answer = httpx.get(server.url + path, timeout=2.0)
            if answer.status_code < 500 and answer.status_code != 404:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not up after {timeout_s}s ({last}):\n{server.tail()}")


def server_env(database_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAXOS_", "WEBHOOK_", "API_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEBHOOK_AUTH": "api_key",
            "WEBHOOK_API_KEY_HEADER": API_KEY_HEADER,
            "WEBHOOK_API_KEYS": API_KEY,
            "API_READ_TOKENS": READ_TOKEN,
            # Credentials keep `serve` out of demo mode; the URLs point nowhere (the discard
            # port) so nothing in the background ever calls the real Paxos sandbox.
            "PAXOS_CLIENT_ID": "bench-client",
            "PAXOS_CLIENT_SECRET": "bench-secret",
            "PAXOS_API_URL": "http://127.0.0.1:9/v2",
            "PAXOS_TOKEN_URL": "http://127.0.0.1:9/oauth2/token",
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "console",
        }
    )
    return env


def serve_argv() -> list[str]:
    cli = str(Path(sys.executable).parent / "paxos-events")
    argv = [cli, "serve"]
    # Once background work exists, keep it out of an intake benchmark when `serve` allows.
    helptext = subprocess.run(
        [cli, "serve", "--help"], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout
    if "--no-background" in helptext:
        argv.append("--no-background")
    return argv


# --- wrk --------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    machine: Usage

    @property
    def ok(self) -> int:
        return self.requests - self.errors["status"]

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")

    @property
    def server_us_per_request(self) -> float:
        """The server's own CPU time per answer: what the figures above divide up."""
        return self.machine.server_cpu_s / self.requests * 1e6 if self.requests else 0.0

    @property
    def postgres_us_per_request(self) -> float:
        return self.machine.postgres_cpu_s / self.requests * 1e6 if self.requests else 0.0


@dataclass
class Load:
    threads: int
    connections: int
    warmup_s: int
    duration_s: int


def wrk(
    watch: MachineWatch, script: str, server: Server, load: Load, args: list[str], *, seconds: int
) -> WrkResult:
    argv = [
        "wrk",
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds}s",
        "--timeout",
        "15s",
        "-s",
        str(WRK_DIR / script),
        server.url + INTAKE_PATH,
        "--",
        *args,
    ]
    with watch.phase(server.process.pid) as usage:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    match = re.search(r"^WRK_JSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(match.group(1))
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        errors=raw["errors"],
        latency_ms={k: v / 1000 for k, v in raw["latency_us"].items()},
        machine=usage,
    )


def wrk_run(
    watch: MachineWatch, script: str, server: Server, load: Load, args: list[str]
) -> WrkResult:
    """A warm-up (discarded), then the measured run."""
    if load.warmup_s:
        wrk(watch, script, server, load, args, seconds=load.warmup_s)
    return wrk(watch, script, server, load, args, seconds=load.duration_s)


def seed() -> str:
    return str(int.from_bytes(os.urandom(3), "big"))


# --- paced latency ----------------------------------------------------------------------


@dataclass
class Paced:
    rate: float
    duration_s: float
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    send_lag_ms: dict[str, float] = field(default_factory=dict)
    # How the slow answers cluster: many in few seconds is one stall, not a slow path.
    over_target: int = 0
    seconds_with_one_over_target: int = 0
    connections: int = 0
    machine: Usage = field(default_factory=Usage)

    @property
    def _all_sent(self) -> float:
        return self.sent / self.duration_s * (self.duration_s + PACED_WARMUP_S)

    @property
    def server_us_per_request(self) -> float:
        return self.machine.server_cpu_s / self._all_sent * 1e6 if self.sent else 0.0

    @property
    def postgres_us_per_request(self) -> float:
        return self.machine.postgres_cpu_s / self._all_sent * 1e6 if self.sent else 0.0


PACED_WARMUP_S = 3.0


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1]}


def _request_bytes(port: int, event_id: uuid.UUID) -> bytes:
    body = (
        f'{{"id": "{event_id}", "type": "identity.approved", "source": "com.paxos", '
        f'"time": "2026-01-07T14:30:02Z", "object": "event", "is_test": false}}'
    ).encode()
    head = (
        f"POST {INTAKE_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{API_KEY_HEADER}: {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _paced(port: int, rate: float, duration_s: float) -> Paced:
    """An open-loop client: request i is due at start + i/rate whatever happened before it,
    and its latency counts from then, so a stall shows in every request it delayed (no
    coordinated omission).

    A thread keeps the schedule with `time.sleep` (microseconds late, where the event loop's
    timers are up to a millisecond late) and hands each request to the loop, which sends it
    on an idle keep-alive connection, or a new one when all are busy. A bare HTTP/1.1 client
    over asyncio streams keeps the client's own cost far below the server's.
    """
    loop = asyncio.get_running_loop()
    # (reader, writer, when it was last used); the server closes a connection idle for its
    # keep-alive timeout (uvicorn: 5 s), so one idle for a while is dropped, not reused.
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened: list[asyncio.StreamWriter] = []
    latency: list[float] = []
    lag: list[float] = []
    statuses: dict[str, int] = {}
    tasks: list[asyncio.Task[None]] = []
    slow_seconds: set[int] = set()
    start = time.monotonic() + 0.1  # time.monotonic is the event loop's clock too
    total = int((PACED_WARMUP_S + duration_s) * rate)
    measured_from = int(PACED_WARMUP_S * rate)

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            reader, writer, used = idle.pop()
            if not reader.at_eof() and time.monotonic() - used < 2.0:
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened.append(writer)
        return reader, writer

    async def one(i: int, due: float) -> None:
        payload = _request_bytes(port, uuid.uuid4())
        try:
            reader, writer = await connection()
            sent = time.monotonic()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12].decode()
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            sent, status = due, "error"
        else:
            idle.append((reader, writer, time.monotonic()))
        finished = time.monotonic()
        if i >= measured_from:
            if (finished - due) * 1000 > TARGET_P99_MS:
                slow_seconds.add(int((due - start) - PACED_WARMUP_S))
            latency.append((finished - due) * 1000)
            lag.append((sent - due) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    def launch(i: int, due: float) -> None:
        tasks.append(loop.create_task(one(i, due)))

    def keep_schedule() -> None:
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, i, due)

    await asyncio.to_thread(keep_schedule)
    await asyncio.sleep(0)  # the last launch
    await asyncio.gather(*tasks)
    for writer in opened:
        writer.close()
    return Paced(
        rate=rate,
        duration_s=duration_s,
        sent=len(latency),
        statuses=statuses,
        latency_ms=_percentiles(latency),
        send_lag_ms=_percentiles(lag),
        over_target=sum(1 for ms in latency if ms > TARGET_P99_MS),
        seconds_with_one_over_target=len(slow_seconds),
        connections=len(opened),
    )


def paced(watch: MachineWatch, server: Server, rate: float, duration_s: float) -> Paced:
    """(e): `rate` requests/s for `duration_s`, after a few seconds at that rate not counted."""
    with watch.phase(server.process.pid) as usage:
        result = asyncio.run(_paced(server.port, rate, duration_s))
    result.machine = usage
    return result


# --- the run ----------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    target: str
    result: str  # "pass" | "FAIL" | "info"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def table(rows: list[Row]) -> str:
    headers = Row("figure", "value", "target", "result")
    widths = [max(len(getattr(r, f)) for r in [headers, *rows]) for f in asdict(headers)]
    lines = []
    for n, r in enumerate([headers, *rows]):
        cells = [getattr(r, f).ljust(w) for f, w in zip(asdict(headers), widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_report(
    started_at: datetime,
    info: dict[str, Any],
    pg: dict[str, str],
    load: str,
    phases: Mapping[str, Any],
    rows: list[Row],
) -> None:
    """The heading every load benchmark prints (date, machine, load, how busy), then rows."""
    print(f"date: {started_at:%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {info['nproc']} cpus, {info['cpu']}, Python {info['python']}, "
        f"PostgreSQL {pg.get('server_version')} (synchronous_commit="
        f"{pg.get('synchronous_commit')}, fsync={pg.get('fsync')})"
    )
    print(load)
    print(
        "cpu per phase (machine busy / by other work; 1-min loadavg before): "
        + ", ".join(
            f"{k} {u.busy:.0%}/{u.others:.0%} ({u.loadavg_before:.2f})" for k, u in phases.items()
        )
    )
    busiest = max(u.others for u in phases.values())
    if busiest > 0.05:
        print(
            f"WARNING: other work took up to {busiest:.0%} of the machine during a phase: "
            "these figures understate the service; rerun on a quiet machine"
        )
    print()
    print(table(rows))


@contextlib.contextmanager
def servers() -> Iterator[list[Server]]:
    """Every server started inside is stopped on the way out, however the run ends."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


# --- the contenders -----------------------------------------------------------------------

# The ASGI server `paxos-events serve` runs (service.web.serving); the references run on it too.
SERVE_SERVER = "uvicorn"
DEFAULT_CONTENDERS = ("serve", "ref-group", "ref-request", "ceiling")
_TARGETS = {
    "serve": "bench.reference.serving:service_app",
    "baseline": "bench.reference.serving:service_app",
    "ref-group": "bench.reference.group_commit:app_from_env",
    "ref-request": "bench.reference.commit_per_request:app_from_env",
    "ceiling": "bench.reference.serving:ceiling_app",
}


@dataclass(frozen=True)
class Contender:
    """A server of the rounds: what it is, how it starts, where it stores."""

    name: str  # "serve", "ref-group", "serve@granian", ...
    argv: list[str]
    database: str | None  # None: stores nothing (the ceiling)
    table: str
    ready_path: str
    tree: Path | None = None  # another checkout's code (`--baseline`), else this one

    @property
    def kind(self) -> str:
        return self.name.partition("@")[0]


def contender(name: str, baseline: Path | None = None) -> Contender:
    kind, _, server = name.partition("@")
    if kind not in _TARGETS:
        raise SystemExit(f"unknown contender {name!r}: one of {', '.join(_TARGETS)}[@server]")
    if kind == "baseline" and baseline is None:
        raise SystemExit("the baseline contender needs --baseline DIR")
    server = server or SERVE_SERVER
    if kind == "baseline":
        argv = [sys.executable, "-m", "bench.reference.serving", server, _TARGETS[kind]]
    elif kind == "serve" and server == SERVE_SERVER:
        argv = serve_argv()  # the real command
    elif kind == "ceiling" and server == SERVE_SERVER:
        argv = [sys.executable, "-m", "bench.ceiling"]
    else:
        argv = [sys.executable, "-m", "bench.reference.serving", server, _TARGETS[kind]]
    is_service = kind in ("serve", "baseline")
    return Contender(
        name=name,
        argv=argv,
        database={"serve": BENCH_DATABASE, "baseline": BASELINE_DATABASE}.get(
            kind, REFERENCE_DATABASES.get(kind)
        ),
        table="events" if is_service else "webhooks",
        # Another checkout's migrations may not be the database's: it only needs to be live.
        ready_path={"serve": "/health/ready", "baseline": "/health/live"}.get(kind, INTAKE_PATH),
        tree=baseline if kind == "baseline" else None,
    )


@dataclass
class Run:
    """One contender's measured wrk run in one round."""

    round: int
    wrk: WrkResult
    stored: int | None  # rows its table gained; None for the ceiling

    @property
    def stored_per_s(self) -> float:
        done = self.wrk.ok if self.stored is None else self.stored
        return done / self.wrk.duration_s

    @property
    def cpu_us_per_stored(self) -> float:
        done = self.wrk.ok if self.stored is None else self.stored
        return self.wrk.machine.server_cpu_s / done * 1e6 if done else 0.0

    @property
    def sound(self) -> bool:
        """No non-2xx answer, no socket error, and every 2xx stored."""
        stored_all = self.stored is None or self.stored >= self.wrk.ok
        return self.wrk.errors["status"] == 0 and self.wrk.socket_errors == 0 and stored_all


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """ "median (min-max)" of one figure over the rounds."""
    if len(values) < 2:
        return format(median(values), fmt)
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


@dataclass
class Measured:
    names: list[str]
    runs: dict[str, list[Run]]
    batches: dict[str, float]
    duplicate: WrkResult
    deliveries_counted: int
    steady: Paced
    load_before: str = ""
    load_after: str = ""

    def rate(self, name: str) -> float:
        return median([r.stored_per_s for r in self.runs.get(name, [])])

    def cpu(self, name: str) -> float:
        return median([r.cpu_us_per_stored for r in self.runs.get(name, [])])

    def ratio(self, a: str, b: str) -> float:
        """Median of a/b over the rounds (each pair measured in the same round)."""
        pairs = zip(self.runs.get(a, []), self.runs.get(b, []), strict=False)
        return median([x.stored_per_s / y.stored_per_s for x, y in pairs if y.stored_per_s])

    def ratios(self, a: str, b: str) -> list[float]:
        pairs = zip(self.runs.get(a, []), self.runs.get(b, []), strict=False)
        return [x.stored_per_s / y.stored_per_s for x, y in pairs if y.stored_per_s]

    @property
    def phases(self) -> dict[str, Usage]:
        found: dict[str, Usage] = {"e": self.steady.machine}
        for name in self.names:
            for run in self.runs[name]:
                found[f"{name}#{run.round}"] = run.wrk.machine
        found["d"] = self.duplicate.machine
        return found


def uptime() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(args: argparse.Namespace, watch: MachineWatch, admin_url: str, logs: Path) -> Measured:
    """Start every contender, run the phases, stop them."""
    load = Load(args.threads, args.connections, args.warmup, args.duration)
    key_args = [API_KEY, API_KEY_HEADER]
    contenders = [contender(name, args.baseline) for name in args.contenders.split(",")]
    if contenders[0].kind != "serve":
        raise SystemExit("the first contender must be serve (or serve@SERVER)")
    db_url = with_database(admin_url, BENCH_DATABASE)
    load_before = uptime()
    with servers() as running:
        started: dict[str, Server] = {}
        for c in contenders:
            env = server_env(with_database(admin_url, c.database or BENCH_DATABASE), free_port())
            if c.database is None:
                del env["DATABASE_URL"]  # it stores nothing
            env["BENCH_ASGI_SERVER"] = c.name.partition("@")[2] or SERVE_SERVER
            if c.tree is not None:
                env["PYTHONPATH"] = str(c.tree)  # its `service` before the installed one
            started[c.name] = start_server(
                c.name.replace("@", "-"), c.argv, env, logs, cwd=c.tree or ROOT
            )
            running.append(started[c.name])
        watch.pgids.update(server.process.pid for server in running)  # each leads its group
        for c in contenders:
            wait_until_up(started[c.name], c.ready_path)
        real = started[contenders[0].name]

        # (e) first: the rate Paxos sends, not the aftermath (autovacuum, dirty buffers) of
        # the saturation runs below.
        print(f"(e) {args.rate:g} requests/s, paced, against {contenders[0].name} ...", flush=True)
        steady = paced(watch, real, args.rate, args.paced_duration)

        before = asyncio.run(settled_mark(db_url))
        runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
        for round_ in range(1, args.rounds + 1):
            # Rotate the order each round: a drift in the machine's load lands on all alike.
            shift = (round_ - 1) % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                server = started[c.name]
                url = with_database(admin_url, c.database) if c.database else None
                if load.warmup_s:
                    wrk(
                        watch,
                        "new_ids.lua",
                        server,
                        load,
                        [*key_args, seed()],
                        seconds=load.warmup_s,
                    )
                rows0 = asyncio.run(settled_rows(url, c.table)) if url else 0
                result = wrk(
                    watch, "new_ids.lua", server, load, [*key_args, seed()], seconds=load.duration_s
                )
                stored = asyncio.run(settled_rows(url, c.table)) - rows0 if url else None
                run = Run(round_, result, stored)
                runs[c.name].append(run)
                print(
                    f"  round {round_}: {c.name:<22} {run.stored_per_s:>8,.0f} stored/s  "
                    f"{run.cpu_us_per_stored:>5.0f} us server CPU per webhook  "
                    f"({uptime()})",
                    flush=True,
                )
        after = asyncio.run(settled_mark(db_url))
        batches = asyncio.run(batch_sizes(db_url, before))
        del after

        print(f"(d) one id over and over against {contenders[0].name} ...", flush=True)
        dup_id = uuid.uuid4()
        dup_args = [*key_args, str(dup_id)]
        if load.warmup_s:
            wrk(watch, "duplicate.lua", real, load, dup_args, seconds=load.warmup_s)
        counted_before = asyncio.run(deliveries(db_url, dup_id))
        duplicate = wrk(watch, "duplicate.lua", real, load, dup_args, seconds=load.duration_s)
        time.sleep(0.5)  # let requests wrk abandoned at the end commit
        counted = asyncio.run(deliveries(db_url, dup_id)) - counted_before

        if args.hold:
            where = ", ".join(f"{n} pid {s.process.pid} at {s.url}" for n, s in started.items())
            print(f"holding: {where}; Ctrl-C ends", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
        for server in running:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} died during the run:\n{server.tail()}")
    return Measured(
        names=[c.name for c in contenders],
        runs=runs,
        batches=batches,
        duplicate=duplicate,
        deliveries_counted=counted,
        steady=steady,
        load_before=load_before,
        load_after=uptime(),
    )


def table_rows(m: Measured, rate: float) -> list[Row]:
    serve = m.names[0]
    d, e = m.duplicate, m.steady
    dup_errors = d.errors["status"] + d.socket_errors
    e_non_2xx = sum(n for status, n in e.statuses.items() if not status.startswith("2"))
    b = m.batches
    rows: list[Row] = []
    for name in m.names:
        runs = m.runs[name]
        what = "answered/s, nothing stored" if name.startswith("ceiling") else "stored/s"
        rows.append(
            Row(
                f"(a) {name}: {what}, median (min-max) of {len(runs)}",
                spread([r.stored_per_s for r in runs]),
                f">= {TARGET_ACCEPTED:,.0f} (DESIGN §6)" if name == serve else "",
                verdict(m.rate(name) >= TARGET_ACCEPTED) if name == serve else "info",
            )
        )
        rows.append(
            Row(
                "    server CPU per webhook",
                spread([r.cpu_us_per_stored for r in runs]) + " us",
                "",
                "info",
            )
        )
        rows.append(
            Row(
                "    2xx / stored / non-2xx / socket errors (all rounds)",
                f"{sum(r.wrk.ok for r in runs):,} / "
                + (
                    "-"
                    if runs and runs[0].stored is None
                    else f"{sum(r.stored or 0 for r in runs):,}"
                )
                + f" / {sum(r.wrk.errors['status'] for r in runs)}"
                + f" / {sum(r.wrk.socket_errors for r in runs)}",
                "stored >= 2xx, 0, 0",
                verdict(all(r.sound for r in runs)),
            )
        )
    for other in m.names[1:]:
        kind = other.partition("@")[0]
        target = {"ref-group": TARGET_VS_GROUP, "ref-request": TARGET_VS_REQUEST}.get(kind)
        ratios = m.ratios(serve, other)
        rows.append(
            Row(
                f"(c) {serve} / {other}, median (min-max) of rounds",
                spread(ratios, ".2f"),
                f">= {target:g}" if target and other.partition("@")[2] == "" else "",
                verdict(median(ratios) >= target)
                if target and other.partition("@")[2] == ""
                else "info",
            )
        )
    if "ceiling" in m.names and "ref-group" in m.names:
        rows.append(
            Row(
                "    ref-group / ceiling: what a consumer that stores keeps",
                spread(m.ratios("ref-group", "ceiling"), ".2f"),
                "",
                "info",
            )
        )
    rows += [
        Row(
            f"    {serve}: notifications per commit: mean / p50 / p99 / max",
            f"{b['mean']:.1f} / {b['p50']:.0f} / {b['p99']:.0f} / {b['max']:.0f}",
            "",
            "info",
        ),
        Row(
            f"(d) duplicates/s, one id, {serve} (errors)",
            f"{d.ok_per_s:,.0f} ({dup_errors})",
            "0 errors",
            verdict(dup_errors == 0),
        ),
        Row(
            "    duplicate 2xx answered / deliveries counted meanwhile",
            f"{d.ok:,} / {m.deliveries_counted:,}",
            "counted >= 2xx",
            verdict(m.deliveries_counted >= d.ok),
        ),
        Row(
            f"(e) p50 latency at {rate:g}/s, from scheduled send",
            f"{e.latency_ms['p50']:.2f} ms",
            "",
            "info",
        ),
        Row(
            f"    p99 latency at {rate:g}/s",
            f"{e.latency_ms['p99']:.2f} ms",
            f"<= {TARGET_P99_MS:g} ms",
            verdict(e.latency_ms["p99"] <= TARGET_P99_MS),
        ),
        Row(
            "    CPU per request: server / Postgres; client send lag p99",
            f"{e.server_us_per_request:.0f} / {e.postgres_us_per_request:.0f} us; "
            f"{e.send_lag_ms.get('p99', 0):.2f} ms",
            "",
            "info",
        ),
        Row(
            f"    over {TARGET_P99_MS:g} ms: requests / in how many seconds",
            f"{e.over_target:,} / {e.seconds_with_one_over_target} of {e.duration_s:g}",
            "",
            "info",
        ),
        Row(
            "    requests / non-2xx / max latency",
            f"{e.sent:,} / {e_non_2xx} / {e.latency_ms['max']:.1f} ms",
            "0 non-2xx",
            verdict(e_non_2xx == 0),
        ),
    ]
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up per run")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the contenders (default 3)")
    p.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help="comma-separated, serve first: serve, ref-group, ref-request, ceiling, each "
        "optionally @uvicorn, @uvicorn-h11 or @granian (default: %(default)s)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (with this bench/ copied in) whose service runs as the "
        "contender `baseline`: before/after a change in one run",
    )
    p.add_argument("--rate", type=float, default=100.0, help="paced requests/s for (e)")
    p.add_argument("--paced-duration", type=float, default=30.0, help="seconds of (e)")
    p.add_argument(
        "--hold",
        action="store_true",
        help="keep the servers up after the run, until Ctrl-C (to attach a profiler)",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "bench.ingest needs wrk: apt-get install -y wrk (macOS: brew install wrk)",
            file=sys.stderr,
        )
        return 2
    started_at = datetime.now(UTC)
    info = machine()
    print(f"machine: {info['nproc']} cpus, {info['cpu']}, Python {info['python']}", flush=True)

    watch = MachineWatch()
    admin_url = server_url()
    if not os.environ.get("BENCH_DATABASE_URL"):
        watch.watch_postgres(ROOT / ".data" / "bench" / "pg")
    logs = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        pg = asyncio.run(recreate_database(admin_url))
        print(
            f"postgres {pg.get('server_version')}: fresh databases {', '.join(DATABASES)}",
            flush=True,
        )
        m = measure(args, watch, admin_url, logs)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(drop_database(admin_url))
        shutil.rmtree(logs, ignore_errors=True)

    rows = table_rows(m, args.rate)
    passed = all(r.result != "FAIL" for r in rows)
    print()
    print_report(
        started_at,
        info,
        pg,
        f"load: wrk -t{args.threads} -c{args.connections}, {args.warmup} s warm-up + "
        f"{args.duration} s per run, {args.rounds} rounds over {args.contenders}; "
        f"(e) {args.rate:g}/s for {args.paced_duration:g} s\n"
        f"machine load: {m.load_before} before, {m.load_after} after",
        m.phases,
        rows,
    )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    serve = m.names[0]
    document = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": {**info, "postgres": pg},
        "load": {
            "wrk_threads": args.threads,
            "wrk_connections": args.connections,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "contenders": m.names,
            "paced_rate": args.rate,
            "paced_duration_s": args.paced_duration,
            "loadavg_before": m.load_before,
            "loadavg_after": m.load_after,
        },
        "figures": {
            "stored_per_s": {n: m.rate(n) for n in m.names},
            "server_cpu_us_per_stored": {n: m.cpu(n) for n in m.names},
            "ratios": {f"{serve}/{n}": m.ratio(serve, n) for n in m.names[1:]},
            "duplicates_per_s": m.duplicate.ok_per_s,
            "p50_ms_at_rate": m.steady.latency_ms["p50"],
            "p99_ms_at_rate": m.steady.latency_ms["p99"],
            "notifications_per_commit": m.batches,
        },
        "runs": {
            name: [asdict(r) | {"stored_per_s": r.stored_per_s} for r in runs]
            for name, runs in m.runs.items()
        },
        "duplicate": asdict(m.duplicate) | {"deliveries_counted": m.deliveries_counted},
        "paced": asdict(m.steady),
        "table": [asdict(r) for r in rows],
        "pass": passed,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"\nwritten to {shown}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
