"""The console in a real browser: Debian's Chromium, driven by Playwright, against the service
listening on a real port, fed by the Paxos simulator through its real webhook intake, with
the fetcher, projector and job runner running in the background as in `serve`.

Screenshots of every page go to tests/process/ui/screenshots/ (not committed; docs/console.png
is one). Playwright's own browser downloads are never used: only /usr/bin/chromium, which
`make test` installs from Debian's packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings
from service.store.projections.checkpoints import lag
from service.store.tables import events
from tests.support.factories import encode, notification
from tests.support.fetching import Paxos, paxos_settings
from tests.support.paths import ROOT
from tests.support.processes import free_port
from tests.support.receiver import Receiver
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"

pytestmark = [
    pytest.mark.slow,
    # Skipped where Chromium cannot be installed; never in CI, where a missing browser must
    # fail the run rather than hide the console's tests.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's Chromium is not installed at /usr/bin/chromium "
        "(`make test` installs it as root: apt-get install chromium)",
    ),
]


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: pytest owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@dataclass
class Service:
    url: str
    engine: AsyncEngine
    paxos: Paxos
    failed: list[uuid.UUID]


async def _until(check, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def _count(engine: AsyncEngine, *where: object) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events).where(*where)) or 0)


@pytest.fixture
async def service(settings: Settings, engine: AsyncEngine, paxos: Paxos) -> AsyncIterator[Service]:
    """The service on a real port, its background running, with the simulator's events stored,
    fetched and projected, and two events whose fetch failed for good."""
    port = free_port()
    app = create_app(
        # Private URLs allowed: the walk's push receiver listens on loopback.
        paxos_settings(settings, host="127.0.0.1", port=port).replace(
            subscription_allow_private_urls=True
        ),
        engine=engine,
        http_client=paxos.http,
        background=True,
    )
    server = _QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        await _until(lambda: _started(server, task), what="server start")
        url = f"http://127.0.0.1:{port}"
        universe = paxos.universe
        real = [e for e in universe if not e.is_test]
        # Two events arrive while Paxos is down; their retries then run out (as after
        # FETCH_RETRY_HORIZON_S), which leaves them failed for the console to fetch again.
        doomed = [e for e in real if e.type.startswith("transfer.")][:2]
        paxos.state.outage(120)
        async with httpx.AsyncClient(base_url=url) as http:
            for sim in doomed:
                await _deliver(http, sim.notification())
            failed = [uuid.UUID(e.id) for e in doomed]

            async def given_up() -> bool:
                # Only between attempts (no lease): a fetch in flight would still land.
                async with engine.begin() as conn:
                    await conn.execute(
                        update(events)
                        .where(
                            events.c.event_id.in_(failed),
                            events.c.status == "pending",
                            events.c.attempts >= 1,
                            (events.c.lease_until.is_(None)) | (events.c.lease_until < func.now()),
                        )
                        .values(
                            status="failed",
                            next_attempt_at=None,
                            last_error="Paxos answered 503 for 7 days; retries stopped",
                        )
                    )
                return (
                    await _count(engine, events.c.event_id.in_(failed), events.c.status == "failed")
                    == 2
                )

            await _until(given_up, what="both events failed")
            paxos.state.clear_faults()
            for sim in universe:
                if sim not in doomed:
                    await _deliver(http, sim.notification())

        async def settled() -> bool:
            if await _count(engine, events.c.status == "pending"):
                return False
            async with engine.connect() as conn:
                return all(p.events_behind == 0 for p in await lag(conn))

        await _until(settled, timeout=30, what="fetched and projected")
        yield Service(url, engine, paxos, failed)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
        raise RuntimeError("the server stopped during start-up")
    return bool(server.started)


async def _deliver(http: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await http.post(
        "/webhooks/paxos",
        content=encode(body),
        headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
    )
    assert response.status_code == 200, response.text


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


async def _sign_in(page, url: str, token: str, then: str = "/ui/events") -> None:  # type: ignore[no-untyped-def]
    await page.goto(url + then)
    assert "/ui/login" in page.url  # sent to sign in first, and back afterwards
    await page.get_by_label("Read or admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(re.escape(then) + "$"))


async def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_an_operator_walks_the_console(service: Service, chromium) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    url = service.url
    admin = await chromium.new_context(viewport={"width": 1280, "height": 900})
    page = await admin.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )

    # Sign in (the login page first, as a person would see it).
    await page.goto(url + "/ui/login")
    await _shot(page, "login")
    await _sign_in(page, url, ADMIN_TOKEN)
    await expect(page.locator("table.events tbody tr").first).to_be_visible()
    await _shot(page, "events")

    # A new webhook shows up on the open list by itself (htmx), without a page load.
    await page.evaluate("window.stillTheSamePage = true")
    newcomer = notification(type="identity.approved", time=datetime.now(UTC))
    async with httpx.AsyncClient(base_url=url) as http:
        await _deliver(http, newcomer)
    await expect(page.locator(f'a[href="/ui/events/{newcomer["id"]}"]')).to_be_visible(
        timeout=10_000
    )
    assert await page.evaluate("window.stillTheSamePage === true")

    # Keyboard: the first Tab lands on the skip link, which moves focus to the content.
    await page.keyboard.press("Tab")
    await expect(page.locator("a.skip")).to_be_focused()
    # Times are UTC in the text, the reader's local time on hover (console.js).
    first_time = page.locator("table.events time").first
    await expect(first_time).to_have_attribute("title", re.compile("your local time"))

    # Filter: real identity events, fetched (the newcomer is still pending).
    await page.get_by_label("Type").fill("identity.*")
    await page.get_by_label("Test or real").select_option("false")
    await page.get_by_label("Status").select_option("fetched")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url(re.compile(r"type=identity\.\*"))
    types = await page.locator("table.events tbody th a").all_inner_texts()
    real_identity = [
        e for e in service.paxos.universe if e.type.startswith("identity.") and not e.is_test
    ]
    assert len(types) == min(len(real_identity), 50)
    assert all(t.startswith("identity.") for t in types)
    await _shot(page, "events-filtered")

    # Open an event, then follow it to its identity.
    await page.locator("table.events tbody th a").first.click()
    await page.wait_for_url(re.compile(r"/ui/events/[0-9a-f-]{36}$"))
    event_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#event-status")).to_have_text("fetched")
    await expect(page.locator("#full-event")).to_contain_text(event_id)
    await expect(page.get_by_role("heading", name="Journal rows")).to_be_visible()
    await _shot(page, "event")
    await page.locator("#identity-link").click()
    await page.wait_for_url(re.compile(r"/ui/identities/"))
    await expect(page.locator("#summary-status")).not_to_have_text("")
    await expect(page.locator(f'a[href="/ui/events/{event_id}"]').first).to_be_visible()
    await _shot(page, "identity")

    # A transfer's event leads to the transfer: its state above its timeline.
    await page.goto(url + "/ui/events?type=transfer.*&status=fetched")
    await page.locator("table.events tbody th a").first.click()
    await page.wait_for_url(re.compile(r"/ui/events/[0-9a-f-]{36}$"))
    transfer_event = page.url.rsplit("/", 1)[1]
    await page.locator("#transfer-link").click()
    await page.wait_for_url(re.compile(r"/ui/transfers/"))
    await expect(page.get_by_role("heading", name=re.compile("^Transfer"))).to_be_visible()
    await expect(page.locator(f'a[href="/ui/events/{transfer_event}"]').first).to_be_visible()
    await _shot(page, "transfer")

    # The pipeline lists the failed fetches; fetch one again.
    await page.get_by_role("link", name="Pipeline").click()
    await expect(page.locator("#failed-count")).to_have_text("2")
    await _shot(page, "pipeline")
    target = service.failed[0]
    await page.goto(f"{url}/ui/events/{target}")
    await expect(page.locator("#event-status")).to_have_text("failed")
    await page.get_by_role("button", name="Fetch again").click()
    await expect(page.get_by_role("status")).to_contain_text("new Get Event is scheduled")

    async def fetched() -> bool:
        await page.reload()
        return (await page.locator("#event-status").inner_text()) == "fetched"

    await _until(fetched, timeout=15, what="the event fetched again")
    await expect(page.get_by_role("button", name="Fetch again")).to_have_count(0)
    await _shot(page, "event-fetched-again")

    # A rebuild, watched to the end on its job page (htmx polls; no reload here).
    await page.goto(url + "/ui/pipeline")
    await page.get_by_label("Projection to rebuild").select_option("all")
    await page.get_by_role("button", name="Rebuild", exact=True).click()
    await page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    await page.evaluate("window.stillTheSamePage = true")
    await expect(page.locator("#job-state")).to_have_text("done", timeout=20_000)
    assert await page.evaluate("window.stillTheSamePage === true")  # polled, not reloaded
    await expect(page.locator("progress").first).to_be_visible()
    await _shot(page, "job")

    # A push subscription, created from the console: its secret shown once, on the answer.
    receiver = Receiver().start()
    try:
        await page.get_by_role("link", name="Subscriptions").click()
        await page.wait_for_url(re.compile(r"/ui/subscriptions$"))
        await expect(page.get_by_text("No subscription yet.")).to_be_visible()
        await page.get_by_label("Name").fill("ledger")
        await page.get_by_label("URL").fill(receiver.url)
        await page.get_by_label("Types").fill("identity.*")
        await page.get_by_label("Start").select_option("beginning")
        await page.get_by_role("button", name="Create").click()
        await expect(
            page.get_by_role("heading", name="Subscription ledger created")
        ).to_be_visible()
        secret = await page.locator("#secret").inner_text()
        assert secret.startswith("whsec_")
        await _shot(page, "subscription-created")
        # The delivery loop sends every real identity event, signed with that secret.
        async with service.engine.connect() as conn:
            stored = await conn.execute(
                select(events.c.event_id).where(
                    events.c.type.startswith("identity."),
                    events.c.is_test.is_(False),
                    events.c.status == "fetched",
                )
            )
            real_identity = {str(r.event_id) for r in stored}
        assert real_identity

        async def all_delivered() -> bool:
            return {r.event_id for r in receiver.answered} >= real_identity

        await _until(all_delivered, timeout=30, what="the identity events pushed")
        for received in receiver.received:
            assert received.verify(secret)["type"].startswith("identity.")
        await page.get_by_role("link", name="Back to the subscriptions").click()
        await page.wait_for_url(re.compile(r"/ui/subscriptions\?name=ledger#sub-ledger$"))

        async def caught_up() -> bool:
            await page.reload()
            return (await page.locator("#sub-ledger .lag").inner_text()).startswith("0 events")

        await _until(caught_up, timeout=15, what="the subscription caught up")
        await expect(page.locator("#sub-ledger .deliveries")).to_contain_text(
            f"delivered {len(receiver.answered)}"
        )
        assert secret not in await page.content()
        await _shot(page, "subscriptions")
        await page.get_by_role("button", name="Pause").click()
        await expect(page.get_by_role("status")).to_contain_text("Paused")
        await expect(page.get_by_role("button", name="Resume")).to_be_visible()
        await page.get_by_role("link", name="Pipeline").click()
        await expect(page.locator("tr.subscription-lag")).to_contain_text("paused")
        await _shot(page, "pipeline-subscriptions")
    finally:
        receiver.stop()
    assert not errors, errors

    # A reader: no admin buttons, and the server refuses the action anyway.
    reader = await chromium.new_context(viewport={"width": 1280, "height": 900})
    read_page = await reader.new_page()
    other = service.failed[1]
    await _sign_in(read_page, url, READ_TOKEN, then=f"/ui/events/{other}")
    await expect(read_page.locator("#event-status")).to_have_text("failed")
    await expect(read_page.get_by_role("button", name="Fetch again")).to_have_count(0)
    await expect(read_page.locator(".role")).to_have_text("read only")
    csrf = await read_page.locator('input[name="csrf"]').first.get_attribute("value")
    refused = await read_page.request.post(
        f"{url}/ui/events/{other}/refetch", form={"csrf": csrf or ""}, max_redirects=0
    )
    assert refused.status == 403
    assert "needs an admin token" in await refused.text()
    await read_page.goto(url + "/ui/pipeline")
    await expect(read_page.get_by_role("button", name="Rebuild")).to_have_count(0)
    await _shot(read_page, "pipeline-reader")
    await read_page.goto(url + "/ui/subscriptions")
    await expect(read_page.locator("#sub-ledger")).to_contain_text(receiver.url)
    await expect(read_page.get_by_role("button", name="Resume")).to_have_count(0)
    await expect(read_page.get_by_role("button", name="Create")).to_have_count(0)
    assert await _count(service.engine, events.c.event_id == other, events.c.status == "failed")
    await reader.close()

    # Without JavaScript the read-only pages are all there.
    plain = await chromium.new_context(java_script_enabled=False)
    plain_page = await plain.new_page()
    await _sign_in(plain_page, url, READ_TOKEN)
    rows = await plain_page.locator("table.events tbody tr").count()
    assert rows == min(len(service.paxos.universe), 50)
    await plain.close()
    await admin.close()


def test_screenshots_are_not_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "tests/process/ui/screenshots/" in ignored
