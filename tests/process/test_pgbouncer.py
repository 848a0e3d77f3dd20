"""The main path through a real PgBouncer (Debian's, 1.18) in session mode: webhooks from
`simulate send` to `serve`, fetched by a `worker`, projected, read back through the API,
every connection of both processes through PgBouncer. docs/deploying.md says why session
mode: what breaks in transaction mode is shown at the end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import plain_url
from tests.fixtures.ha import (
    PgBouncer,
    ha_home,
    ha_programs_missing,
    start_pgbouncer,
    stop_pgbouncer,
)
from tests.support.invariants import (
    assert_each_stored_once_and_fetched,
    assert_projections_equal_rebuild,
    wait_settled,
)
from tests.support.processes import (
    READ_TOKEN,
    free_port,
    running,
    sender_args,
    service_env,
    simulator_args,
    start,
    stop,
    universe_ids,
    wait_http,
    wait_ready,
)

# Slow, and the first test to need PgBouncer may install it with apt: minutes, not seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EVENTS = 300
SEED = 12


async def test_webhooks_are_fetched_projected_and_read_through_pgbouncer(
    pgbouncer: PgBouncer, engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    database = urlsplit(database_url).path.lstrip("/")
    through = pgbouncer.url(database, urlsplit(database_url).username or "postgres")
    paxos_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(through, paxos_port, PORT=str(port), PAXOS_API_RPS="100")
    with running(
        simulator_args(paxos_port, EVENTS, SEED, "--rate", "1000"), env, tmp_path / "sim.log"
    ):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{paxos_port}/_simulator/stats")
        serve = start(["serve", "--no-background"], env, tmp_path / "serve.log")
        worker = start(["worker"], env, tmp_path / "worker.log")
        try:
            await asyncio.to_thread(wait_ready, base)
            sender = start(
                sender_args(f"{base}/webhooks/paxos", EVENTS, SEED, "--rate", "100"),
                env,
                tmp_path / "sender.log",
                output=tmp_path / "report.json",
            )
            assert await asyncio.to_thread(sender.wait, 60) == 0
            await wait_settled(engine, timeout=60)
            pools = await asyncio.to_thread(pgbouncer.admin, "SHOW POOLS")
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {READ_TOKEN}"}
            ) as client:
                listed = (await client.get("/events", params={"limit": 1000})).json()["items"]
                identity = next(e["identity_id"] for e in listed if e["identity_id"])
                state = await client.get(f"/identities/{identity}")
                ready = await client.get("/health/ready")
        finally:
            stop(serve)
            stop(worker)
    report = json.loads((tmp_path / "report.json").read_text())
    await assert_each_stored_once_and_fetched(
        engine, universe_ids(EVENTS, SEED), report["delivered"]
    )
    await assert_projections_equal_rebuild(engine)
    assert len(listed) == EVENTS
    assert {e["status"] for e in listed} == {"fetched"}
    assert state.status_code == 200, state.text
    assert state.json()["identity_id"] == identity
    assert ready.status_code == 200, ready.text
    # Both processes' connections (their pools, the intake's and the fetcher's writers, the
    # LISTEN connection) were PgBouncer's clients, served by its server connections.
    ours = [p for p in pools if p["database"] == database]
    clients, servers = (
        sum(int(p[k]) for p in ours for k in keys)
        for keys in (("cl_active", "cl_waiting"), ("sv_active", "sv_idle", "sv_used"))
    )
    print(f"through PgBouncer: {clients} clients on {servers} server connections")
    assert clients >= 4 and servers >= 4, pools


async def test_transaction_pooling_breaks_what_needs_a_session(server_url: str) -> None:
    """Why every connection of the service goes through a session pool on PgBouncer 1.18:
    under transaction pooling a client's session state stays on the server connection it
    happened to have, which the next client may get and the client itself may not."""
    reason = ha_programs_missing()
    if reason:
        pytest.skip(reason)
    with ha_home() as home:
        bouncer = start_pgbouncer(home, server_url, pool_mode="transaction", pool_size=2)
        url = plain_url(bouncer.url("postgres", urlsplit(server_url).username or "postgres"))
        try:
            first, second = await asyncpg.connect(url), await asyncpg.connect(url)
            try:
                # asyncpg's statement cache: `first` prepares a named statement on the one
                # server connection; while `second` holds that one in a transaction, `first`
                # gets a new server connection, where its statement does not exist.
                await first.fetchval("SELECT 1")
                async with second.transaction():
                    await second.fetchval("SELECT 2")
                    with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                        await first.fetchval("SELECT 1")
                # A session advisory lock (the reconciler's, a rebuild's) stays with the
                # server connection: the next client to get it holds the lock too.
                assert await first.fetchval("SELECT pg_try_advisory_lock(42)", timeout=5)
                assert await second.fetchval("SELECT pg_try_advisory_lock(42)", timeout=5)
            finally:
                await first.close()
                await second.close()
        finally:
            stop_pgbouncer(bouncer)
