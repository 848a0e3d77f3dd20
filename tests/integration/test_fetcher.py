"""The fetcher against the Paxos simulator: every notification becomes the full event.

The simulator runs in-process (httpx over ASGI), so the whole client is exercised: tokens,
rate limit, Paxos's problems, faults. The database is real.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Text, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from service.app import create_app
from service.background import running_background
from service.fetching.fetcher import Fetcher
from service.paxos.client import ListFilter, PaxosClient, build_client
from service.projections.runner import Projector
from service.settings import Settings
from service.store.audit.prune import prune_test_events
from service.store.audit.seals import seal_pending
from service.store.fetch_queue import claim_due
from service.store.tables import journal, rate_limits
from tests.support.asgi import app_client
from tests.support.fetching import (
    FAST,
    Paxos,
    deliver,
    new_fetcher,
    paxos_settings,
    pending,
    rows,
    settle,
)
from tests.support.tokens import admin_headers, read_headers


async def test_every_notification_becomes_the_full_event(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    universe = paxos.universe
    await deliver(client, [e.notification() for e in universe])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))

    stored = await rows(engine)
    assert len(stored) == len(universe)
    for sim in universe:
        row = stored[sim.id]
        assert row["status"] == "fetched"
        assert row["detail"] == sim.event_body()
        found_by_id = sim.type.startswith(("transfer.", "orchestration."))
        assert row["object_id"] == (sim.object["id"] if found_by_id else None)
        assert row["object_type"] == sim.object_type
        assert row["undelivered_webhooks"] == sim.undelivered_webhooks
        assert row["identity_id"] == sim.object.get("identity_id")
        assert row["fetched_at"] is not None and row["last_error"] is None
        assert row["lease_until"] is None and row["attempts"] == 1
    async with engine.connect() as conn:
        bodies = (
            await conn.execute(
                select(journal.c.event_id, journal.c.body).where(journal.c.kind == "event")
            )
        ).all()
    assert {str(b.event_id): b.body for b in bodies} == {e.id: e.event_body() for e in universe}
    # One token for the whole run; test events were asked for with is_test=true.
    assert paxos.state.token_requests == 1
    assert any(e.is_test for e in universe)


async def test_the_journal_keeps_the_event_exactly_as_paxos_sent_it(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sim = next(e for e in paxos.universe if not e.is_test)
    await deliver(client, [sim.notification()])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    response = await paxos.http.get(
        f"/v2/events/{sim.id}",
        headers={"Authorization": f"Bearer {next(iter(paxos.state.tokens))}"},
    )
    async with engine.connect() as conn:
        raw = await conn.scalar(
            select(journal.c.body.cast(Text)).where(
                journal.c.event_id == sim.id, journal.c.kind == "event"
            )
        )
    assert raw == response.text


async def test_server_errors_and_timeouts_are_retried_until_fetched(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    paxos.state.faults.error_rate = 0.4
    paxos.state.faults.timeout_rate = 0.1
    paxos.state.faults.timeout_s = 1.0
    await deliver(client, [e.notification() for e in paxos.universe])
    tokens = build_client(fetch_settings, engine, paxos.http).tokens
    fetcher = Fetcher(
        engine,
        PaxosClient(
            paxos.http,
            fetch_settings.paxos_api_url,
            tokens,
            build_client(fetch_settings, engine, paxos.http).limiter,
            timeout=httpx.Timeout(0.2),
        ),
        policy=FAST,
        poll_s=0.05,
    )
    await settle(engine, fetcher, timeout=40)
    stored = await rows(engine)
    assert {r["status"] for r in stored.values()} == {"fetched"}
    retried = [r for r in stored.values() if int(r["attempts"]) > 1]  # type: ignore[call-overload]
    assert retried, "with 40% errors some fetches must have needed another attempt"
    statuses = {key.split()[1] for key in paxos.state.counts if key.startswith("get_event")}
    assert "200" in statuses and statuses & {"500", "502", "503", "504"}


async def test_a_429_pauses_every_fetcher_for_retry_after(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    await deliver(client, [e.notification() for e in list(paxos.universe)[:10]])
    paxos.state.burst_429(calls=3)
    await settle(engine, new_fetcher(engine, fetch_settings, paxos), timeout=30)
    calls = [c for c in paxos.state.api_calls if c.endpoint == "get_event"]
    first_429 = next(c for c in calls if c.status == 429)
    after = [c for c in calls if c.at > first_429.at and c.status != 429]
    # Paxos said Retry-After (at least 1 s): nobody called again before that.
    assert after and min(c.at for c in after) - first_429.at >= 0.95
    async with engine.connect() as conn:
        paused = await conn.scalar(
            select(rate_limits.c.paused_until).where(rate_limits.c.name == "paxos_api")
        )
    assert paused is not None
    assert {r["status"] for r in (await rows(engine)).values()} == {"fetched"}


async def test_a_lagging_event_is_fetched_after_a_few_404s(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    # Each attempt that meets a 404 asks the other side too (is_test=true): two calls.
    paxos.state.faults.lag_calls = 4
    sim = next(e for e in paxos.universe if not e.is_test)
    await deliver(client, [sim.notification()])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    row = (await rows(engine))[sim.id]
    assert (row["status"], row["attempts"]) == ("fetched", 3)


async def test_an_event_paxos_never_knows_ends_not_found(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    ghost = next(iter(paxos.universe)).notification() | {"id": str(uuid.uuid4())}
    await deliver(client, [ghost])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    row = (await rows(engine))[ghost["id"]]  # type: ignore[index]
    assert row["status"] == "not_found"
    assert row["attempts"] == len(FAST.not_found_delays_s) + 1
    assert "404" in str(row["last_error"])


async def test_a_missing_scope_fails_at_once_loudly(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, paxos: Paxos
) -> None:
    wrong_scope = paxos_settings(settings, paxos_scope="identity:read_identity")
    sim = next(e for e in paxos.universe if not e.is_test)
    await deliver(client, [sim.notification()])
    before = REGISTRY.get_sample_value("paxos_fetch_config_errors_total")
    with capture_logs() as logs:
        await settle(engine, new_fetcher(engine, wrong_scope, paxos))
    row = (await rows(engine))[sim.id]
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "403" in str(row["last_error"]) and "insufficient scopes" in str(row["last_error"])
    assert REGISTRY.get_sample_value("paxos_fetch_config_errors_total") == before + 1
    loud = [e for e in logs if e["log_level"] == "error"]
    assert len(loud) == 1 and "PAXOS_SCOPE" in loud[0]["event"]
    assert loud[0]["event_id"] == sim.id


async def test_an_event_that_does_not_match_its_notification_is_not_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sim = next(e for e in paxos.universe if e.type == "identity.approved" and not e.is_test)
    await deliver(client, [sim.notification() | {"type": "identity.denied"}])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    row = (await rows(engine))[sim.id]
    assert row["status"] == "failed"
    assert "identity.approved" in str(row["last_error"]) and row["detail"] is None
    async with engine.connect() as conn:
        assert (
            await conn.scalar(
                select(func.count()).select_from(journal).where(journal.c.kind == "event")
            )
            == 0
        )


async def test_a_refused_token_is_refreshed_once_and_the_call_retried(
    engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    client = build_client(fetch_settings, engine, paxos.http)
    sim = next(e for e in paxos.universe if not e.is_test)
    await client.get_event(sim.id)
    paxos.state.tokens.clear()  # Paxos forgets (revokes) the token we hold
    fetched = await client.get_event(sim.id)
    assert fetched.event.id == sim.id
    assert paxos.state.token_requests == 2


async def test_concurrent_calls_share_one_token_request(
    engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    client = build_client(fetch_settings, engine, paxos.http)
    real = [e for e in paxos.universe if not e.is_test][:20]
    results = await asyncio.gather(*(client.get_event(e.id) for e in real))
    assert [r.event.id for r in results] == [e.id for e in real]
    assert paxos.state.token_requests == 1


async def test_a_crashed_workers_claims_come_back_when_the_lease_ends(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    await deliver(client, [e.notification() for e in list(paxos.universe)[:5]])
    claimed = await claim_due(engine, 10, lease_s=0.5)  # a worker that then dies
    assert len(claimed) == 5
    assert await claim_due(engine, 10, lease_s=0.5) == []  # leased: nobody else takes them
    await asyncio.sleep(0.6)
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    stored = await rows(engine)
    assert {r["status"] for r in stored.values()} == {"fetched"}
    assert {r["attempts"] for r in stored.values()} == {2}


async def test_notify_wakes_the_fetcher_without_waiting_for_the_poll(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    # The poll alone would take half a minute.
    async with running_background(fetch_settings, engine, paxos.http, fetch_poll_s=30.0):
        await asyncio.sleep(0.3)  # let the listener connect
        sim = next(e for e in paxos.universe if not e.is_test)
        await deliver(client, [sim.notification()])
        async with asyncio.timeout(5):
            while await pending(engine):
                await asyncio.sleep(0.02)
    assert (await rows(engine))[sim.id]["status"] == "fetched"


async def test_attempts_and_last_error_show_in_the_api_and_refetch_makes_it_due(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    ghost = next(iter(paxos.universe)).notification() | {"id": str(uuid.uuid4())}
    await deliver(client, [ghost])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    shown = (await client.get(f"/events/{ghost['id']}", headers=read_headers())).json()
    assert shown["status"] == "not_found" and shown["attempts"] == 4
    assert "404" in shown["last_error"]

    url = f"/admin/events/{ghost['id']}/refetch"
    assert (await client.post(url, headers=read_headers())).status_code == 403
    assert (await client.post(url)).status_code == 401
    response = await client.post(url, headers=admin_headers())
    assert (response.status_code, response.json()["status"]) == (202, "pending")
    assert await pending(engine) == 1
    unknown = await client.post(f"/admin/events/{uuid.uuid4()}/refetch", headers=admin_headers())
    assert unknown.status_code == 404


async def test_refetching_a_fetched_event_is_a_conflict(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sim = next(e for e in paxos.universe if not e.is_test)
    await deliver(client, [sim.notification()])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    response = await client.post(f"/admin/events/{sim.id}/refetch", headers=admin_headers())
    assert response.status_code == 409


@pytest.mark.parametrize("cursors", [True, False])
@pytest.mark.parametrize("limit", [1, 7, 100])
async def test_listing_walks_every_event_once(
    engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos, cursors: bool, limit: int
) -> None:
    paxos.state.config.cursors = cursors
    client = build_client(fetch_settings, engine, paxos.http)
    seen: list[str] = []
    async for page in client.iter_events(ListFilter(limit=limit)):
        seen.extend(f.event.id for f in page.events)
    expected = [e.id for e in paxos.universe if not e.is_test]
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))


async def test_the_served_app_runs_the_fetcher_when_asked(
    settings: Settings, engine: AsyncEngine, paxos: Paxos
) -> None:
    app = create_app(
        paxos_settings(settings), engine=engine, http_client=paxos.http, background=True
    )
    async for client in app_client(app):
        sim = next(e for e in paxos.universe if not e.is_test)
        await deliver(client, [sim.notification()])
        async with asyncio.timeout(10):
            while await pending(engine):
                await asyncio.sleep(0.05)
        shown = (await client.get(f"/events/{sim.id}", headers=read_headers())).json()
    assert shown["status"] == "fetched" and shown["detail"] == sim.event_body()


async def test_a_fetch_wakes_the_projector_without_waiting_for_its_poll(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sim = next(e for e in paxos.universe if e.type == "identity.approved" and not e.is_test)
    # Polls alone would take half a minute: only the wake-ups can make this quick.
    async with running_background(
        fetch_settings, engine, paxos.http, fetch_poll_s=30.0, projection_poll_s=30.0
    ):
        await asyncio.sleep(0.5)  # the listener connects; the first catch-up finds nothing
        await deliver(client, [sim.notification()])
        async with asyncio.timeout(5):
            while True:
                shown = await client.get(
                    f"/identities/{sim.object['identity_id']}", headers=read_headers()
                )
                if shown.status_code == 200:
                    break
                await asyncio.sleep(0.05)
    assert shown.json()["last_event_id"] == sim.id


# --- the test flag is Paxos's word, not the notification's (issue 15, item 3) ----------------


async def test_a_real_event_notified_as_a_test_event_is_stored_and_projected_as_real(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sim = next(e for e in paxos.universe if e.type == "identity.approved" and not e.is_test)
    await deliver(client, [sim.notification() | {"is_test": True}])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))

    row = (await rows(engine))[sim.id]
    # Get Event with is_test=true: 404; with is_test=false: the event. The notification's
    # flag stays as received, Paxos's answer beside it.
    assert (row["status"], row["is_test"], row["confirmed_is_test"]) == ("fetched", True, False)
    assert row["detail"] == sim.event_body()
    assert paxos.state.counts["get_event 404"] == 1 and paxos.state.counts["get_event 200"] == 1
    await Projector(engine).catch_up()
    shown = await client.get(f"/identities/{sim.object['identity_id']}", headers=read_headers())
    assert shown.status_code == 200 and shown.json()["last_event_id"] == sim.id
    await seal_pending(engine)
    assert (await prune_test_events(engine, 0)).events == 0


async def test_a_test_event_notified_as_real_is_confirmed_as_a_test_event(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sim = next(e for e in paxos.universe if e.is_test and e.object.get("identity_id"))
    await deliver(client, [sim.notification() | {"is_test": False}])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))

    row = (await rows(engine))[sim.id]
    assert (row["status"], row["is_test"], row["confirmed_is_test"]) == ("fetched", False, True)
    assert await journal_kinds(engine, sim.id) == ["notification", "event", "test_confirmation"]
    await Projector(engine).catch_up()
    shown = await client.get(f"/identities/{sim.object['identity_id']}", headers=read_headers())
    assert shown.status_code == 404
    await seal_pending(engine)
    assert (await prune_test_events(engine, 0)).events == 1


async def test_a_test_event_is_confirmed_by_one_get_event(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    sims = [e for e in paxos.universe if e.is_test][:2]
    real = next(e for e in paxos.universe if not e.is_test)
    await deliver(client, [e.notification() for e in [*sims, real]])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    stored = await rows(engine)
    assert [stored[e.id]["confirmed_is_test"] for e in sims] == [True, True]
    assert stored[real.id]["confirmed_is_test"] is False
    assert await journal_kinds(engine, real.id) == ["notification", "event"]
    assert paxos.state.counts["get_event 200"] == 3 and paxos.state.counts["get_event 404"] == 0


async def journal_kinds(engine: AsyncEngine, event_id: str) -> list[str]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(journal.c.kind)
                    .where(journal.c.event_id == uuid.UUID(event_id))
                    .order_by(journal.c.position)
                )
            ).scalars()
        )
