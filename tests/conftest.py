"""Fixtures: a real PostgreSQL, one migrated template, a fresh database per test.

The server is the embedded one (under .data/test) unless TEST_DATABASE_URL names another.
Migrations run once per session into a template database; each test gets its own
`CREATE DATABASE ... TEMPLATE`, so tests are isolated and may commit for real.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.db.engine import create_engine, plain_url, start_embedded_postgres, with_database
from service.db.migrations import upgrade
from service.settings import Settings
from tests.fetching import fetch_settings, paxos  # noqa: E402, F401 - simulator fixtures

ROOT = Path(__file__).resolve().parent.parent
READ_TOKEN = "test-read-token"
ADMIN_TOKEN = "test-admin-token"
API_KEY = "test-api-key"

_counter = itertools.count()


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    # Under pytest-xdist each worker has a server of its own: transaction ids are server-wide,
    # so one worker's open transaction would hold back the gap-safe readers' horizon
    # (pg_snapshot_xmin) in another worker's databases.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return start_embedded_postgres(ROOT / ".data" / (f"test-{worker}" if worker else "test"))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for `-n auto` (`make test`): one per core, at most 4, each with its own embedded
    server; none on a TEST_DATABASE_URL server, which they would all share (see _server_url)."""
    if os.environ.get("TEST_DATABASE_URL"):
        return 0
    return max(1, min(os.cpu_count() or 1, 4))


def _own_id(item: pytest.Item) -> None:
    """Schemathesis names each operation's test `test_x[GET /path]` but, under pytest 9.2,
    all of them get the function's id; pytest-xdist schedules by id and would run only one
    operation of them all. Give the item the id its name says."""
    suffix = item.name[len(getattr(item, "originalname", item.name)) :]
    if not suffix or item.nodeid.endswith(suffix):
        return
    node_id = getattr(item, "_id", None)
    if node_id is not None and hasattr(type(node_id), "parse"):
        item._id = type(node_id).parse(item.nodeid + suffix)  # pytest >= 9.2
    else:
        item._nodeid = item.nodeid + suffix


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _own_id(item)
        # The slow tests (real processes, timing windows) run one after another on one
        # worker (`--dist loadgroup`), never two at once; the others are spread over the rest.
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("slow"))
    shared = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if shared:
        raise pytest.UsageError(f"tests share an id, so pytest-xdist would run one: {shared[:3]}")


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL to a database on the test server, with rights to create databases."""
    return _server_url()


async def _admin(server_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(plain_url(server_url))


@pytest.fixture(scope="session")
async def template_database(server_url: str) -> AsyncIterator[str]:
    """A database migrated to head, copied for each test."""
    name = f"pes_template_{os.getpid()}"
    admin = await _admin(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    engine = create_engine(with_database(server_url, name), pool_size=1)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    yield name
    await _drop(server_url, name)


async def _drop(server_url: str, name: str) -> None:
    admin = await _admin(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(server_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own, dropped afterwards."""
    name = f"pes_test_{os.getpid()}_{next(_counter)}"
    admin = await _admin(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield with_database(server_url, name)
    await _drop(server_url, name)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        webhook_api_keys=(API_KEY,),
        api_read_tokens=(READ_TOKEN,),
        api_admin_tokens=(ADMIN_TOKEN,),
    )


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Run `app`'s lifespan in a task of its own (its cancel scopes must enter and exit in one
    task, and pytest may set up and tear down a fixture in different ones)."""
    started = asyncio.Event()
    stop = asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what the startup raised
    try:
        yield
    finally:
        stop.set()
        await task


async def app_client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `app` on the test's own event loop, lifespan entered."""
    async with (
        running(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield client


@pytest.fixture
async def client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The service with API-key webhook auth, over ASGI."""
    async for c in app_client(create_app(settings, engine=engine)):
        yield c


def read_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {READ_TOKEN}"}


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
