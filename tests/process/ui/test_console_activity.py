"""The console's activity charts, identity and transfer lists, time travel, error pages and
refused forms, in Debian's Chromium against the service on a real port (the walk's fixture:
test_console.py), fed by the simulator.

Saves console-activity.png and console-identity.png, the size the README shows, beside the
other screenshots (tests/process/ui/screenshots/, not committed; docs/ holds a copy of each).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx

from tests.process.ui.test_console import (  # noqa: F401 - fixtures
    SCREENSHOTS,
    Service,
    _deliver,
    _shot,
    _sign_in,
    chromium,
    pytestmark,
    service,
)
from tests.support.factories import notification
from tests.support.tokens import ADMIN_TOKEN


async def _doc_shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """A small picture for the docs: the top of the page, at the viewport's size."""
    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name), full_page=False, type="png")


async def test_charts_lists_time_travel_and_errors_in_a_browser(  # type: ignore[no-untyped-def]
    service: Service,  # noqa: F811
    chromium,  # noqa: F811
) -> None:
    from playwright.async_api import expect

    url = service.url
    context = await chromium.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    await _sign_in(page, url, ADMIN_TOKEN, then="/ui/activity")

    # The charts draw the minutes the simulator's events arrived in: points where non-zero.
    flow = page.locator("#chart-flow")
    await expect(flow.locator("svg")).to_be_visible()
    await expect(flow.get_by_text("time (UTC)")).to_have_count(1)  # axis label
    received_points = flow.locator("circle.series-received")
    assert await received_points.count() >= 1
    assert await flow.locator("circle.series-fetched").count() >= 1
    total = int(await page.locator("#total-received").inner_text())
    real_and_test = len(service.paxos.universe) + 2  # and the two that failed
    assert total >= len(service.paxos.universe)
    assert total <= real_and_test + 1
    values = [
        float(v) for v in await received_points.evaluate_all("ps => ps.map(p => p.dataset.value)")
    ]
    assert sum(values) == total
    # The backlog and lag charts have the sampler's first sample at least.
    await expect(page.locator("#chart-backlog svg")).to_be_visible()
    await expect(page.locator("#chart-projection-lag figcaption")).to_contain_text("Projection lag")
    await _shot(page, "activity")
    await _doc_shot(page, "console-activity.png")

    # A new webhook: the chart changes on the next load (the newest minutes are read live).
    async with httpx.AsyncClient(base_url=url) as http:
        await _deliver(http, notification(type="identity.approved", time=datetime.now(UTC)))
    await page.reload()
    await expect(page.locator("#total-received")).to_have_text(str(total + 1))
    after = [
        float(v)
        for v in await page.locator("#chart-flow circle.series-received").evaluate_all(
            "ps => ps.map(p => p.dataset.value)"
        )
    ]
    assert sum(after) == total + 1

    # The day, in 10-minute buckets.
    await page.get_by_role("link", name="last 24 hours").click()
    await page.wait_for_url(re.compile(r"window=24h"))
    await expect(page.locator("#chart-flow figcaption")).to_contain_text("per 10 minutes")
    assert await page.locator("#chart-flow circle.series-received").count() >= 1

    # Identities: in the navigation, filtered by status in any case, each row a link.
    await page.get_by_role("link", name="Identities").click()
    await page.wait_for_url(re.compile(r"/ui/identities$"))
    await page.get_by_label("Summary status").fill("approved")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url(re.compile(r"summary_status=approved"))
    statuses = await page.locator("td.summary-status").all_inner_texts()
    assert statuses and set(statuses) == {"APPROVED"}
    # A time window that ends before anything happened: nothing.
    await page.get_by_label("Last event before (UTC)").fill("2000-01-01T00:00:00")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_text("No identity matches.")).to_be_visible()
    await page.goto(url + "/ui/identities?summary_status=APPROVED")
    await page.locator("table.subjects tbody th a").first.click()
    await page.wait_for_url(re.compile(r"/ui/identities/[^/?]+$"))

    # Its history says what each event changed; the first sets the summary status.
    lines = page.locator("#history > li")
    assert await lines.count() >= 2
    await expect(lines.first).to_contain_text("→")
    await expect(page.locator("#history")).to_contain_text("→ APPROVED")
    await expect(page.locator("#summary-status")).to_have_text("APPROVED")
    await _shot(page, "identity-history")
    await _doc_shot(page, "console-identity.png")

    # As of just after its first event: that state, the later events marked as after.
    first = await lines.first.locator("time").first.get_attribute("datetime")
    assert first is not None
    moment = datetime.fromisoformat(first[:19] + "+00:00") + timedelta(seconds=1)
    await page.get_by_label("As of (UTC)").fill(moment.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_url(re.compile(r"as_of="))
    await expect(page.get_by_role("heading", name=re.compile("^State as of"))).to_be_visible()
    marked = await page.locator("#history > li.after-as-of").count()
    assert marked >= 1
    applied = int(await page.locator("#events-applied").inner_text())
    assert applied == await lines.count() - marked
    # Before anything happened, it had no state.
    await page.get_by_label("As of (UTC)").fill("2000-01-01T00:00:00")
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator("#no-state")).to_be_visible()
    # A time that is no time: the error beside the field, what was typed kept.
    await page.goto(page.url.split("?")[0] + "?as_of=yesterday")
    await expect(page.locator("#as-of-problem")).to_contain_text("RFC 3339")
    await expect(page.get_by_label("As of (UTC)")).to_have_attribute("aria-invalid", "true")

    # Transfers: listed, filtered, and a row leads to its page and history.
    await page.get_by_role("link", name="Transfers").click()
    await page.wait_for_url(re.compile(r"/ui/transfers$"))
    await page.get_by_label("Status").fill("completed")
    await page.get_by_role("button", name="Filter").click()
    statuses = await page.locator("td.transfer-status").all_inner_texts()
    assert statuses and set(statuses) == {"COMPLETED"}
    await page.locator("table.subjects tbody th a").first.click()
    await page.wait_for_url(re.compile(r"/ui/transfers/[^/?]+$"))
    await expect(page.locator("#transfer-status")).to_have_text("COMPLETED")
    await expect(page.locator("#history")).to_contain_text("status")
    await _shot(page, "transfer-history")

    # An error page keeps the navigation.
    response = await page.goto(url + "/ui/identities/nobody-at-all")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("alert")).to_contain_text("No identity with id nobody-at-all")
    await expect(page.get_by_role("navigation", name="Console")).to_be_visible()
    await page.get_by_role("link", name="Activity").click()
    await page.wait_for_url(re.compile(r"/ui/activity$"))

    # A refused backfill comes back with what was typed, the error beside its field.
    await page.goto(url + "/ui/pipeline")
    await page.get_by_label("Since (UTC)").fill("2026-01-02T00:00:00")
    await page.get_by_label("Until (UTC)").fill("2026-01-01T00:00:00")
    await page.get_by_label("Types (exact; empty for all)").fill("identity.approved")
    await page.get_by_role("button", name="Start backfill").click()
    await expect(page.locator("#b-until-problem")).to_contain_text("later than since")
    await expect(page.get_by_label("Since (UTC)")).to_have_value(
        re.compile(r"^2026-01-02T00:00(:00)?$")  # as Chromium submitted it
    )
    await expect(page.get_by_label("Types (exact; empty for all)")).to_have_value(
        "identity.approved"
    )
    await expect(page.get_by_role("navigation", name="Console")).to_be_visible()
    await _shot(page, "backfill-refused")
    await context.close()
