"""The console over HTTP (no browser): sessions, cookie flags, CSRF, roles, plain HTML pages.

Each page must be complete without JavaScript, so reading its HTML is reading what a person
sees. The browser walk is in test_console.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings
from service.store.console import TRANSFER_EVENTS_SQL, transfer_events
from service.store.tables import events, jobs
from tests.support.asgi import running
from tests.support.factories import notification
from tests.support.fetching import deliver
from tests.support.tokens import ADMIN_TOKEN, READ_TOKEN

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[object]:
    app = create_app(settings, engine=engine)
    async with running(app):
        yield app


def browser(app: object, base_url: str = "http://testserver") -> httpx.AsyncClient:
    """A client that keeps cookies like a browser, and follows no redirect on its own."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)  # type: ignore[arg-type]


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/ui/login")
    assert form.status_code == 200
    csrf = CSRF.search(form.text)
    assert csrf is not None
    return await client.post("/ui/login", data={"token": token, "csrf": csrf.group(1)})


async def page_csrf(client: httpx.AsyncClient, path: str) -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


async def failed_event(client: httpx.AsyncClient, engine: AsyncEngine) -> uuid.UUID:
    """An event whose Get Event failed for good (as a 403 from Paxos leaves it)."""
    body = notification(type="identity.approved")
    await deliver(client, [body])
    event_id = uuid.UUID(body["id"])
    async with engine.begin() as conn:
        await conn.execute(
            update(events)
            .where(events.c.event_id == event_id)
            .values(
                status="failed", attempts=1, last_error="Paxos answered 403: insufficient scopes"
            )
        )
    return event_id


async def status_of(engine: AsyncEngine, event_id: uuid.UUID) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(select(events.c.status).where(events.c.event_id == event_id)))


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_pages_send_a_visitor_without_a_session_to_sign_in(app: object) -> None:
    async with browser(app) as client:
        response = await client.get("/ui/events?status=failed")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=%2Fui%2Fevents%3Fstatus%3Dfailed"
        # htmx polls are told where to go instead of getting the sign-in page swapped in.
        polled = await client.get("/ui/events", headers={"HX-Request": "true"})
        assert polled.status_code == 401
        assert polled.headers["hx-redirect"].startswith("/ui/login")


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_sign_in_sets_a_strict_http_only_cookie_that_does_not_hold_the_token(
    app: object,
) -> None:
    async with browser(app) as client:
        response = await sign_in(client, ADMIN_TOKEN)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/events"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("pes_session=")
        )
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert "httponly" in flags
        assert "samesite=strict" in flags
        assert "path=/ui" in flags
        assert "secure" not in flags  # plain HTTP here: a Secure cookie would never come back
        assert ADMIN_TOKEN not in cookie
        page = await client.get("/ui/events")
        assert page.status_code == 200
        assert "admin" in page.text


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_the_session_cookie_is_secure_over_https(app: object) -> None:
    async with browser(app, "https://testserver") as client:
        response = await sign_in(client, READ_TOKEN)
        assert response.status_code == 303
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("pes_session=")
        )
        assert "secure" in {part.strip().lower() for part in cookie.split(";")[1:]}


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_a_wrong_token_is_refused_and_opens_no_session(app: object) -> None:
    async with browser(app) as client:
        response = await sign_in(client, "not-a-token")
        assert response.status_code == 401
        assert "not a valid read or admin token" in response.text
        assert "not-a-token" not in response.text
        assert not any(
            c.startswith("pes_session=") for c in response.headers.get_list("set-cookie")
        )
        assert (await client.get("/ui/events")).status_code == 303


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_sign_in_without_the_forms_csrf_token_is_refused(app: object) -> None:
    async with browser(app) as client:
        # A form posted from another site: it has no pes_login_csrf cookie to match.
        response = await client.post("/ui/login", data={"token": ADMIN_TOKEN, "csrf": "guess"})
        assert response.status_code == 403
        assert not any(
            c.startswith("pes_session=") for c in response.headers.get_list("set-cookie")
        )


async def test_an_admin_form_without_the_sessions_csrf_token_changes_nothing(
    app: object, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event_id = await failed_event(client, engine)
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        for data in ({}, {"csrf": "wrong"}):
            response = await admin.post(f"/ui/events/{event_id}/refetch", data=data)
            assert response.status_code == 403
            assert "expired or did not come from this console" in response.text
        assert await status_of(engine, event_id) == "failed"
        response = await admin.post("/ui/pipeline/rebuild", data={"name": "all"})
        assert response.status_code == 403
    async with engine.connect() as conn:
        assert (await conn.execute(select(jobs))).first() is None


async def test_a_reader_sees_no_admin_buttons_and_is_refused_admin_actions(
    app: object, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event_id = await failed_event(client, engine)
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        page = await reader.get(f"/ui/events/{event_id}")
        assert page.status_code == 200
        assert "Fetch again" not in page.text
        pipeline = await reader.get("/ui/pipeline")
        assert pipeline.status_code == 200
        assert str(event_id) in pipeline.text  # the failed fetch is listed, for reading
        for admin_only in ('method="post" action="/ui/pipeline', 'type="checkbox"'):
            assert admin_only not in pipeline.text
        csrf = await page_csrf(reader, f"/ui/events/{event_id}")
        refused = await reader.post(f"/ui/events/{event_id}/refetch", data={"csrf": csrf})
        assert refused.status_code == 403
        assert "needs an admin token" in refused.text
        bulk = await reader.post(
            "/ui/pipeline/refetch", data={"csrf": csrf, "event_id": str(event_id)}
        )
        assert bulk.status_code == 403
        rebuild = await reader.post("/ui/pipeline/rebuild", data={"csrf": csrf, "name": "all"})
        assert rebuild.status_code == 403
    assert await status_of(engine, event_id) == "failed"
    async with engine.connect() as conn:
        assert (await conn.execute(select(jobs))).first() is None


async def test_an_admin_fetches_a_failed_event_again(
    app: object, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event_id = await failed_event(client, engine)
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        page = await admin.get(f"/ui/events/{event_id}")
        assert "Fetch again" in page.text
        assert "Paxos answered 403: insufficient scopes" in page.text
        csrf = await page_csrf(admin, f"/ui/events/{event_id}")
        response = await admin.post(f"/ui/events/{event_id}/refetch", data={"csrf": csrf})
        assert response.status_code == 303
        assert response.headers["location"] == f"/ui/events/{event_id}?notice=refetch"
        assert await status_of(engine, event_id) == "pending"
        again = await admin.post(f"/ui/events/{event_id}/refetch", data={"csrf": csrf})
        assert again.status_code == 303  # pending may be made due again; nothing breaks


async def test_bulk_fetch_again_schedules_every_selected_event(
    app: object, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    first = await failed_event(client, engine)
    second = await failed_event(client, engine)
    untouched = await failed_event(client, engine)
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        pipeline = await admin.get("/ui/pipeline")
        assert all(str(e) in pipeline.text for e in (first, second, untouched))
        csrf = await page_csrf(admin, "/ui/pipeline")
        response = await admin.post(
            "/ui/pipeline/refetch",
            data={"csrf": csrf, "event_id": [str(first), str(second)]},
        )
        assert response.status_code == 303
    assert [await status_of(engine, e) for e in (first, second, untouched)] == [
        "pending",
        "pending",
        "failed",
    ]


async def test_the_events_page_lists_and_filters_without_javascript(
    app: object, client: httpx.AsyncClient
) -> None:
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    approved = notification(type="identity.approved", time=when)
    deposit = notification(type="transfer.crypto_deposit.completed", time=when)
    test_one = notification(type="identity.denied", time=when, is_test=True)
    await deliver(client, [approved, deposit, test_one])
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        everything = await reader.get("/ui/events")
        assert all(b["id"] in everything.text for b in (approved, deposit, test_one))
        assert "2026-03-01 12:00:00 UTC" in everything.text
        assert 'datetime="2026-03-01T12:00:00Z"' in everything.text
        # The form as a browser sends it: empty fields, a datetime-local value read as UTC.
        filtered = await reader.get(
            "/ui/events",
            params={
                "type": "identity.*",
                "since": "2026-03-01T11:00",
                "until": "",
                "is_test": "false",
                "status": "pending",
                "identity_id": "",
                "order": "desc",
            },
        )
        assert filtered.status_code == 200
        assert approved["id"] in filtered.text
        assert deposit["id"] not in filtered.text and test_one["id"] not in filtered.text
        assert 'value="identity.*"' in filtered.text  # the form shows what was asked
        later = await reader.get("/ui/events", params={"since": "2026-03-01T12:00:01"})
        assert approved["id"] not in later.text and "No events match." in later.text


async def test_a_bad_filter_is_explained_on_the_page(app: object) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        response = await reader.get("/ui/events", params={"type": "iden*tity"})
        assert response.status_code == 400
        assert "a wildcard may only end a prefix" in response.text


async def test_event_pages_are_paged_by_keyset(app: object, client: httpx.AsyncClient) -> None:
    bodies = [
        notification(type="identity.approved", time=datetime(2026, 3, 1, 12, i, tzinfo=UTC))
        for i in range(55)
    ]
    await deliver(client, bodies)
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        first = await reader.get("/ui/events", params={"type": "identity.approved"})
        next_link = re.search(r'href="(/ui/events\?[^"]+cursor=[^"]+)" rel="next"', first.text)
        assert next_link is not None
        second = await reader.get(next_link.group(1).replace("&amp;", "&"))
        newest_first = [b["id"] for b in reversed(bodies)]
        assert all(i in first.text for i in newest_first[:50])
        assert all(i not in first.text for i in newest_first[50:])
        assert all(i in second.text for i in newest_first[50:])
        assert 'rel="next"' not in second.text


async def test_the_live_list_refreshes_as_a_fragment(
    app: object, client: httpx.AsyncClient
) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        page = await reader.get("/ui/events")
        assert 'hx-trigger="every 5s"' in page.text
        body = notification(type="identity.approved")
        await deliver(client, [body])
        fragment = await reader.get(
            "/ui/events", headers={"HX-Request": "true", "HX-Target": "event-rows"}
        )
        assert fragment.text.lstrip().startswith('<tbody id="event-rows"')
        assert body["id"] in fragment.text and "<html" not in fragment.text


async def test_event_text_is_escaped(app: object, client: httpx.AsyncClient) -> None:
    body = notification(type="<script>alert(1)</script>")
    await deliver(client, [body])
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        for path in ("/ui/events", f"/ui/events/{body['id']}"):
            page = await reader.get(path)
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "<script>alert" not in page.text


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_pages_load_nothing_from_elsewhere(app: object) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        page = await reader.get("/ui/pipeline")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith(("/", "#", "data:")) for s in sources), sources
        htmx = await reader.get("/ui/static/htmx.min.js")
        assert htmx.status_code == 200 and "htmx" in htmx.text[:200]


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_removing_a_token_ends_the_sessions_opened_with_it(
    app: object, settings: Settings, engine: AsyncEngine
) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        assert (await reader.get("/ui/events")).status_code == 200
        rotated = create_app(settings.replace(api_read_tokens=("another-token",)), engine=engine)
        async with running(rotated), browser(rotated) as same_browser:
            same_browser.cookies = reader.cookies
            assert (await same_browser.get("/ui/events")).status_code == 303


async def test_an_identity_page_shows_its_state_and_timeline(
    app: object, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = notification(type="identity.approved")
    await deliver(client, [body])
    async with engine.begin() as conn:
        await conn.execute(
            update(events)
            .where(events.c.event_id == uuid.UUID(body["id"]))
            .values(identity_id="ident-1")
        )
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        page = await reader.get("/ui/identities/ident-1")
        assert page.status_code == 200
        assert body["id"] in page.text and "Not projected" in page.text
        missing = await reader.get("/ui/identities/nobody")
        assert missing.status_code == 404 and "No identity with id nobody" in missing.text


async def test_a_transfers_timeline_reads_its_own_events_only(engine: AsyncEngine) -> None:
    """A transfer's events are found by the id inside the full event: through their index,
    the page reads the transfer's few events, not every transfer event (here 2,000 others,
    newer than ours)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def transfer_event(transfer_id: str, second: int) -> dict[str, object]:
        return {
            "event_id": uuid.uuid4(),
            "type": "transfer.crypto_deposit.completed",
            "source": "com.paxos",
            "time": start + timedelta(seconds=second),
            "object": "event",
            "is_test": False,
            "status": "fetched",
            "object_id": transfer_id,
        }

    ours = [transfer_event("tr-ours", s) for s in (5, 1, 9)]
    others = [transfer_event(f"tr-{i % 400}", 100 + i) for i in range(2000)]
    async with engine.begin() as conn:
        await conn.execute(insert(events), [*ours, *others])
        await conn.execute(text("ANALYZE events"))
    async with engine.connect() as conn:
        timeline = await transfer_events(conn, "tr-ours")
        plan = await conn.scalar(
            text("EXPLAIN (ANALYZE, FORMAT JSON) " + TRANSFER_EVENTS_SQL),
            {"id": "tr-ours", "limit": 100},
        )
    newest_first = sorted(ours, key=lambda e: e["time"], reverse=True)  # type: ignore[arg-type, return-value]
    assert [e.id for e in timeline] == [e["event_id"] for e in newest_first]
    nodes = _plan_nodes(plan[0]["Plan"])
    # The transfer's index alone finds the rows (an index scan or a bitmap of it), and the
    # scan of events returns the 3 rows without reading others to throw away.
    # (The journal's key finds each one's full event.)
    assert {n["Index Name"] for n in nodes if "Index Name" in n} == {
        "ix_events_transfer_object_id_time_event_id",
        "uq_journal_event_id_kind",
    }
    scans = [n for n in nodes if n.get("Relation Name") == "events"]
    assert [(n["Actual Rows"], n.get("Rows Removed by Filter", 0)) for n in scans] == [(3, 0)]


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(m for child in node.get("Plans", []) for m in _plan_nodes(child))]


async def test_a_rebuild_started_from_the_console_is_a_job_with_a_page(app: object) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/pipeline")
        response = await admin.post("/ui/pipeline/rebuild", data={"csrf": csrf, "name": "all"})
        assert response.status_code == 303
        location = response.headers["location"]
        assert re.fullmatch(r"/ui/jobs/[0-9a-f-]{36}", location)
        page = await admin.get(location)
        assert page.status_code == 200
        assert 'id="job-state"' in page.text and "queued" in page.text
        assert 'hx-trigger="every 1s"' in page.text
        unknown = await admin.post("/ui/pipeline/rebuild", data={"csrf": csrf, "name": "nope"})
        assert unknown.status_code == 400


async def test_a_backfill_started_from_the_console_is_a_job(
    app: object, engine: AsyncEngine
) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/pipeline")
        response = await admin.post(
            "/ui/pipeline/backfill",
            data={
                "csrf": csrf,
                "since": "2026-01-01T00:00",
                "until": "2026-01-02T00:00",
                "types": "identity.approved",
            },
        )
        assert response.status_code == 303
        backwards = await admin.post(
            "/ui/pipeline/backfill",
            data={"csrf": csrf, "since": "2026-01-02T00:00", "until": "2026-01-01T00:00"},
        )
        assert backwards.status_code == 400 and "later than since" in backwards.text
    async with engine.connect() as conn:
        params = (await conn.execute(select(jobs.c.kind, jobs.c.params))).all()
    assert params == [
        (
            "backfill",
            {
                "since": "2026-01-01T00:00:00+00:00",
                "until": "2026-01-02T00:00:00+00:00",
                "types": ["identity.approved"],
                "include_test": False,
            },
        )
    ]


@pytest.mark.server_independent  # sessions, cookies and HTML: the same on any server
async def test_signing_out_ends_the_session(app: object) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        csrf = await page_csrf(reader, "/ui/events")
        response = await reader.post("/ui/logout", data={"csrf": csrf})
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
        assert (await reader.get("/ui/events")).status_code == 303


async def test_seals_and_verification_show_once_they_exist(
    app: object, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    from service.store.audit.seals import seal_pending
    from service.store.audit.verify import verify

    body = notification(type="identity.approved")
    await deliver(client, [body])
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        before = await reader.get(f"/ui/events/{body['id']}")
        assert "not yet sealed" in before.text
        pipeline = await reader.get("/ui/pipeline")
        assert "not yet sealed" in pipeline.text and "never verified" in pipeline.text

        sealed = await seal_pending(engine)
        assert sealed
        report = await verify(engine, 3600.0)
        assert report.ok
        after = await reader.get(f"/ui/events/{body['id']}")
        assert "not yet sealed" not in after.text
        assert f"seal {sealed[-1].seal_id} (positions" in after.text
        assert sealed[-1].hash_hex[:16] in after.text
        pipeline = await reader.get("/ui/pipeline")
        assert f"seal {sealed[-1].seal_id}: positions" in pipeline.text
        assert re.search(r'id="last-verify">ok, \d+ rows through position', pipeline.text)
