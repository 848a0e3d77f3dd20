"""The Paxos connection as /health/ready shows it: recorded in the database by whichever
process calls Paxos (here a fetcher beside an app that fetches nothing itself, as with
`serve --no-background` and `worker`), token failures with their reason and never the secret,
logged at WARNING."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
from datetime import datetime

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.app import create_app
from service.paxos.client import ConnectionReporter
from service.settings import Settings
from service.store.paxos_connection import read_connection, record_get_event, record_token
from tests.support.asgi import running
from tests.support.fetching import Paxos, deliver, new_fetcher, paxos_settings, settle
from tests.support.tokens import READ_TOKEN

WRONG_SECRET = "a-wrong-secret-not-to-be-shown"


async def _paxos_block(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text  # shown, never a reason to be unready
    assert WRONG_SECRET not in response.text
    block: dict[str, object] = response.json()["paxos"]
    return block


async def test_ready_shows_the_paxos_token_failing_with_its_reason_then_ok(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    paxos: Paxos,
    json_logs: io.StringIO,
) -> None:
    assert (await _paxos_block(client))["token"] == "unknown"
    await deliver(client, [e.notification() for e in paxos.universe.events[:3]])

    wrong_settings = paxos_settings(settings).replace(paxos_client_secret=WRONG_SECRET)
    wrong = new_fetcher(engine, wrong_settings, paxos, lease_s=0.5)  # soon free for the next
    task = asyncio.create_task(wrong.run())
    try:
        async with asyncio.timeout(10):
            while (block := await _paxos_block(client))["token"] != "failing":
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert "HTTP 401" in str(block["token_error"]), block
    assert block["last_get_event_at"] is None
    assert block["token_checked_at"] is not None
    warnings = [
        line
        for line in map(json.loads, json_logs.getvalue().splitlines())
        if line.get("level") == "warning" and "token" in line.get("event", "")
    ]
    assert warnings, json_logs.getvalue()
    assert "HTTP 401" in warnings[0]["reason"]
    assert WRONG_SECRET not in json_logs.getvalue()

    await settle(engine, new_fetcher(engine, paxos_settings(settings), paxos))
    block = await _paxos_block(client)
    assert (block["token"], block["token_error"]) == ("ok", None), block
    assert isinstance(block["last_get_event_at"], str)
    assert datetime.fromisoformat(block["last_get_event_at"]) >= datetime.fromisoformat(
        str(block["token_checked_at"])
    )


async def test_fetching_off_shows_no_paxos_block(settings: Settings, engine: AsyncEngine) -> None:
    app = create_app(settings, engine=engine, background=True)
    async with (
        running(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        body = (await client.get("/health/ready")).json()
    assert body["fetching"] == "off"
    assert "paxos" not in body


async def test_the_pipeline_page_shows_the_paxos_connection(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await record_token(conn, ok=False, error="token request: HTTP 401 (invalid_client)")
    app = create_app(settings, engine=engine)
    async with (
        running(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ui,
    ):
        form = await ui.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        await ui.post("/ui/login", data={"token": READ_TOKEN, "csrf": csrf.group(1)})
        page = await ui.get("/ui/pipeline")
        assert page.status_code == 200, page.text
        token = re.search(r'<dd id="paxos-token">(.*?)</dd>', page.text)
        assert token is not None, page.text
        assert "failing: token request: HTTP 401 (invalid_client)" in token.group(1)
        async with engine.begin() as conn:
            await record_token(conn, ok=True, error=None)
            await record_get_event(conn)
        page = await ui.get("/ui/pipeline")
        token = re.search(r'<dd id="paxos-token">(.*?)</dd>', page.text)
        last = re.search(r'<dd id="paxos-last-get">(.*?)</dd>', page.text)
        assert token is not None and token.group(1).startswith("ok")
        assert last is not None and "<time" in last.group(1)


async def test_closing_lets_writes_finish_and_cancels_one_that_hangs(engine: AsyncEngine) -> None:
    """A shutdown neither loses the connection state written just before it nor waits on a
    write that hangs (a database that stopped answering): each is awaited for a bound time,
    then cancelled, so no write outlives the engine it uses."""
    reporter = ConnectionReporter(engine)
    await reporter.token(False, "invalid_client")
    await reporter.close()
    async with engine.connect() as conn:
        assert (await read_connection(conn)).token_error == "invalid_client"

    hung = asyncio.Event()

    async def hang(conn: AsyncConnection) -> None:
        hung.set()
        await conn.execute(text("SELECT pg_sleep(30)"))

    reporter._write(hang)  # noqa: SLF001 - a write that never ends, as no public call makes
    await hung.wait()
    started = time.monotonic()
    await reporter.close(timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert not reporter._writes  # noqa: SLF001 - every write is over
