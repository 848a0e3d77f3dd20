"""DATABASE_READ_URL against a real streaming replica: reads are served by it, and the feed,
whose horizon comes from the primary, skips nothing while events are being stored."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import msgspec
import pytest
from sqlalchemy import select

from service.app import READ_PRIMARY_COOKIE, READ_PRIMARY_S, create_app
from service.db.engine import plain_url
from service.db.runtime import opened_engine
from service.settings import Settings
from service.store.listed import Listed, record_listed
from service.store.tables import journal
from tests.fixtures.replica import ReplicaPair, replica_pair  # noqa: F401 - the fixture
from tests.support.asgi import app_client
from tests.support.paths import ROOT
from tests.support.processes import clean_env, universe_notifications
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN, admin_headers, read_headers

pytestmark = pytest.mark.slow

WRITERS, BATCHES, PER_BATCH = 4, 40, 5


def listed(n: int) -> list[Listed]:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    return [
        Listed(
            event_id=uuid.uuid4(),
            type="identity.created",
            created_at=now + timedelta(seconds=i),
            is_test=False,
            raw='{"id": "x"}',
            identity_id=None,
            object_type=None,
            undelivered_webhooks=None,
            object_id=None,
        )
        for i in range(n)
    ]


def run_export(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        DATABASE_URL=settings.database_url or "", DATABASE_READ_URL=settings.database_read_url or ""
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "export",
            "--since",
            "2026-01-01",
            "--until",
            "2027-01-01",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def replica_settings(pair: ReplicaPair) -> Settings:
    return Settings(
        database_url=pair.primary.url(),
        database_read_url=pair.replica.url(),
        webhook_api_keys=(API_KEY,),
        api_read_tokens=(READ_TOKEN,),
        api_admin_tokens=(ADMIN_TOKEN,),
    )


async def test_reads_come_from_the_replica_and_the_feed_skips_nothing(
    replica_pair: ReplicaPair,  # noqa: F811
) -> None:
    settings = replica_settings(replica_pair)
    stored: list[uuid.UUID] = []
    done = asyncio.Event()

    async def write(primary: object, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(BATCHES):
            batch = listed(PER_BATCH)
            async with primary.begin() as conn:  # type: ignore[attr-defined]
                await record_listed(conn, batch)
                # Transactions overlap and commit out of position order.
                await asyncio.sleep(rng.random() * 0.02)
            stored.extend(item.event_id for item in batch)

    async with opened_engine(settings.database_url or "", pool_size=WRITERS) as primary:
        async for client in app_client(create_app(settings)):
            writers = asyncio.gather(*(write(primary, seed) for seed in range(WRITERS)))
            seen: list[tuple[int, str]] = []
            after = 0

            async def follow(client: httpx.AsyncClient, seen: list[tuple[int, str]]) -> None:
                nonlocal after
                while True:
                    answer = await client.get(
                        "/feed", params={"after": after, "limit": 50}, headers=read_headers()
                    )
                    assert answer.status_code == 200, answer.text
                    page = answer.json()
                    seen.extend((i["position"], i["event"]["id"]) for i in page["items"])
                    after = page["next_after"]
                    if done.is_set() and not page["items"]:
                        return

            lags: list[float] = []

            async def measure_lag(lags: list[float]) -> None:
                """How long after a commit on the primary the replica has replayed it."""
                p = await asyncpg.connect(plain_url(replica_pair.primary.url()))
                r = await asyncpg.connect(plain_url(replica_pair.replica.url()))
                try:
                    while not done.is_set():
                        lsn = await p.fetchval("SELECT pg_current_wal_lsn()")
                        started = time.perf_counter()
                        while not await r.fetchval(
                            "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn
                        ):
                            await asyncio.sleep(0.002)
                        lags.append(time.perf_counter() - started)
                        await asyncio.sleep(0.02)
                finally:
                    await p.close()
                    await r.close()

            reading = asyncio.create_task(follow(client, seen))
            lagging = asyncio.create_task(measure_lag(lags))
            await writers
            done.set()
            await asyncio.wait_for(reading, 30)
            await asyncio.wait_for(lagging, 30)
            lags.sort()
            print(
                f"replica replay lag under {WRITERS} writers ({len(lags)} samples): "
                f"p50 {lags[len(lags) // 2] * 1000:.1f} ms, p95 "
                f"{lags[int(len(lags) * 0.95)] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
            )
            assert lags and lags[-1] < 5  # within the feed's wait for replay

            # Every stored event once, in position order: none skipped by the replica's lag.
            positions = [p for p, _ in seen]
            assert positions == sorted(set(positions))
            assert sorted(e for _, e in seen) == sorted(str(i) for i in stored)
            async with primary.connect() as conn:
                journal_positions = (await conn.scalars(select(journal.c.position))).all()
            assert set(positions) <= set(journal_positions)

            # The reads were the replica's: its backends are the service's.
            replica = await asyncpg.connect(plain_url(replica_pair.replica.url()))
            try:
                names = await replica.fetch(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = $1",
                    "paxos_events",
                )
            finally:
                await replica.close()
            assert "paxos-events" in {r["application_name"] for r in names}
            answer = await client.get("/events", headers=read_headers())
            assert answer.status_code == 200

            # The CLI export reads the replica too: it has every event the writers stored.
            exported = run_export(settings)
            assert exported.returncode == 0, exported.stderr
            trailer = msgspec.json.decode(exported.stdout.splitlines()[-1])
            assert trailer["record"] == "trailer" and trailer["events"] == len(stored)

            # With the replica stopped, reads fail (503) while the primary still takes writes.
            replica_pair.replica.stop()
            stopped = run_export(settings)
            assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
            assert stopped.stderr.startswith("paxos-events: "), stopped.stderr
            answer = await client.get("/events", headers=read_headers())
            assert answer.status_code == 503, answer.text
            async with primary.begin() as conn:
                assert await record_listed(conn, listed(1))


async def test_after_a_write_the_same_client_reads_the_primary_for_a_few_seconds(
    replica_pair: ReplicaPair,  # noqa: F811
) -> None:
    """A successful admin POST answers with the `paxos-read-primary` cookie; a read that
    carries it is served by the primary (shown with the replica stopped: 200 with the cookie,
    503 without). The webhook intake, answered outside Litestar, never sets it."""
    if not replica_pair.replica.running:  # the module's other test stops it at its end
        replica_pair.replica.start()
    webhook = universe_notifications(1, 5)[0]
    async for client in app_client(create_app(replica_settings(replica_pair))):
        # Paxos gets its answer without the cookie (and without the per-request work).
        answer = await client.post(
            "/webhooks/paxos",
            content=msgspec.json.encode(webhook),
            headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
        )
        assert answer.status_code == 200, answer.text
        assert "set-cookie" not in answer.headers
        assert not client.cookies

        # A refused write sets nothing either.
        refused = await client.post(
            f"/admin/events/{uuid.uuid4()}/refetch", headers=admin_headers()
        )
        assert refused.status_code == 404
        assert "set-cookie" not in refused.headers

        written = await client.post(
            f"/admin/events/{webhook['id']}/refetch", headers=admin_headers()
        )
        assert written.status_code == 202, written.text
        cookie = written.headers["set-cookie"]
        assert cookie.startswith(f"{READ_PRIMARY_COOKIE}=1;")
        assert f"Max-Age={READ_PRIMARY_S};" in cookie and READ_PRIMARY_S <= 10
        assert client.cookies.get(READ_PRIMARY_COOKIE) == "1"  # as a browser keeps it

        replica_pair.replica.stop()
        # With the cookie: the primary answers, and has the event just stored.
        answer = await client.get("/events", headers=read_headers())
        assert answer.status_code == 200, answer.text
        assert webhook["id"] in {item["id"] for item in answer.json()["items"]}
        assert "set-cookie" not in answer.headers  # a read does not renew it
        # Without it: the replica's, which is down.
        client.cookies.clear()
        answer = await client.get("/events", headers=read_headers())
        assert answer.status_code == 503, answer.text
