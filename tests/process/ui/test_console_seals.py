"""The Pipeline page's Seals card in a real browser (Debian's Chromium through Playwright, as
test_console.py drives it), against the service on a real port: the head seal's signature
status, per anchor sink its last anchor, the anchor's age and the sink's failures, and the
timestamp authority's last success, failures since and last error, as the anchorer left them
(one sink written, one failing; the TSA answered once, then was down).

A screenshot goes to tests/process/ui/screenshots/seals.png (not committed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.audit.anchoring import Anchorer
from service.domain.signing import Signer, private_pem
from service.settings import Settings
from service.store.audit.seals import seal_pending
from service.store.audit.sinks import sink_for
from tests.support.audit import add_events
from tests.support.processes import free_port
from tests.support.tokens import READ_TOKEN
from tests.support.tsa import OPENSSL, make_tsa, tsa_server

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"

pytestmark = [
    pytest.mark.slow,
    # As in test_console.py: skipped where Chromium cannot be installed, never in CI.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's Chromium is not installed at /usr/bin/chromium "
        "(`make test` installs it as root: apt-get install chromium)",
    ),
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed"),
]


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: pytest owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def served(settings: Settings, engine: AsyncEngine) -> AsyncIterator[str]:
    """The service (`settings` as the test set them) on a real port: its base URL."""
    port = free_port()
    app = create_app(settings, engine=engine)
    server = _QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the server stopped during start-up")
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.generate()


@pytest.fixture
def sinks(tmp_path: Path) -> tuple[str, str]:
    """Two anchor sinks: a directory, and one that cannot be written (a file is where its
    directory should be)."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    return (tmp_path / "anchors").as_uri(), f"{blocked.as_uri()}/anchors"


@pytest.fixture
def tsa_port() -> int:
    """Where the timestamp authority answers while it is up."""
    return free_port()


@pytest.fixture
def settings(
    settings: Settings, signer: Signer, sinks: tuple[str, str], tmp_path: Path, tsa_port: int
) -> Settings:
    key = tmp_path / "seal.pem"
    key.write_bytes(private_pem(signer.private))
    return settings.replace(
        audit_anchor_url=sinks,
        audit_signing_key=key,
        audit_tsa_url=f"http://127.0.0.1:{tsa_port}/tsa",
    )


async def test_the_seals_card_shows_each_sinks_last_anchor_and_the_signature(
    engine: AsyncEngine,
    signer: Signer,
    sinks: tuple[str, str],
    settings: Settings,
    tsa_port: int,
    tmp_path: Path,
    served: str,
    chromium,
) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    good, bad = sinks
    await add_events(engine, 3)
    assert [s.seal_id for s in await seal_pending(engine, signer=signer)] == [1]
    async with httpx.AsyncClient() as http:
        anchorer = Anchorer(
            engine,
            http,
            [sink_for(good), sink_for(bad)],
            interval_s=0,
            tsa_url=settings.audit_tsa_url,
        )
        with tsa_server(make_tsa(tmp_path / "tsa"), tsa_port):
            assert await anchorer.anchor_once() == [good]
        # A newer seal, not anchored: the TSA is down now (counted), so the card shows the
        # last anchor and the TSA's last success, not the head.
        await add_events(engine, 1)
        assert [s.seal_id for s in await seal_pending(engine, signer=signer)] == [2]
        assert await anchorer.anchor_once() == []

    context = await chromium.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(served + "/ui/pipeline")
    assert "/ui/login" in page.url  # sent to sign in first, and back afterwards
    await page.get_by_label("Read or admin token").fill(READ_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"/ui/pipeline$"))

    card = page.locator("section.card", has=page.get_by_role("heading", name="Seals"))
    await expect(card).to_be_visible()
    await expect(card.locator("#seal-head")).to_contain_text("seal 2: positions")
    await expect(card.locator("#seal-signature")).to_have_text(f"signed, key {signer.key_id[:16]}…")
    await expect(card.locator("#seal-signature code")).to_have_attribute("title", signer.key_id)

    rows = card.get_by_role("table", name="Anchors").locator("tbody tr.anchor-sink")
    await expect(rows).to_have_count(2)
    written, failing = rows.nth(0), rows.nth(1)
    await expect(written.locator("th")).to_have_text(good)
    cells = written.locator("td")
    await expect(cells.nth(0)).to_have_text(re.compile(r"^seal 1, \d{4}-\d\d-\d\d"))
    await expect(cells.nth(1)).to_have_text(re.compile(r"^\d+\.\d s$"))  # the anchor's age
    await expect(cells.nth(2)).to_have_text("0")
    await expect(failing.locator("th")).to_have_text(bad)
    cells = failing.locator("td")
    await expect(cells.nth(0)).to_have_text("none yet")
    await expect(cells.nth(1)).to_have_text("")
    await expect(cells.nth(2)).to_have_text("1 since the last anchor")
    await expect(cells.nth(2).locator("span")).to_have_attribute("title", re.compile("Error"))
    await expect(cells.nth(2).locator("span")).to_be_visible()
    # The timestamp authority: seal 1 timestamped, one failure since, and that failure's error.
    tsa = card.get_by_role("table", name="Anchors").locator("tbody tr#anchor-tsa")
    await expect(tsa.locator("th")).to_have_text("Timestamp authority")
    cells = tsa.locator("td")
    await expect(cells.nth(0)).to_have_text(re.compile(r"^seal 1, \d{4}-\d\d-\d\d"))
    await expect(cells.nth(1)).to_have_text(re.compile(r"^\d+\.\d s$"))
    await expect(cells.nth(2).locator(".state-failing")).to_have_text("1 since the last success")
    error = card.locator("#anchor-tsa-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(f"TSA http://127.0.0.1:{tsa_port}/tsa:")
    await expect(error).to_have_text(
        re.compile(r"^Timestamp authority's last error, \d{4}-\d\d-\d\d .*: TSA ")
    )
    # Long sink URLs wrap: the table stays inside its card, every column in view.
    card_box = await card.bounding_box()
    table_box = await card.get_by_role("table", name="Anchors").bounding_box()
    assert card_box is not None and table_box is not None
    assert table_box["x"] + table_box["width"] <= card_box["x"] + card_box["width"], (
        table_box,
        card_box,
    )

    SCREENSHOTS.mkdir(exist_ok=True)
    await card.screenshot(path=str(SCREENSHOTS / "seals.png"))
    assert errors == []
    await context.close()
