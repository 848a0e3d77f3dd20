# ruff: noqa: F811 - `app` is the fixture imported from test_pages
"""Console error pages and refused forms over HTTP: the navigation stays, what was typed
stays, each reason beside its field; the job page speaks in labels."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.jobs import create_job
from tests.integration.ui.test_pages import (  # noqa: F401 - the fixture
    app,
    browser,
    page_csrf,
    sign_in,
)
from tests.support.tokens import ADMIN_TOKEN

NAV = 'aria-label="Console"'


@pytest.mark.server_independent  # HTML: the same on any server
async def test_an_error_page_keeps_the_navigation(app: object) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        missing = await admin.get("/ui/transfers/nothing-here")
        assert missing.status_code == 404
        assert "No transfer with id nothing-here" in missing.text
        assert NAV in missing.text and 'href="/ui/identities"' in missing.text
    async with browser(app) as stranger:  # nobody signed in: no navigation to offer
        refused = await stranger.post("/ui/login", data={"token": "x", "csrf": "forged"})
        assert refused.status_code == 403 and NAV not in refused.text


async def test_a_refused_backfill_keeps_what_was_typed_beside_the_reason(app: object) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/pipeline")
        refused = await admin.post(
            "/ui/pipeline/backfill",
            data={"csrf": csrf, "since": "2026-01-05T00:00", "types": "identity.*"},
        )
        assert refused.status_code == 400
        assert NAV in refused.text
        assert 'value="2026-01-05T00:00"' in refused.text
        assert 'value="identity.*"' in refused.text
        assert re.search(r'id="b-until-problem">required<', refused.text)
        assert re.search(r'id="b-types-problem">exact event types only', refused.text)


async def test_a_refused_subscription_shows_the_reason_beside_its_field(app: object) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/subscriptions")
        refused = await admin.post(
            "/ui/subscriptions",
            data={"csrf": csrf, "name": "ledger", "url": "http://127.0.0.1:9/hooks"},
        )
        assert refused.status_code == 400
        assert 'value="ledger"' in refused.text
        assert 'id="c-url-problem">' in refused.text


async def test_the_job_page_shows_labels_not_keys(app: object, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        job_id = await create_job(
            conn,
            "backfill",
            {
                "since": "2026-01-01T00:00:00+00:00",
                "until": "2026-01-02T00:00:00+00:00",
                "types": ["identity.approved"],
                "include_test": False,
            },
        )
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        job = await admin.get(f"/ui/jobs/{job_id}")
    assert job.status_code == 200
    assert "<h1>Backfill</h1>" in job.text
    assert "Test events</dt>" in job.text and ">no</dd>" in job.text
    assert "include_test" not in job.text
