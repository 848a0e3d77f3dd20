"""Failover for real: etcd, two Patroni nodes with synchronous replication, `serve` and a
`worker` on the multi-host URL, webhooks at 200/s; the primary's postmaster SIGKILLed, twice.

Shown: Patroni promotes the synchronous standby; the service answers 503 (never a 2xx without
a durable commit, never a 500) while there is no primary, and 2xx again without a restart;
every acknowledged webhook is stored exactly once and fetched; projections, sealing and push
delivery carry on; the feed skips nothing; `verify` passes on the new primary; the old
primary rejoins as a standby and a failover back works. Fixtures: tests/fixtures/ha.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import CONNECT_TIMEOUT_S, create_engine
from service.db.notify import listen
from tests.fixtures.ha import HaCluster, PatroniNode
from tests.support.invariants import (
    assert_each_stored_once_and_fetched,
    assert_projections_equal_rebuild,
    wait_settled,
)
from tests.support.processes import (
    API_KEY,
    READ_TOKEN,
    cli,
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
from tests.support.receiver import Receiver
from tests.support.tokens import ADMIN_TOKEN

# Slow, and the first test's fixture may install Patroni, etcd and PgBouncer with apt.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EVENTS = 5000  # 25 s of webhooks at 200/s: both failovers happen while they arrive
RATE = 200
SEED = 21
BACK_TARGET_S = 15.0  # from the kill to the first 2xx again


@dataclass
class Answer:
    event_id: str
    at: float  # time.monotonic()
    status: int | None  # None: no answer


async def probe(
    client: httpx.AsyncClient, bodies: list[dict[str, Any]], answers: list[Answer]
) -> None:
    """A webhook every 50 ms (besides the sender's), each answer timed: when the service
    stopped and started acknowledging. Duplicates of the sender's: stored once all the same."""
    for i in itertools.count():
        body = bodies[(i * 7) % len(bodies)]
        status: int | None = None
        try:
            response = await client.post(
                "/webhooks/paxos",
                content=msgspec.json.encode(body),
                headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
            )
            status = response.status_code
        except httpx.TransportError:
            pass
        answers.append(Answer(str(body["id"]), time.monotonic(), status))
        await asyncio.sleep(0.05)


@dataclass
class Failover:
    old: PatroniNode
    new: PatroniNode
    killed: float  # time.monotonic()
    promoted_s: float  # kill to Patroni's new leader
    back_s: float  # kill to the first 2xx after the first failed answer


async def fail_over(cluster: HaCluster, answers: list[Answer]) -> Failover:
    """SIGKILL the primary's postmaster; wait for a new leader and the service's first 2xx."""
    leader, _ = await asyncio.to_thread(cluster.wait_healthy)
    killed = time.monotonic()
    leader.kill_postmaster()
    new = await asyncio.to_thread(cluster.wait_leader, leader)
    promoted = time.monotonic()
    deadline = killed + 60
    while time.monotonic() < deadline:
        after = [a for a in answers if a.at > killed]
        failed = next((i for i, a in enumerate(after) if a.status != 200), None)
        if failed is not None:
            back = next((a.at for a in after[failed:] if a.status == 200), None)
            if back is not None:
                return Failover(leader, new, killed, promoted - killed, back - killed)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no 2xx within 60 s of the kill: {Counter(a.status for a in after)}")


async def feed_positions(base: str) -> list[int]:
    """Every position `/feed` hands out, from the start, page by page."""
    found: list[int] = []
    after = 0
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {READ_TOKEN}"}, timeout=30
    ) as client:
        while True:
            page = (await client.get("/feed", params={"after": after, "limit": 1000})).json()
            found += [item["position"] for item in page["items"]]
            if not page["items"]:
                return found
            after = page["next_after"]


async def xid(engine: AsyncEngine) -> int:
    """The id of a transaction that wrote a row, as the journal's writers do. A transaction
    that only takes an id writes no WAL of its own: its commit neither waits for the
    synchronous standby nor needs to reach it, so a promoted standby may hand the same id out
    again (seen in CI), harmless because that transaction left nothing to read."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS xid_probe (xid xid8)"))
        return int(
            await conn.scalar(
                text("INSERT INTO xid_probe VALUES (pg_current_xact_id()) RETURNING xid::text")
            )
        )


async def test_transaction_ids_continue_on_the_promoted_standby(
    healthy_cluster: HaCluster,
) -> None:
    """The feed's gap-safe horizon is `(xid8, position)` below pg_snapshot_xmin: it stays
    ordered across a promotion only if transaction ids go on from where the old primary left
    them, which a standby that replayed its WAL does."""
    cluster = healthy_cluster
    engine = create_engine(cluster.url(), pool_size=2)
    try:
        before = await xid(engine)
        leader, _ = await asyncio.to_thread(cluster.wait_healthy)
        leader.kill_postmaster()
        await asyncio.to_thread(cluster.wait_leader, leader)
        # The pool held connections to the dead primary: they go, without a restart.
        for _ in range(100):
            try:
                after = await xid(engine)
                break
            except Exception:  # noqa: BLE001 - until the new primary takes the connection
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("no write on the new primary within 10 s")
        async with engine.connect() as conn:
            horizon = int(
                await conn.scalar(
                    text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                )
            )
    finally:
        await engine.dispose()
    print(f"xid before the failover {before}, after {after}, horizon {horizon}")
    assert after > before
    # Every transaction of the old primary is over (committed and replayed, or lost with it
    # uncommitted): a reader below the horizon waits for nothing from before the failover.
    assert horizon > before
    await asyncio.to_thread(cluster.wait_healthy)


@contextmanager
def silent_host() -> Iterator[str]:
    """A `host:port` that takes TCP connections and never says a word, as a frozen server
    does (a dead machine's address, which drops the SYN, costs the same wait)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes handshakes; nobody ever reads
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_silent_host_first_in_the_url_costs_one_connect_timeout(
    healthy_cluster: HaCluster,
) -> None:
    """A dead primary named first in DATABASE_URL must not keep the service from the new one:
    each host has its own connect timeout, and the host that answered last is tried first."""
    cluster = healthy_cluster
    with silent_host() as silent:
        url = cluster.url().replace("@", f"@{silent},", 1)
        engine = create_engine(url, pool_size=1)
        woken = asyncio.Event()
        listening = asyncio.create_task(listen(url, {"unused": [woken]}))
        try:
            began = time.monotonic()
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT NOT pg_is_in_recovery()"))
            first = time.monotonic() - began
            await engine.dispose()  # the next connection is a new one
            began = time.monotonic()
            async with engine.connect() as conn:
                await conn.scalar(text("SELECT 1"))
            again = time.monotonic() - began
            # The LISTEN connection gets through too (it wakes its listeners once connected).
            await asyncio.wait_for(woken.wait(), 2 * CONNECT_TIMEOUT_S)
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
            await engine.dispose()
    print(f"first connect {first:.1f} s (the silent host's timeout), the next {again:.2f} s")
    assert first <= 2 * CONNECT_TIMEOUT_S
    assert again < 1.0


async def test_a_failover_loses_no_acknowledged_webhook_and_needs_no_restart(
    healthy_cluster: HaCluster, tmp_path: Path
) -> None:
    cluster = healthy_cluster
    url = cluster.url()
    started = time.monotonic()
    migrated = await asyncio.to_thread(cli, url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    bodies = universe_notifications(EVENTS, SEED)
    paxos_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        url,
        paxos_port,
        PORT=str(port),
        PAXOS_API_RPS="400",
        API_ADMIN_TOKENS=ADMIN_TOKEN,
        SUBSCRIPTION_ALLOW_PRIVATE_URLS="true",
        SUBSCRIPTION_RETRY_MAX_DELAY_S="1",
        SEAL_INTERVAL_S="1",
        # Claims whose outcome a kill cut off come back after 15 s, not the default 60.
        FETCH_LEASE_S="15",
        # A reconciler pass every 2 s: its session advisory lock is taken again on each new
        # primary (the universe is older than its look-back: the passes find nothing).
        RECONCILE_INTERVAL_S="2",
    )
    receiver = Receiver().start()
    answers: list[Answer] = []
    failovers: list[Failover] = []
    with running(
        # Tokens live 4 s: the fetchers renew theirs (single flight, through the shared
        # limit's row) during the switches too.
        simulator_args(paxos_port, EVENTS, SEED, "--rate", "2000", "--token-ttl", "4"),
        env,
        tmp_path / "sim.log",
    ):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{paxos_port}/_simulator/stats")
        serve = start(["serve", "--no-background"], env, tmp_path / "serve.log")
        worker = start(["worker"], env, tmp_path / "worker.log")
        sender = None
        try:
            await asyncio.to_thread(wait_ready, base)
            subscribed = httpx.post(
                f"{base}/admin/subscriptions",
                json={"name": "ledger", "url": receiver.url, "start": "now"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert subscribed.status_code == 201, subscribed.text
            sender = start(
                sender_args(f"{base}/webhooks/paxos", EVENTS, SEED, "--rate", str(RATE)),
                env,
                tmp_path / "sender.log",
                output=tmp_path / "report.json",
            )
            async with httpx.AsyncClient(base_url=base, timeout=15) as client:
                probing = asyncio.create_task(probe(client, bodies, answers))
                try:
                    await asyncio.sleep(4)
                    sending = time.monotonic()
                    failovers.append(await fail_over(cluster, answers))
                    # The old primary comes back as the new one's synchronous standby
                    # (pg_rewind, when its WAL went past the fork), and a failover back works.
                    leader, standby = await asyncio.to_thread(cluster.wait_healthy)
                    assert (leader, standby) == (failovers[0].new, failovers[0].old)
                    rejoined = time.monotonic()
                    failovers.append(await fail_over(cluster, answers))
                    sending_at_second_kill = sender.poll() is None
                    second_kill = datetime.now(UTC) - timedelta(seconds=failovers[1].back_s)
                finally:
                    probing.cancel()
            assert await asyncio.to_thread(sender.wait, 120) == 0
            sent = time.monotonic()
            engine = create_engine(url, pool_size=2)
            try:
                await wait_settled(engine, timeout=60)
                settled = time.monotonic()
                await wait_sealed_and_pushed(engine, receiver, second_kill)
            finally:
                await engine.dispose()
            positions = await feed_positions(base)
            paxos = httpx.get(f"http://127.0.0.1:{paxos_port}/_simulator/stats").json()
        finally:
            if sender is not None:
                stop(sender)
            stop(serve)
            stop(worker)
            receiver.stop()
    report = json.loads((tmp_path / "report.json").read_text())
    engine = create_engine(url, pool_size=2)
    try:
        await check_everything(engine, report, answers, positions, receiver, url, second_kill)
    finally:
        await engine.dispose()
    for i, failover in enumerate(failovers, 1):
        print(
            f"failover {i} ({failover.old.name} -> {failover.new.name}): new leader "
            f"{failover.promoted_s:.1f} s after the kill, first 2xx again {failover.back_s:.1f} s"
        )
    print(
        f"phases: migrated and ready {sending - 4 - started:.0f} s, the old primary back as "
        f"synchronous standby {rejoined - failovers[0].killed:.0f} s after the first kill, "
        f"sender still sending at the second kill: {sending_at_second_kill}, sender done "
        f"{sent - sending + 4:.0f} s after it started, settled {settled - sent:.0f} s later"
    )
    print(f"sender: {report['statuses']}; probe: {dict(Counter(a.status for a in answers))}")
    print(f"rewinds: {sum('pg_rewind' in n.log.read_text() for n in cluster.nodes)} node logs")
    print(f"the test took {time.monotonic() - started:.0f} s")
    # Tokens were renewed all along, through the shared limit's row, failovers included.
    assert paxos["token_requests"] >= 5, paxos
    for failover in failovers:
        assert failover.back_s <= BACK_TARGET_S, failover


async def wait_sealed_and_pushed(
    engine: AsyncEngine, receiver: Receiver, second_kill: datetime
) -> None:
    """Wait (at most 30 s) until the journal is sealed to its end, every real event pushed and
    a reconciler pass done since the second failover."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            real = {str(i) for (i,) in await conn.execute(_REAL)}
            behind = await conn.scalar(_UNSEALED)
            passes = await conn.scalar(_PASSES_SINCE, {"t": second_kill})
        if not behind and passes and real <= set(receiver.ids(answered_only=True)):
            return
        await asyncio.sleep(0.2)


_PASSES_SINCE = text(
    "SELECT count(*) FROM reconcile_passes"
    " WHERE kind = 'reconcile' AND status = 'done' AND finished_at > :t"
)
_REAL = text("SELECT event_id FROM events WHERE NOT is_test")
_UNSEALED = text(
    "SELECT (SELECT max(position) FROM journal)"
    " > coalesce((SELECT max(last_position) FROM seals), 0)"
)


async def check_everything(
    engine: AsyncEngine,
    report: dict[str, Any],
    answers: list[Answer],
    positions: list[int],
    receiver: Receiver,
    url: str,
    second_kill: datetime,
) -> None:
    # While there was no primary: 503s (or, for the sender's in-flight posts, no answer when
    # the service cut them short), never a 500, never a 2xx for what was not committed.
    assert {a.status for a in answers} <= {200, 503}, Counter(a.status for a in answers)
    assert 503 in {a.status for a in answers}
    assert set(report["statuses"]) <= {"200", "503"}, report["statuses"]
    assert not report["given_up"]
    acked = set(report["delivered"]) | {a.event_id for a in answers if a.status == 200}
    ids = universe_ids(EVENTS, SEED)
    await assert_each_stored_once_and_fetched(engine, ids, acked)
    print(f"acknowledged: {len(acked)}, acknowledged and lost: 0")
    await assert_projections_equal_rebuild(engine)
    async with engine.connect() as conn:
        journal = [
            p
            for (p,) in await conn.execute(
                text("SELECT position FROM journal WHERE kind = 'event' ORDER BY position")
            )
        ]
        real = {str(i) for (i,) in await conn.execute(_REAL)}
        last_journal = await conn.scalar(text("SELECT max(position) FROM journal"))
        sealed = await conn.scalar(text("SELECT max(last_position) FROM seals"))
        passes = await conn.scalar(_PASSES_SINCE, {"t": second_kill})
    # The feed handed out every fetched event once, in order, none skipped across the switches.
    assert positions == journal
    # Push delivery went on: every real event reached the receiver (at least once: one sent
    # just before a kill may go again, with the same webhook-id).
    delivered = Counter(receiver.ids(answered_only=True))
    assert real <= set(delivered), f"{len(real - set(delivered))} real events never pushed"
    print(f"pushed {len(real)} events, {sum(delivered.values()) - len(delivered)} again")
    # The sealer went on past both failovers (it seals the whole journal), the chain verifies.
    assert sealed == last_journal, (sealed, last_journal)
    # The reconciler took its lock again on the new primary and finished passes there.
    assert passes, "no reconciler pass since the second failover"
    verified = await asyncio.to_thread(cli, url, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
