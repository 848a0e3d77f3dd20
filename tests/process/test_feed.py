"""GET /feed as Server-Sent Events from a real `serve` process: inverted commits seen once and
in order, resuming after Last-Event-ID, keep-alives, and a slow reader's bounded cost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.engine import create_engine, plain_url, with_database
from service.store.listed import Listed
from tests.support.feed import Message, full_event, sse_messages, store
from tests.support.processes import clean_env, free_port, running, wait_http
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN

pytestmark = pytest.mark.slow

SSE = {"Accept": "text/event-stream", "Authorization": f"Bearer {READ_TOKEN}"}


@dataclass
class Server:
    base: str
    pid: int
    engine: AsyncEngine
    log: Path

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(plain_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def feed_server(server_url: str, template: str, log_dir: Path) -> AsyncIterator[Server]:
    """`serve --no-background` on a database of its own, and an engine to write into it."""
    name = f"pes_feed_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = with_database(server_url, name)
    port = free_port()
    env = clean_env(
        DATABASE_URL=url,
        PORT=str(port),
        WEBHOOK_API_KEYS=API_KEY,
        API_READ_TOKENS=READ_TOKEN,
        API_ADMIN_TOKENS=ADMIN_TOKEN,
        PAXOS_CLIENT_ID="unused",
        PAXOS_CLIENT_SECRET="unused",
        LOG_FORMAT="json",
    )
    log = log_dir / f"serve-{port}.log"
    engine = create_engine(url)
    try:
        with running(["serve", "--no-background"], env, log) as process:
            wait_http(f"http://127.0.0.1:{port}/health/live")
            yield Server(f"http://127.0.0.1:{port}", process.pid, engine, log)
            assert process.poll() is None, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        await engine.dispose()
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def notify(engine: AsyncEngine) -> None:
    """What the fetcher sends once full events have committed."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_notify('events_fetched', '')"))


async def commit(engine: AsyncEngine, *events: Listed) -> dict[uuid.UUID, int]:
    async with engine.begin() as conn:
        written = await store(conn, *events)
    await notify(engine)
    return written


@dataclass
class Reader:
    """An SSE client that collects what it receives, in a task of its own."""

    messages: list[Message] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def items(self) -> list[Message]:
        return [m for m in self.messages if m.data is not None]

    async def read(self, base: str, headers: dict[str, str], **params: Any) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
            http.stream("GET", f"{base}/feed", params=params, headers=headers) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for message in sse_messages(response):
                self.messages.append(message)
                self.arrived.set()

    async def until(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(self.items)} of {count} items arrived"
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)


def check_in_order(items: list[Message], written: dict[uuid.UUID, int]) -> None:
    """Every written event exactly once, in position order, each message well formed."""
    expected = sorted(written.items(), key=lambda kv: kv[1])
    assert [int(m.id or "") for m in items] == [p for _, p in expected]
    assert [m.item["event"]["id"] for m in items] == [str(i) for i, _ in expected]
    for m in items:
        assert m.item["position"] == int(m.id or "")
        assert m.event == m.item["event"]["type"]


async def test_sse_sees_commits_in_inverted_order_once_and_in_position_order(
    server_url: str, template_database: str, tmp_path: Path
) -> None:
    async with feed_server(server_url, template_database, tmp_path) as server:
        reader = Reader()
        reading = asyncio.create_task(reader.read(server.base, SSE))
        try:
            first, second = full_event(n=1), full_event(n=2)
            written: dict[uuid.UUID, int] = {}
            async with server.engine.connect() as a, server.engine.connect() as b:
                await a.begin()
                await b.begin()
                written |= await store(a, first)
                written |= await store(b, second)
                await b.commit()  # the higher position first
                await notify(server.engine)
                await asyncio.sleep(1.5)  # past a poll, and past the NOTIFY
                assert reader.items == []
                await a.commit()
                await notify(server.engine)
            await reader.until(2)

            # Then writers racing one another, committing in whatever order they finish.
            async def writer(k: int) -> None:
                for n in range(10):
                    async with server.engine.begin() as conn:
                        written.update(await store(conn, full_event(n=n, identity_id=f"i{k}")))
                        await asyncio.sleep(0.002 * ((n * k) % 4))
                    await notify(server.engine)

            await asyncio.gather(*(writer(k) for k in range(4)))
            await reader.until(len(written))
            await asyncio.sleep(1.0)  # nothing more arrives: no repeats
            check_in_order(reader.items, written)
        finally:
            reading.cancel()


async def test_sse_resumes_after_last_event_id(
    server_url: str, template_database: str, tmp_path: Path
) -> None:
    async with feed_server(server_url, template_database, tmp_path) as server:
        written: dict[uuid.UUID, int] = {}
        for n in range(5):
            written |= await commit(server.engine, full_event(n=n))
        ordered = sorted(written.values())
        first = Reader()
        reading = asyncio.create_task(first.read(server.base, SSE))
        await first.until(5)
        reading.cancel()
        assert [int(m.id or "") for m in first.items] == ordered
        # A reconnect sends the last id it saw; `after` in the URL is the original one.
        resumed = Reader()
        headers = {**SSE, "Last-Event-ID": str(ordered[1])}
        reading = asyncio.create_task(resumed.read(server.base, headers, after=0))
        await resumed.until(3)
        await asyncio.sleep(0.5)
        reading.cancel()
        assert [int(m.id or "") for m in resumed.items] == ordered[2:]
        # `after` alone does the same.
        from_after = Reader()
        reading = asyncio.create_task(from_after.read(server.base, SSE, after=ordered[3]))
        await from_after.until(1)
        await asyncio.sleep(0.5)
        reading.cancel()
        assert [int(m.id or "") for m in from_after.items] == ordered[4:]


async def test_a_slow_sse_reader_is_back_pressured_and_the_server_memory_stays_bounded(
    server_url: str, template_database: str, tmp_path: Path
) -> None:
    """10,000 events of ~4 KB (40 MB of items) written while one reader takes one event a
    second: the server holds a page for it, not the backlog; afterwards the reader gets every
    event, in order. A second reader, whose filter matches nothing, gets keep-alives."""
    events, per_batch, slow_s = 10_000, 200, 18.0
    async with feed_server(server_url, template_database, tmp_path) as server:
        headers = {"Authorization": f"Bearer {READ_TOKEN}"}
        async with httpx.AsyncClient() as http:
            warm = await http.get(f"{server.base}/feed", params={"wait": 0}, headers=headers)
            assert warm.status_code == 200
        baseline = server.rss_kb()
        idle = Reader()
        idling = asyncio.create_task(idle.read(server.base, SSE, type="nothing.*"))
        written: dict[uuid.UUID, int] = {}
        peak = baseline

        async def write() -> None:
            for b in range(events // per_batch):
                batch = [
                    full_event(n=b * per_batch + i, padding=4000, identity_id=f"i{i}")
                    for i in range(per_batch)
                ]
                written.update(await commit(server.engine, *batch))

        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
            http.stream("GET", f"{server.base}/feed", headers=SSE) as response,
        ):
            messages = sse_messages(response)
            got: list[Message] = []
            writing = asyncio.create_task(write())
            started = time.monotonic()
            while time.monotonic() - started < slow_s:
                message = await anext(messages)
                if message.data is not None:
                    got.append(message)
                peak = max(peak, server.rss_kb())
                await asyncio.sleep(1.0)
            await writing
            peak = max(peak, server.rss_kb())
            slow_count = len(got)
            while len(got) < events:
                message = await asyncio.wait_for(anext(messages), 30)
                if message.data is not None:
                    got.append(message)
        idling.cancel()
        growth_mb = (peak - baseline) / 1024
        assert growth_mb < 30, f"RSS grew {growth_mb:.1f} MB with a slow reader"
        assert slow_count <= slow_s + 2  # it really was slow: the backlog waited in the store
        check_in_order(got, written)
        assert idle.items == []
        assert any(m.comment == "keep-alive" for m in idle.messages), idle.messages


async def test_tail_prints_each_event_once_in_order_with_its_filters(
    server_url: str, template_database: str, tmp_path: Path
) -> None:
    name = f"pes_tail_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = with_database(server_url, name)
    engine = create_engine(url)
    log = tmp_path / "tail.log"
    try:
        early = full_event("identity.approved", n=0)
        written = await commit(engine, early)
        args = ["tail", "--after", "0", "--type", "identity.*"]
        with running(args, clean_env(DATABASE_URL=url), log):
            wanted: dict[uuid.UUID, int] = dict(written)
            first, second = full_event("identity.denied", n=1), full_event(n=2)
            async with engine.connect() as a, engine.connect() as b:
                await a.begin()
                await b.begin()
                wanted |= await store(a, first)
                wanted |= await store(b, second)
                await b.commit()  # the higher position first
                await a.commit()
            await notify(engine)
            await commit(engine, full_event("transfer.crypto_deposit.completed", n=3))
            await commit(engine, full_event("identity.approved", n=4, is_test=True))
            last = full_event("identity.approved", n=5, identity_id="idt-last")
            wanted |= await commit(engine, last)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and str(last.event_id) not in log.read_text():
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
        expected = sorted(wanted.items(), key=lambda kv: kv[1])
        assert [(int(w[0]), w[3]) for w in lines] == [(p, str(i)) for i, p in expected]
        assert lines[-1][2] == "identity.approved" and lines[-1][4] == "idt-last"
    finally:
        await engine.dispose()
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
