"""The console's Subscriptions page over HTTP (no browser), and the subscription lag on the
Pipeline page: what readers and admins see, what admins can do, and that a secret is shown
once, on the page that answers the form that made it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings
from service.store import subscriptions as store
from service.web.standard_webhooks import format_secret
from tests.integration.ui.test_pages import CSRF, browser, page_csrf, sign_in
from tests.support.asgi import running
from tests.support.push import append, full_event
from tests.support.tokens import ADMIN_TOKEN, READ_TOKEN

SECRET = b"s" * 32  # the stored key of the subscription made by `made`


@pytest.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[object]:
    """The console as deployed: subscription URLs to private addresses refused."""
    app = create_app(settings, engine=engine)
    async with running(app):
        yield app


@pytest.fixture
async def lenient_app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[object]:
    """SUBSCRIPTION_ALLOW_PRIVATE_URLS=true (a receiver on loopback, as in the demo)."""
    app = create_app(settings.replace(subscription_allow_private_urls=True), engine=engine)
    async with running(app):
        yield app


@pytest.fixture
async def made(engine: AsyncEngine) -> str:
    """A subscription to identity events, from the beginning, two of them stored (no delivery
    loop runs here: both stay behind)."""
    async with engine.begin() as conn:
        assert await store.create_subscription(
            conn,
            name="ledger",
            url="https://receiver.example/hooks/ledger",
            types=["identity.*"],
            include_test=False,
            max_in_flight=4,
            secret=SECRET,
            start="beginning",
        )
    await append(engine, [full_event("identity.approved"), full_event("identity.denied")])
    await append(engine, [full_event("transfer.crypto_deposit.completed")])  # not matched
    return "ledger"


async def row(engine: AsyncEngine, name: str) -> dict[str, object]:
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                text(
                    "SELECT state, cursor_position, secret, previous_secret, url "
                    "FROM subscriptions WHERE name = :n"
                ),
                {"n": name},
            )
        ).one_or_none()
    assert found is not None
    return dict(found._mapping)


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM subscriptions")) or 0)


def secret_shown(html: str) -> str:
    """The secret on a page that shows one (`<code id="secret" ...>whsec_...</code>`)."""
    start = html.index('id="secret"')
    value = html[html.index(">", start) + 1 : html.index("</code>", start)]
    assert value.startswith("whsec_")
    return value


async def test_the_page_lists_a_subscription_without_its_secret_and_a_reader_sees_no_forms(
    app: object, made: str, engine: AsyncEngine
) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        page = await reader.get("/ui/subscriptions")
        assert page.status_code == 200, page.text
        html = page.text
        assert 'href="/ui/subscriptions" aria-current="page"' in html  # in the nav, current
        assert "ledger" in html
        assert "https://receiver.example/hooks/ledger" in html
        assert '<td class="state state-active">active</td>' in html
        assert '<dd class="lag">2 events,' in html  # the two identity events, not the transfer
        assert "<code>identity.*</code>" in html
        for outcome in store.OUTCOMES:
            assert f"outcome-{outcome}" in html
        # Never the secret, in any of its spellings.
        for spelling in (format_secret(SECRET), base64.b64encode(SECRET).decode(), "whsec_"):
            assert spelling not in html
        # A reader sees no forms (but for signing out), and is refused their actions.
        assert 'method="post" action="/ui/subscriptions' not in html
        assert "New subscription" not in html
        csrf = CSRF.search(html)
        assert csrf is not None
        for path, data in (
            ("/ui/subscriptions/ledger/state", {"state": "paused"}),
            ("/ui/subscriptions/ledger/replay", {"after": "0"}),
            ("/ui/subscriptions/ledger/rotate-secret", {}),
            ("/ui/subscriptions", {"name": "other", "url": "https://receiver.example/x"}),
        ):
            refused = await reader.post(path, data={"csrf": csrf.group(1), **data})
            assert refused.status_code == 403, path
            assert "needs an admin token" in refused.text
    after = await row(engine, "ledger")
    assert after["state"] == "active"
    assert after["secret"] == SECRET
    assert await count(engine) == 1


async def test_the_pipeline_shows_each_subscriptions_lag_linking_to_the_page(
    app: object, made: str
) -> None:
    async with browser(app) as reader:
        await sign_in(reader, READ_TOKEN)
        page = await reader.get("/ui/pipeline")
        assert page.status_code == 200
        line = page.text[page.text.index('<tr class="subscription-lag">') :]
        line = line[: line.index("</tr>")]
        assert 'href="/ui/subscriptions#sub-ledger">ledger</a>' in line
        assert ">active</td>" in line
        assert '<td class="num">2</td>' in line


async def test_an_admin_pauses_and_resumes(app: object, made: str, engine: AsyncEngine) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/subscriptions")
        paused = await admin.post(
            "/ui/subscriptions/ledger/state", data={"csrf": csrf, "state": "paused"}
        )
        assert paused.status_code == 303
        assert paused.headers["location"].startswith("/ui/subscriptions?notice=paused")
        assert (await row(engine, "ledger"))["state"] == "paused"
        page = await admin.get(paused.headers["location"])
        assert "Paused: events still queue up" in page.text
        assert '<td class="state state-paused">paused</td>' in page.text
        assert ">Resume</button>" in page.text
        resumed = await admin.post(
            "/ui/subscriptions/ledger/state", data={"csrf": csrf, "state": "active"}
        )
        assert resumed.status_code == 303
        assert (await row(engine, "ledger"))["state"] == "active"
        bad = await admin.post(
            "/ui/subscriptions/ledger/state", data={"csrf": csrf, "state": "failing"}
        )
        assert bad.status_code == 400
        assert "state: must be active (resume) or paused" in bad.text
        missing = await admin.post(
            "/ui/subscriptions/nobody/state", data={"csrf": csrf, "state": "paused"}
        )
        assert missing.status_code == 404
        assert "No subscription named &#39;nobody&#39;" in missing.text
        assert "Traceback" not in missing.text


async def test_an_admin_replays_after_a_position_or_since_a_time(
    app: object, made: str, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE subscriptions SET cursor_position = 1000000"))
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/subscriptions")
        done = await admin.post(
            "/ui/subscriptions/ledger/replay", data={"csrf": csrf, "after": "1"}
        )
        assert done.status_code == 303
        assert (await row(engine, "ledger"))["cursor_position"] == 1
        page = await admin.get(done.headers["location"])
        assert "Replay scheduled" in page.text
        # Since a time before every event: back to just before the first event row.
        since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        done = await admin.post(
            "/ui/subscriptions/ledger/replay", data={"csrf": csrf, "since": since}
        )
        assert done.status_code == 303
        async with engine.connect() as conn:
            first = await conn.scalar(text("SELECT min(position) FROM journal WHERE kind='event'"))
        assert (await row(engine, "ledger"))["cursor_position"] == first - 1
        for data, message in (
            ({}, "give exactly one of after"),
            ({"after": "1", "since": since}, "give exactly one of after"),
            ({"after": "-3"}, "after: must be a whole number"),
            ({"since": "yesterday"}, "since: must be an RFC 3339 time"),
        ):
            refused = await admin.post(
                "/ui/subscriptions/ledger/replay", data={"csrf": csrf, **data}
            )
            assert refused.status_code == 400, data
            assert message in refused.text
        assert (await row(engine, "ledger"))["cursor_position"] == first - 1


async def test_an_admin_rotates_the_secret_and_sees_the_new_one_once(
    app: object, made: str, engine: AsyncEngine
) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/subscriptions")
        rotated = await admin.post("/ui/subscriptions/ledger/rotate-secret", data={"csrf": csrf})
        assert rotated.status_code == 200, rotated.text
        assert rotated.headers["cache-control"] == "no-store"
        shown = secret_shown(rotated.text)
        stored = await row(engine, "ledger")
        assert shown == format_secret(stored["secret"])  # type: ignore[arg-type]
        assert stored["previous_secret"] == SECRET
        assert "Previous secret" in rotated.text and "also signs until" in rotated.text
        again = await admin.get("/ui/subscriptions")
        assert shown not in again.text
        assert "whsec_" not in again.text
        assert "also signs until" in again.text  # the grace period, not the secret


async def test_an_admin_creates_a_subscription_and_sees_its_secret_once(
    lenient_app: object, engine: AsyncEngine
) -> None:
    async with browser(lenient_app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/subscriptions")
        assert "No subscription yet." in (await admin.get("/ui/subscriptions")).text
        form = {
            "csrf": csrf,
            "name": "books",
            "url": "http://127.0.0.1:9/hook",
            "types": "transfer.* identity.approved, transfer.*",
            "include_test": "true",
            "start": "beginning",
        }
        created = await admin.post("/ui/subscriptions", data=form)
        assert created.status_code == 201, created.text
        shown = secret_shown(created.text)
        stored = await row(engine, "books")
        assert shown == format_secret(stored["secret"])  # type: ignore[arg-type]
        assert stored["url"] == "http://127.0.0.1:9/hook"
        assert stored["cursor_position"] == 0
        async with engine.connect() as conn:
            view = await store.get_subscription(conn, "books")
        assert view is not None
        assert view.types == ["transfer.*", "identity.approved"]
        assert view.include_test is True
        listed = await admin.get("/ui/subscriptions")
        assert 'id="sub-books"' in listed.text
        assert shown not in listed.text
        # The same name again: refused, the form kept as typed, the first one untouched.
        duplicate = await admin.post("/ui/subscriptions", data=form)
        assert duplicate.status_code == 409
        assert "name: a subscription named &#39;books&#39; exists" in duplicate.text
        assert 'value="http://127.0.0.1:9/hook"' in duplicate.text
        assert "whsec_" not in duplicate.text
        assert (await row(engine, "books"))["secret"] == stored["secret"]
        for bad, message in (
            ({"name": "Bad Name"}, "name: must be 1 to 63 of a-z"),
            ({"name": "x", "url": "ftp://receiver.example/"}, "url: must be an http://"),
            ({"name": "x", "types": "transfer.**"}, "types: &#39;transfer.**&#39; is neither"),
            ({"name": "x", "start": "time", "start_time": "soon"}, "start time: must be"),
        ):
            refused = await admin.post("/ui/subscriptions", data={**form, **bad})
            assert refused.status_code == 400, bad
            assert message in refused.text
            assert 'role="alert"' in refused.text and "Traceback" not in refused.text
        # From a time: the position just before the first event recorded since then.
        later = await admin.post(
            "/ui/subscriptions",
            data={**form, "name": "later", "start": "time", "start_time": "2000-01-01T00:00"},
        )
        assert later.status_code == 201
    assert await count(engine) == 2


async def test_a_private_url_is_refused_with_a_clear_message(
    app: object, engine: AsyncEngine
) -> None:
    async with browser(app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        csrf = await page_csrf(admin, "/ui/subscriptions")
        for url, message in (
            ("http://127.0.0.1:9/hook", "url: 127.0.0.1 is a loopback address"),
            ("http://[::ffff:169.254.169.254]/", "is a link-local address"),
            ("http://10.1.2.3/hook", "url: 10.1.2.3 is a private address"),
        ):
            refused = await admin.post(
                "/ui/subscriptions", data={"csrf": csrf, "name": "inside", "url": url}
            )
            assert refused.status_code == 400, url
            assert message in refused.text
            assert 'id="create-problem"' in refused.text
            assert "whsec_" not in refused.text
    assert await count(engine) == 0


async def test_subscription_forms_without_the_csrf_token_change_nothing(
    lenient_app: object, made: str, engine: AsyncEngine
) -> None:
    async with browser(lenient_app) as admin:
        await sign_in(admin, ADMIN_TOKEN)
        for path, data in (
            ("/ui/subscriptions/ledger/state", {"state": "paused"}),
            ("/ui/subscriptions/ledger/replay", {"after": "0"}),
            ("/ui/subscriptions/ledger/rotate-secret", {}),
            ("/ui/subscriptions", {"name": "other", "url": "http://127.0.0.1:9/"}),
        ):
            for csrf in ({}, {"csrf": "wrong"}):
                refused = await admin.post(path, data={**csrf, **data})
                assert refused.status_code == 403, path
                assert "expired or did not come from this console" in refused.text
    after = await row(engine, "ledger")
    assert (after["state"], after["cursor_position"], after["secret"]) == ("active", 0, SECRET)
    assert await count(engine) == 1
