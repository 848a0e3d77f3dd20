"""The timestamp authority's status (issue #17): its failures are recorded under TSA_SINK like
a sink's, a success clears them and records the seal it timestamped, and the Pipeline page's
Seals card shows it (last success, failures since, last error) when AUDIT_TSA_URL is set."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.audit.anchoring import Anchorer, Backoff
from service.settings import Settings
from service.store.audit.anchors import TSA_SINK, SinkStatus, sink_status
from service.store.audit.seals import seal_pending
from service.store.audit.sinks import sink_for
from tests.integration.ui.test_pages import browser, sign_in
from tests.support.asgi import running
from tests.support.audit import add_events
from tests.support.processes import free_port
from tests.support.tokens import READ_TOKEN
from tests.support.tsa import OPENSSL, make_tsa, tsa_server

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

TSA_ROWS = re.compile(
    r'<tr class="anchor-tsa" id="anchor-tsa">.*?</tr>(\s*<tr class="anchor-tsa-error".*?</tr>)?',
    re.S,
)


async def tsa_status(engine: AsyncEngine) -> SinkStatus:
    async with engine.connect() as conn:
        (status,) = await sink_status(conn, [TSA_SINK])
    return status


async def tsa_row(settings: Settings, engine: AsyncEngine) -> str | None:
    """The Seals card's TSA row as a reader sees it (tags dropped), or None."""
    app = create_app(settings, engine=engine)
    async with running(app), browser(app) as client:
        await sign_in(client, READ_TOKEN)
        page = await client.get("/ui/pipeline")
    assert page.status_code == 200
    rows = TSA_ROWS.search(page.text)  # the TSA's row, and its last error's beneath
    if rows is None:
        return None
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", rows.group(0))).split())


async def test_a_tsa_success_clears_its_failures_and_the_card_shows_it(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there until the TSA starts
    tsa_url = f"http://127.0.0.1:{port}/tsa"
    anchors = f"file://{tmp_path}/anchors"
    configured = replace(settings, audit_anchor_url=(anchors,), audit_tsa_url=tsa_url)
    anchorer = Anchorer(
        engine,
        http,
        [sink_for(anchors)],
        interval_s=0,
        tsa_url=tsa_url,
        backoff=Backoff(first_s=0, cap_s=0),  # every round asks the TSA again
    )
    # Configured, never asked: a row with nothing yet.
    row = await tsa_row(configured, engine)
    assert row is not None and "no timestamp yet" in row and "last error" not in row
    # Without AUDIT_TSA_URL: no row.
    assert await tsa_row(settings, engine) is None

    await add_events(engine, 1)
    assert await seal_pending(engine)
    assert await anchorer.anchor_once() == []
    assert await anchorer.anchor_once() == []
    down = await tsa_status(engine)
    assert (down.seal_id, down.failures) == (None, 2)
    assert down.last_error is not None and tsa_url in down.last_error
    row = await tsa_row(configured, engine)
    assert row is not None
    assert "no timestamp yet" in row and "2 since the last success" in row
    assert down.failed_at is not None
    assert f"last error, {down.failed_at:%Y-%m-%d %H:%M:%S} UTC : {down.last_error}" in row

    tsa_dir = make_tsa(tmp_path / "tsa")
    with tsa_server(tsa_dir, port) as url:
        assert url == tsa_url
        assert await anchorer.anchor_once() == [anchors]
    up = await tsa_status(engine)
    assert (up.seal_id, up.failures) == (1, 0)  # the success cleared the failures
    assert up.anchored_at is not None
    assert up.anchored_at > down.failed_at
    assert up.last_error == down.last_error  # kept: what went wrong last time
    row = await tsa_row(configured, engine)
    assert row is not None
    assert re.search(r"Timestamp authority seal 1, \d{4}-\d\d-\d\d", row), row
    assert "since the last success" not in row and " 0 " in row
    assert down.last_error in row

    # Down again: counted from the success on.
    await add_events(engine, 1)
    assert await seal_pending(engine)
    assert await anchorer.anchor_once() == []
    again = await tsa_status(engine)
    assert (again.seal_id, again.failures) == (1, 1)
