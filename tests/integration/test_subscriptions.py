"""Push subscriptions in one process: the admin API, and the delivery loop against a real
receiver on a loopback socket (signatures judged by the `standardwebhooks` reference package)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import WebhookVerificationError

from service.app import create_app
from service.domain.stored import Event
from service.settings import Settings
from service.store import subscriptions as store
from service.subscriptions.delivery import ERROR_BODY_CHARS, MAX_BODY_BYTES, RetryPolicy, send
from tests.support.asgi import app_client
from tests.support.processes import free_port
from tests.support.push import append, delivering, full_event, store_fetched, wait_until
from tests.support.receiver import Received, Receiver
from tests.support.tokens import ADMIN_TOKEN, READ_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def api(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app with private URLs allowed (the receiver is on loopback)."""
    app = create_app(settings.replace(subscription_allow_private_urls=True), engine=engine)
    async for c in app_client(app):
        yield c


@pytest.fixture
async def strict_api(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app as deployed: URLs to private addresses refused."""
    async for c in app_client(create_app(settings, engine=engine)):
        yield c


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


async def create(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post("/admin/subscriptions", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def view(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await api.get(f"/admin/subscriptions/{name}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- the admin API -----------------------------------------------------------------------------


async def test_create_answers_201_with_a_secret_shown_only_then(api: httpx.AsyncClient) -> None:
    created = await create(
        api, name="ledger", url="https://ledger.example/hook", types=["transfer.*"]
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert created["state"] == "active"
    assert created["types"] == ["transfer.*"]
    assert (created["include_test"], created["max_in_flight"]) == (False, 16)
    assert created["deliveries"]["delivered"] == 0

    one = (await api.get("/admin/subscriptions/ledger", headers=ADMIN)).text
    listed = (await api.get("/admin/subscriptions", headers=ADMIN)).text
    assert "secret" not in one.replace("previous_secret_valid_until", "")
    assert secret not in one and secret not in listed
    assert [
        s["name"] for s in (await api.get("/admin/subscriptions", headers=ADMIN)).json()["items"]
    ] == ["ledger"]


async def test_a_duplicate_name_is_409_and_an_unknown_one_404(api: httpx.AsyncClient) -> None:
    await create(api, name="crm", url="https://crm.example/hook")
    again = await api.post(
        "/admin/subscriptions", json={"name": "crm", "url": "https://b.example/"}, headers=ADMIN
    )
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    for method, path, body in [
        ("GET", "/admin/subscriptions/nope", None),
        ("PATCH", "/admin/subscriptions/nope", {"state": "paused"}),
        ("DELETE", "/admin/subscriptions/nope", None),
        ("POST", "/admin/subscriptions/nope/rotate-secret", None),
        ("POST", "/admin/subscriptions/nope/replay", {"after": 0}),
    ]:
        response = await api.request(method, path, json=body, headers=ADMIN)
        assert response.status_code == 404, (method, path, response.text)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "Bad Name", "url": "https://a.example/"}, 422, "name"),
        ({"url": "https://a.example/"}, 422, "name"),
        ({"name": "a", "url": "https://a.example/", "colour": "red"}, 422, "colour"),
        ({"name": "a", "url": 5}, 422, "url"),
        ({"name": "a", "url": "ftp://a.example/"}, 400, "url"),
        ({"name": "a", "url": "https://user:pw@a.example/"}, 400, "url"),
        ({"name": "a", "url": "https://a.example/", "types": "transfer.*"}, 422, "types"),
        ({"name": "a", "url": "https://a.example/", "types": ["trans*fer"]}, 400, "types"),
        ({"name": "a", "url": "https://a.example/", "include_test": "yes"}, 422, "include_test"),
        ({"name": "a", "url": "https://a.example/", "start": "yesterday"}, 400, "start"),
        ({"name": "a", "url": "https://a.example/", "start": "2026-01-01T00:00:00"}, 400, "start"),
        ({"name": "a", "url": "https://a.example/", "max_in_flight": 0}, 422, "max_in_flight"),
    ],
)
async def test_a_bad_request_names_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], status: int, field: str
) -> None:
    response = await api.post("/admin/subscriptions", json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["field"] == field
    assert problem["detail"].startswith(f"{field}: ")


async def test_options_lists_every_method_of_a_path(api: httpx.AsyncClient) -> None:
    allowed = {
        "/admin/subscriptions": {"GET", "OPTIONS", "POST"},
        "/admin/subscriptions/x": {"DELETE", "GET", "OPTIONS", "PATCH"},
        "/admin/subscriptions/x/replay": {"OPTIONS", "POST"},
    }
    for path, methods in allowed.items():
        response = await api.options(path, headers=ADMIN)
        assert response.status_code == 204
        assert set(response.headers["allow"].split(", ")) == methods, path


async def test_whole_numbers_written_as_floats_are_taken(api: httpx.AsyncClient) -> None:
    created = await create(api, name="f", url="https://f.example/", max_in_flight=8.0)
    assert created["max_in_flight"] == 8
    replayed = await api.post("/admin/subscriptions/f/replay", json={"after": 3.0}, headers=ADMIN)
    assert replayed.status_code == 200 and replayed.json()["position"] == 3


async def test_a_body_that_is_not_json_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/admin/subscriptions",
        content=b"{not json",
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert response.status_code == 400


async def test_a_read_token_may_not_manage_subscriptions(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/admin/subscriptions", headers={"Authorization": f"Bearer {READ_TOKEN}"}
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
async def test_internal_addresses_are_refused_at_creation(
    strict_api: httpx.AsyncClient, url: str
) -> None:
    response = await strict_api.post(
        "/admin/subscriptions", json={"name": "x", "url": url}, headers=ADMIN
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "url"
    assert (await strict_api.get("/admin/subscriptions", headers=ADMIN)).json()["items"] == []


async def test_pause_resume_change_and_delete(api: httpx.AsyncClient) -> None:
    await create(api, name="ops", url="https://ops.example/hook")
    paused = await api.patch("/admin/subscriptions/ops", json={"state": "paused"}, headers=ADMIN)
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    changed = await api.patch(
        "/admin/subscriptions/ops",
        json={"state": "active", "url": "https://ops2.example/h", "types": ["identity.*"]},
        headers=ADMIN,
    )
    assert changed.status_code == 200
    assert (changed.json()["state"], changed.json()["url"]) == ("active", "https://ops2.example/h")
    assert changed.json()["types"] == ["identity.*"]
    refused = await api.patch("/admin/subscriptions/ops", json={"state": "failing"}, headers=ADMIN)
    assert refused.status_code == 422 and refused.json()["field"] == "state"
    assert (await api.delete("/admin/subscriptions/ops", headers=ADMIN)).status_code == 204
    assert (await api.get("/admin/subscriptions/ops", headers=ADMIN)).status_code == 404


# --- delivery ----------------------------------------------------------------------------------


async def test_matching_events_are_posted_signed_with_the_event_as_the_api_shows_it(
    api: httpx.AsyncClient, engine: AsyncEngine, receiver: Receiver
) -> None:
    created = await create(
        api, name="ledger", url=receiver.url, types=["identity.*"], start="beginning"
    )
    wanted = [full_event("identity.approved", identity_id=f"idt-{i}") for i in range(5)]
    await append(engine, wanted)
    await append(engine, [full_event("transfer.crypto_deposit.completed", object_id="t-1")])
    await append(engine, [full_event("identity.denied", identity_id="idt-t")], is_test=True)

    async with delivering(engine):
        await receiver.arrived(5)
        await asyncio.sleep(0.3)  # nothing else comes
    assert sorted(receiver.ids()) == sorted(e["id"] for e in wanted)
    for item in receiver.received:
        # The reference implementation accepts it; the body is GET /events/{id}'s answer.
        assert item.verify(created["secret"]) == item.json()
        assert item.headers["content-type"] == "application/json"
        assert item.headers["webhook-signature"].startswith("v1,")
        shown = await api.get(f"/events/{item.event_id}", headers=ADMIN)
        assert item.json() == shown.json()
    counts = (await view(api, "ledger"))["deliveries"]
    assert counts["delivered"] == 5
    assert (await view(api, "ledger"))["lag_events"] == 0


async def test_events_sharing_a_key_go_in_order_when_writers_commit_inverted(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A takes the smaller position but commits after B: both are delivered, A first."""
    receiver = Receiver(delay_s=0.02).start()
    try:
        await create(api, name="order", url=receiver.url, start="now")
        first = full_event(identity_id="idt-1")
        second = full_event(identity_id="idt-1")
        async with delivering(engine), engine.connect() as a, engine.connect() as b:
            await a.begin()
            await a.execute(text("SELECT pg_current_xact_id()"))
            await store_fetched(a, first)
            await b.begin()
            await store_fetched(b, second)
            await b.commit()
            await asyncio.sleep(0.5)
            assert receiver.ids() == []  # B waits behind A's open transaction
            await a.commit()
            await receiver.arrived(2)
        assert receiver.ids() == [first["id"], second["id"]]
    finally:
        receiver.stop()


async def test_keys_go_in_parallel_up_to_max_in_flight_each_in_order(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    receiver = Receiver(delay_s=0.05).start()
    try:
        await create(api, name="par", url=receiver.url, start="now", max_in_flight=4)
        bodies = [full_event(identity_id=f"idt-{i % 10}") for i in range(60)]
        await append(engine, bodies)
        async with delivering(engine):
            await receiver.arrived(60)
        positions = {b["id"]: n for n, b in enumerate(bodies)}
        by_key: dict[str, list[int]] = {}
        for item in receiver.received:
            by_key.setdefault(item.json()["identity_id"], []).append(positions[item.event_id])
        assert all(order == sorted(order) for order in by_key.values()), by_key
        assert len(receiver.ids()) == 60  # once each
        assert receiver.peak_open_requests == 4
    finally:
        receiver.stop()


async def _leases(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM subscription_outbox WHERE lease_until > now()")
        )
    return int(found or 0)


async def test_heads_are_leased_ahead_yet_requests_stay_within_max_in_flight(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """One deliverer leases up to max_in_flight more heads than it has requests open (a freed
    slot sends one at once); a second deliverer then leases none beyond max_in_flight in all,
    so the receiver never has more than max_in_flight requests open, and keys keep order."""
    receiver = Receiver(delay_s=0.2).start()
    try:
        await create(api, name="ahead", url=receiver.url, start="now", max_in_flight=4)
        bodies = [full_event(identity_id=f"idt-{i % 12}") for i in range(72)]
        await append(engine, bodies)
        most = 0
        async with delivering(engine):
            await receiver.arrived(4)
            for _ in range(10):
                most = max(most, await _leases(engine))
                await asyncio.sleep(0.05)
            # 4 open and 4 leased ahead; a finished request keeps its lease until its outcome
            # is written with the next claim, so up to 4 more may be counted for a moment.
            assert 4 < most <= 12, most
            async with delivering(engine):  # another process joins
                await receiver.arrived(72, timeout=60)
        assert receiver.peak_open_requests == 4
        assert len(receiver.ids()) == 72  # once each
        positions = {b["id"]: n for n, b in enumerate(bodies)}
        by_key: dict[str, list[int]] = {}
        for item in receiver.received:
            by_key.setdefault(item.json()["identity_id"], []).append(positions[item.event_id])
        assert all(order == sorted(order) for order in by_key.values()), by_key
    finally:
        receiver.stop()


async def test_pausing_gives_back_the_heads_leased_ahead(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    receiver = Receiver(delay_s=0.3).start()
    try:
        await create(api, name="give-back", url=receiver.url, start="now", max_in_flight=2)
        await append(engine, [full_event(identity_id=f"idt-{i}") for i in range(10)])
        async with delivering(engine):
            await wait_until(lambda: _true(receiver.open_requests == 2))
            paused = await api.patch(
                "/admin/subscriptions/give-back", json={"state": "paused"}, headers=ADMIN
            )
            assert paused.status_code == 200
            # The two requests open finish; the two heads leased ahead are given back unsent.
            await wait_until(lambda: _leases_are(engine, 0), timeout=5)
        sent = set(receiver.ids())
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT attempts, first_attempt_at FROM subscription_outbox "
                        "WHERE CAST(event_id AS text) <> ALL(:sent)"
                    ),
                    {"sent": list(sent)},
                )
            ).all()
        assert len(rows) == 10 - len(sent)
        assert all((r.attempts, r.first_attempt_at) == (0, None) for r in rows), rows
    finally:
        receiver.stop()


async def _leases_are(engine: AsyncEngine, n: int) -> bool:
    return await _leases(engine) == n


async def test_during_a_rotation_both_secrets_sign_until_the_grace_ends(
    api: httpx.AsyncClient, settings: Settings, engine: AsyncEngine, receiver: Receiver
) -> None:
    old = (await create(api, name="rot", url=receiver.url, start="now"))["secret"]
    rotated = await api.post("/admin/subscriptions/rot/rotate-secret", headers=ADMIN)
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old and new.startswith("whsec_")
    await append(engine, [full_event(identity_id="idt-r")])
    async with delivering(engine):
        await receiver.arrived(1)
    item = receiver.received[0]
    assert len(item.headers["webhook-signature"].split(" ")) == 2
    item.verify(old)
    item.verify(new)

    # Past the grace (here 0 s), only the new secret signs.
    app = create_app(
        settings.replace(subscription_allow_private_urls=True, subscription_secret_grace_s=0),
        engine=engine,
    )
    async for short in app_client(app):
        newest = (await short.post("/admin/subscriptions/rot/rotate-secret", headers=ADMIN)).json()
    await asyncio.sleep(0.01)
    await append(engine, [full_event(identity_id="idt-s")])
    async with delivering(engine):
        await receiver.arrived(2)
    last = receiver.received[-1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    last.verify(newest["secret"])
    with pytest.raises(WebhookVerificationError):
        last.verify(new)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1:{port}/hook",
    ],
)
async def test_internal_addresses_are_refused_at_connect_time(
    engine: AsyncEngine, receiver: Receiver, url: str
) -> None:
    """A URL that passed the check when created (DNS can change since) is checked again for
    the connection itself."""
    async with engine.begin() as conn:
        await store.create_subscription(
            conn,
            name="dns-changed",
            url=url.format(port=receiver.port),
            types=[],
            include_test=False,
            max_in_flight=16,
            secret=b"k" * 32,
            start="now",
        )
    await append(engine, [full_event(identity_id="idt-x")])
    async with delivering(engine, allow_private=False):

        async def refused() -> bool:
            async with engine.connect() as conn:
                found = await store.get_subscription(conn, "dns-changed")
            return found is not None and found.deliveries.get("refused", 0) >= 2

        await wait_until(refused)
    assert receiver.received == []
    async with engine.connect() as conn:
        found = await store.get_subscription(conn, "dns-changed")
    assert found is not None and found.last_error is not None
    assert "refused" in found.last_error
    assert found.deliveries.get("delivered", 0) == 0
    assert found.pending == 1  # kept, to be delivered if the address becomes allowed


async def test_a_redirect_is_a_failure_and_is_not_followed(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    def redirect(item: Received) -> tuple[int, dict[str, str]]:
        if item.path == "/hook":
            return 302, {"location": f"http://127.0.0.1:{receiver.port}/elsewhere"}
        return 204, {}

    receiver = Receiver(redirect).start()
    try:
        await create(api, name="redir", url=receiver.url, start="now")
        await append(engine, [full_event(identity_id="idt-r")])
        async with delivering(engine):
            await wait_until(lambda: _counted(api, "redir", "failed", 2))
        assert {r.path for r in receiver.received} == {"/hook"}
        shown = await view(api, "redir")
        assert "302" in shown["last_error"]
        assert shown["deliveries"]["delivered"] == 0
        assert shown["pending"] == 1
    finally:
        receiver.stop()


async def _counted(api: httpx.AsyncClient, name: str, outcome: str, n: int) -> bool:
    return bool((await view(api, name))["deliveries"][outcome] >= n)


async def test_410_gone_pauses_and_resuming_delivers(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    gone = True
    receiver = Receiver(lambda _: (410, {}) if gone else (204, {})).start()
    try:
        await create(api, name="gone", url=receiver.url, start="now")
        body = full_event(identity_id="idt-g")
        await append(engine, [body])
        async with delivering(engine):
            await wait_until(lambda: _state(api, "gone", "paused"))
            await asyncio.sleep(0.5)
            assert len(receiver.received) == 1  # paused: no retries
            gone = False
            resumed = await api.patch(
                "/admin/subscriptions/gone", json={"state": "active"}, headers=ADMIN
            )
            assert resumed.status_code == 200
            await receiver.arrived(1)
            await wait_until(lambda: _counted(api, "gone", "delivered", 1))
        assert receiver.ids() == [body["id"], body["id"]]
    finally:
        receiver.stop()


async def _pending(api: httpx.AsyncClient, name: str, n: int) -> bool:
    return bool((await view(api, name))["pending"] == n)


async def _state(api: httpx.AsyncClient, name: str, state: str) -> bool:
    return bool((await view(api, name))["state"] == state)


async def test_past_the_retry_horizon_it_is_failing_and_keeps_everything(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    broken = True
    receiver = Receiver(lambda _: (500, {}) if broken else (204, {})).start()
    try:
        await create(api, name="flaky", url=receiver.url, start="now")
        bodies = [full_event(identity_id=f"idt-{i}") for i in range(3)]
        await append(engine, bodies)
        policy = RetryPolicy(horizon_s=0.5, base_s=0.05, cap_s=0.1)
        async with delivering(engine, policy=policy):
            await wait_until(lambda: _state(api, "flaky", "failing"))
            ready = (await api.get("/health/ready")).json()
            assert ready["failing_subscriptions"] == ["flaky"]
            shown = await view(api, "flaky")
            assert shown["pending"] == 3 and "HTTP 500" in shown["last_error"]
            assert shown["lag_events"] == 3
            await asyncio.sleep(0.3)
            tried = len(receiver.received)
            await asyncio.sleep(0.5)
            assert len(receiver.received) == tried  # stopped where it is
            broken = False
            await api.patch("/admin/subscriptions/flaky", json={"state": "active"}, headers=ADMIN)
            await receiver.arrived(3)
            await wait_until(lambda: _pending(api, "flaky", 0))
        assert set(receiver.ids(answered_only=True)) >= {b["id"] for b in bodies}
        assert (await view(api, "flaky"))["state"] == "active"
    finally:
        receiver.stop()


async def test_replay_delivers_again_after_a_position(
    api: httpx.AsyncClient, engine: AsyncEngine, receiver: Receiver
) -> None:
    await create(api, name="re", url=receiver.url, start="now")
    bodies = [full_event(identity_id=f"idt-{i}") for i in range(4)]
    await append(engine, bodies)
    async with engine.connect() as conn:
        positions = [
            int(p)
            for p in (
                await conn.execute(
                    text("SELECT position FROM journal WHERE kind = 'event' ORDER BY position")
                )
            ).scalars()
        ]
    async with delivering(engine):
        await receiver.arrived(4)
        # Until its outcome is recorded a delivered event is still in the outbox, and a replay
        # does not copy it twice (documented): replay once every outcome is in.
        await wait_until(lambda: _outbox_is_empty(engine))
        replayed = await api.post(
            "/admin/subscriptions/re/replay", json={"after": positions[1]}, headers=ADMIN
        )
        assert replayed.status_code == 200
        await receiver.arrived(6, distinct=False)
        await asyncio.sleep(0.3)
    again = receiver.ids()[4:]
    assert sorted(again) == sorted(b["id"] for b in bodies[2:])
    bad = await api.post(
        "/admin/subscriptions/re/replay", json={"after": 1, "since": "x"}, headers=ADMIN
    )
    assert bad.status_code == 422


async def test_start_now_leaves_earlier_events_and_a_time_takes_those_after_it(
    api: httpx.AsyncClient, engine: AsyncEngine, receiver: Receiver
) -> None:
    before = [full_event(identity_id="idt-b")]
    await append(engine, before)
    async with engine.connect() as conn:
        cut = await conn.scalar(text("SELECT now()"))
    await asyncio.sleep(0.01)
    after = [full_event(identity_id="idt-a")]
    await append(engine, after)
    await create(api, name="now", url=receiver.url, start="now")
    await create(api, name="since", url=receiver.url, start=cut.isoformat())
    later = [full_event(identity_id="idt-l")]
    await append(engine, later)
    async with delivering(engine):
        await receiver.arrived(2)
        await asyncio.sleep(0.5)
    assert sorted(receiver.ids()) == sorted([after[0]["id"], later[0]["id"], later[0]["id"]])


async def test_the_store_never_hands_the_secret_to_views(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await store.create_subscription(
            conn,
            name="s",
            url="https://s.example/",
            types=[],
            include_test=False,
            max_in_flight=16,
            secret=b"\x01" * 32,
            start="beginning",
        )
        shown = await store.get_subscription(conn, "s")
    assert shown is not None
    assert "secret" not in {f for f in shown.__dataclass_fields__ if f != "previous_secret_until"}


async def test_verification_fails_with_a_wrong_secret(
    api: httpx.AsyncClient, engine: AsyncEngine, receiver: Receiver
) -> None:
    await create(api, name="w", url=receiver.url, start="now")
    await append(engine, [full_event(identity_id="idt-w")])
    async with delivering(engine):
        await receiver.arrived(1)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        receiver.received[0].verify(other)


async def test_a_filler_that_finds_the_subscription_locked_moves_nothing(
    engine: AsyncEngine,
) -> None:
    """Another transaction holds the subscription row (an admin change; or the key-share
    locks of an outcome's inserts, which must not even make the filler skip): the filler that
    skips it must not move the cursor past rows it did not copy."""
    async with engine.begin() as conn:
        await store.create_subscription(
            conn,
            name="locked",
            url="https://x.example/",
            types=[],
            include_test=False,
            max_in_flight=16,
            secret=b"k" * 32,
            start="beginning",
        )
        sid = await conn.scalar(text("SELECT subscription_id FROM subscriptions"))
    bodies = [full_event(identity_id=f"idt-{i}") for i in range(3)]
    await append(engine, bodies)
    through = await _last(engine)
    async with engine.connect() as other:
        await other.begin()
        # An outcome's count row: its foreign key takes a key-share lock on the subscription.
        await other.execute(
            text(
                "INSERT INTO subscription_deliveries (subscription_id, outcome, count) "
                "VALUES (:id, 'delivered', 1)"
            ),
            {"id": sid},
        )
        async with engine.begin() as conn:
            filled = await store.fill(conn, sid, through)
        assert filled is not None and filled.added == 3  # key-share does not stop a filler
        await other.rollback()
        await other.begin()
        await other.execute(
            text("SELECT 1 FROM subscriptions WHERE subscription_id = :id FOR UPDATE"),
            {"id": sid},
        )
        await append(engine, [full_event(identity_id="idt-late")])
        later = await _last(engine)
        async with engine.begin() as conn:
            assert await store.fill(conn, sid, later) is None  # held: skipped
        async with engine.connect() as conn:
            cursor = await conn.scalar(
                text("SELECT cursor_position FROM subscriptions WHERE subscription_id = :id"),
                {"id": sid},
            )
        assert cursor == through  # not moved past the row it did not read
        await other.rollback()
    async with engine.begin() as conn:
        filled = await store.fill(conn, sid, later)
    assert filled is not None and filled.added == 1


async def _last(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT max(position) FROM journal")))


# --- at most 64 KB of an answer is read ---------------------------------------------------------


class Streamer:
    """A raw HTTP/1.1 receiver on a loopback port whose every answer has a body that never ends
    (chunked, `prefix` then 1 KB chunks until the client hangs up): what it wrote, and whether
    the client cut it off."""

    def __init__(self, status: int, prefix: bytes = b"") -> None:
        self.status = status
        self.prefix = prefix
        self.port = free_port()
        self.requests = 0
        self.written = 0  # body bytes sent, all connections together
        self.cut_off = 0  # connections the client closed while the body was being sent
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Streamer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += conn.recv(65536)
            self.requests += 1
            conn.sendall(
                f"HTTP/1.1 {self.status} X\r\ncontent-type: text/plain\r\n"
                "transfer-encoding: chunked\r\n\r\n".encode()
            )
            chunk = b"x" * 1024
            try:
                for part in [self.prefix] if self.prefix else []:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                    self.written += len(part)
                while not self._stop.is_set():
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.written += len(chunk)
            except OSError:
                self.cut_off += 1


async def test_an_endless_2xx_body_is_cut_off_and_the_delivery_acknowledged(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    streamer = Streamer(200).start()
    try:
        await create(api, name="endless", url=streamer.url, start="now")
        await append(engine, [full_event(identity_id="idt-e")])
        started = time.monotonic()
        async with delivering(engine, timeout_s=5.0):
            await wait_until(lambda: _counted(api, "endless", "delivered", 1), timeout=10)
        took = time.monotonic() - started
        shown = await view(api, "endless")
        # Acknowledged, not a timeout: the body was left unread and the connection dropped.
        assert (shown["pending"], shown["deliveries"].get("timeout", 0)) == (0, 0), shown
        assert took < 5.0, took
        assert streamer.requests == 1
        await wait_until(lambda: _true(streamer.cut_off == 1), timeout=5)
        sent = streamer.written
        await asyncio.sleep(0.3)
        assert streamer.written == sent  # nothing more is being sent to us
    finally:
        streamer.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_500_with_a_huge_body_is_a_failure_quoting_its_start(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    streamer = Streamer(500, prefix=b"database\non fire; " + b"y" * 300_000).start()
    try:
        await create(api, name="huge-error", url=streamer.url, start="now")
        await append(engine, [full_event(identity_id="idt-h")])
        async with delivering(engine, timeout_s=5.0):
            await wait_until(lambda: _counted(api, "huge-error", "failed", 2), timeout=10)
        shown = await view(api, "huge-error")
        error = shown["last_error"]
        assert error.startswith("HTTP 500: database on fire; yyy"), error
        assert len(error) == len("HTTP 500: ") + ERROR_BODY_CHARS, error
        assert shown["deliveries"].get("timeout", 0) == 0
        assert shown["pending"] == 1  # kept for the next attempt
        assert streamer.cut_off >= 2
    finally:
        streamer.stop()


async def test_send_reads_at_most_64_kb_of_an_answer() -> None:
    """The exact count, on an answer whose body is pulled 1 KB at a time (a socket's buffers
    would blur it): `send` takes the first 64 KB and no more."""
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"z" * 1024
            await asyncio.sleep(0)  # a reader that never stops still times out

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    now = datetime.now(UTC)
    event = Event(
        id=uuid.uuid4(), type="identity.approved", source="com.paxos", time=now, object="event",
        is_test=False, status="fetched", via="webhook", deliveries=1, first_received_at=now,
        last_received_at=now, fetched_at=now, attempts=1, last_error=None, identity_id="idt-z",
        object_type="identity", undelivered_webhooks=0, detail={},
    )  # fmt: skip
    claim = store.Claim(1, 1, 1, now, now, event)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        attempt = await asyncio.wait_for(
            send(client, store.Endpoint("http://r.example/hook", (b"k" * 32,)), claim), 5
        )
    assert attempt.outcome == "delivered"
    assert pulled * 1024 == MAX_BODY_BYTES


async def _outbox_is_empty(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT count(*) FROM subscription_outbox")) == 0
