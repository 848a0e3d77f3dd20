"""Push subscriptions with real processes: `serve` and `worker` deliver to a real receiver on a
loopback port while the test writes fetched events into the journal as the fetcher does (and,
where it matters, commits them in inverted order). Signatures are judged by the
`standardwebhooks` reference package."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.processes import clean_env, free_port, start, stop, wait_ready
from tests.support.push import append, full_event, store_fetched
from tests.support.receiver import Receiver
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def env(database_url: str, **changes: str) -> dict[str, str]:
    """`serve`/`worker` settings: the test's database, private URLs allowed (the receiver is on
    loopback), retries at most 2 s apart, and Paxos credentials for a Paxos that is not there
    (nothing here is fetched: the test writes fetched events itself)."""
    return clean_env(
        DATABASE_URL=database_url,
        WEBHOOK_API_KEYS=API_KEY,
        API_READ_TOKENS=READ_TOKEN,
        API_ADMIN_TOKENS=ADMIN_TOKEN,
        PAXOS_API_URL="http://127.0.0.1:9/v2",
        PAXOS_TOKEN_URL="http://127.0.0.1:9/oauth2/token",
        PAXOS_CLIENT_ID="unused",
        PAXOS_CLIENT_SECRET="unused",
        SUBSCRIPTION_ALLOW_PRIVATE_URLS="true",
        SUBSCRIPTION_RETRY_MAX_DELAY_S="2",
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        **changes,
    )


@contextmanager
def serving(database_url: str, log: Path, *args: str, **changes: str) -> Iterator[str]:
    """`serve *args` on a free port; yields its base URL."""
    port = free_port()
    process = start(["serve", *args], env(database_url, PORT=str(port), **changes), log)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def subscribe(base: str, url: str, **body: Any) -> str:
    response = httpx.post(
        f"{base}/admin/subscriptions",
        json={"name": "ledger", "url": url, "start": "now", **body},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


async def positions(engine: AsyncEngine) -> dict[str, int]:
    """Each journalled event's position."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_id, position FROM journal WHERE kind = 'event'")
        )
        return {str(r.event_id): int(r.position) for r in rows}


def assert_key_order(receiver: Receiver, where: dict[str, int]) -> None:
    """Per identity, the first delivery of each event came in position order."""
    firsts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for item in list(receiver.received):
        if item.event_id in seen:
            continue
        seen.add(item.event_id)
        firsts.setdefault(item.json()["identity_id"], []).append(where[item.event_id])
    for key, order in firsts.items():
        assert order == sorted(order), (key, order)


async def wait_for(receiver: Receiver, n: int, timeout: float) -> None:
    await asyncio.to_thread(receiver.wait_for, n, timeout)


@pytest.mark.slow
async def test_a_worker_delivers_every_event_once_in_key_order_despite_inverted_commits(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """Pairs of writers: A takes the lower position of a key but commits after B. The worker
    (another process) delivers every event exactly once, each key in position order."""
    receiver = Receiver(delay_s=0.005).start()
    try:
        with serving(database_url, tmp_path / "serve.log", "--no-background") as base:
            secret = subscribe(base, receiver.url)
            worker = start(["worker"], env(database_url), tmp_path / "worker.log")
            try:
                written: list[str] = []
                for round_ in range(40):
                    key = f"idt-{round_ % 8}"
                    first, second = full_event(identity_id=key), full_event(identity_id=key)
                    async with engine.connect() as a, engine.connect() as b:
                        await a.begin()
                        await a.execute(text("SELECT pg_current_xact_id()"))
                        await store_fetched(a, first)
                        await b.begin()
                        await store_fetched(b, second)
                        await b.commit()
                        await asyncio.sleep(0.02)
                        await a.commit()
                    written += [first["id"], second["id"]]
                    other = full_event(identity_id=f"idt-other-{round_}")
                    await append(engine, [other])
                    written.append(other["id"])
                await wait_for(receiver, len(written), 60)
                await asyncio.sleep(1.0)  # nothing more comes
            finally:
                stop(worker)
        assert Counter(receiver.ids()) == Counter(written)  # every one, once
        assert_key_order(receiver, await positions(engine))
        for item in receiver.received:
            assert item.verify(secret) == item.json()
        for log in ("serve.log", "worker.log"):  # the secret was shown once, and only then
            assert secret.removeprefix("whsec_") not in (tmp_path / log).read_text()
    finally:
        receiver.stop()


def lag(base: str) -> float:
    """`paxos_subscription_lag_events{subscription="ledger"}` as `serve` reports it."""
    body = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {READ_TOKEN}"}).text
    found = re.search(r'^paxos_subscription_lag_events\{subscription="ledger"\} (\S+)$', body, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_a_receiver_down_for_two_minutes_gets_everything_in_order_and_the_lag_falls(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    receiver = Receiver().start()
    try:
        with serving(database_url, tmp_path / "serve.log") as base:
            secret = subscribe(base, receiver.url)
            before = [full_event(identity_id=f"idt-{i % 5}") for i in range(20)]
            await append(engine, before)
            await wait_for(receiver, 20, 30)

            receiver.stop()
            down_at = time.monotonic()
            during: list[dict[str, Any]] = []
            peak = 0.0
            while time.monotonic() - down_at < 120:
                batch = [full_event(identity_id=f"idt-{i % 7}") for i in range(5)]
                await append(engine, batch)
                during += batch
                peak = max(peak, await asyncio.to_thread(lag, base))
                await asyncio.sleep(2.0)
            peak = max(peak, await asyncio.to_thread(lag, base))
            assert len(receiver.ids()) == 20  # nothing got through while it was down
            assert peak >= len(during) - 10, (peak, len(during))  # the lag rose with the backlog

            receiver.start()
            total = len(before) + len(during)
            await wait_for(receiver, total, 60)
            deadline = time.monotonic() + 15
            while (now := await asyncio.to_thread(lag, base)) > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert now == 0  # and fell back
            shown = httpx.get(f"{base}/admin/subscriptions/ledger", headers=ADMIN).json()
            assert shown["state"] == "active" and shown["pending"] == 0
            assert shown["deliveries"]["connection_error"] > 0
        assert set(receiver.ids()) == {e["id"] for e in before + during}
        assert_key_order(receiver, await positions(engine))
        for item in receiver.received:
            item.verify(secret)
    finally:
        receiver.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_mid_delivery_redelivers_only_what_was_in_flight(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    receiver = Receiver(delay_s=0.5).start()  # slow answers: many deliveries in flight
    try:
        with serving(database_url, tmp_path / "serve.log", "--no-background") as base:
            subscribe(base, receiver.url)
            bodies = [full_event(identity_id=f"idt-{i % 40}") for i in range(240)]
            await append(engine, bodies)
            log = tmp_path / "worker.log"
            worker = start(["worker"], env(database_url), log)
            try:
                await wait_for(receiver, 60, 60)
                stop(worker, signal.SIGKILL)
                async with engine.connect() as conn:
                    leased = {
                        str(r.event_id)
                        for r in await conn.execute(
                            text(
                                "SELECT event_id FROM subscription_outbox WHERE lease_until > now()"
                            )
                        )
                    }
                killed_at = len(receiver.received)
                # max_in_flight (16) requests open, and as many heads leased ahead of them
                assert 0 < len(leased) <= 32
                worker = start(["worker"], env(database_url), log)
                await wait_for(receiver, len(bodies), 120)
                await asyncio.sleep(1.0)
            finally:
                stop(worker)
        counts = Counter(receiver.ids())
        assert set(counts) == {b["id"] for b in bodies}  # nothing missing
        twice = {i for i, n in counts.items() if n > 1}
        assert twice <= leased, twice - leased  # duplicates only of what was in flight
        assert all(n <= 2 for n in counts.values())
        assert killed_at < len(receiver.received)
        assert receiver.peak_open_requests == 16  # never more requests open than max_in_flight
        assert_key_order(receiver, await positions(engine))
    finally:
        receiver.stop()
