"""Never miss an event: List Events passes, the periodic reconciler, and backfills."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.jobs.runner import JobRunner
from service.paxos.client import PaxosClient, build_client
from service.projections.runner import Projector
from service.reconciling.reconciler import (
    GRACE,
    Reconciler,
    backfill_job,
    run_pass,
    to_listed,
)
from service.settings import Settings
from service.simulator.server import SimulatorConfig, create_simulator, simulator_state
from service.simulator.universe import SimEvent, generate_universe
from service.store.audit.prune import prune_test_events
from service.store.audit.seals import seal_pending
from service.store.listed import record_listed
from service.store.reconcile import Counts, PassState, Window, load_pass, start_pass
from service.store.tables import journal, reconcile_missed, reconcile_passes
from tests.support.fetching import PAXOS, Paxos, deliver, paxos_settings
from tests.support.fetching import rows as stored
from tests.support.projections import stored_view, universe_folds, view_of_state
from tests.support.tokens import API_KEY, admin_headers, read_headers

START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)


@pytest.fixture
async def sim() -> AsyncIterator[Paxos]:
    """A Paxos holding 120 events on 2026-03-01, 10% of them test events."""
    universe = generate_universe(120, start=START, end=END, test_ratio=0.1, seed=21, tie_ratio=0.2)
    app = create_simulator(SimulatorConfig(universe=universe, api_rps=100_000, token_rps=50))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PAXOS) as http:
        yield Paxos(simulator_state(app), http)


def paxos_client(settings: Settings, engine: AsyncEngine, sim: Paxos) -> PaxosClient:
    return build_client(paxos_settings(settings), engine, sim.http)


async def journal_count(engine: AsyncEngine, kind: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(journal).where(journal.c.kind == kind)
            )
            or 0
        )


def split(
    events_: list[SimEvent], dropped_share: float, seed: int
) -> tuple[list[SimEvent], list[SimEvent]]:
    rng = random.Random(seed)
    dropped = [e for e in events_ if rng.random() < dropped_share]
    return [e for e in events_ if e not in dropped], dropped


@pytest.mark.parametrize(
    ("cursors", "page_size"), [(True, 100), (True, 1), (False, 100), (False, 1), (False, 7)]
)
async def test_a_pass_leaves_the_store_holding_exactly_paxoss_events(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    sim: Paxos,
    cursors: bool,
    page_size: int,
) -> None:
    sim.state.config.cursors = cursors
    delivered, dropped = split(list(sim.universe), 0.3, seed=page_size)
    await deliver(client, [e.notification() for e in delivered])

    state = await start_pass(engine, "backfill", Window(START, END, (), True))
    counts = await run_pass(engine, paxos_client(settings, engine, sim), state, page_size=page_size)

    rows = await stored(engine)
    assert set(rows) == {e.id for e in sim.universe}  # nothing lost, nothing extra
    assert (counts.found, counts.missing, counts.known) == (
        len(sim.universe),
        len(dropped),
        len(delivered),
    )
    for e in sim.universe:
        row = rows[e.id]
        assert row["status"] == "fetched" and row["detail"] == e.event_body()
        found_by_id = e.type.startswith(("transfer.", "orchestration."))
        assert row["object_id"] == (e.object["id"] if found_by_id else None)
        assert row["is_test"] == e.is_test
        assert row["via"] == ("list_events" if e in dropped else "webhook")
        assert row["deliveries"] == (0 if e in dropped else 1)
    assert await journal_count(engine, "event") == len(sim.universe)
    async with engine.connect() as conn:
        missed = set((await conn.execute(select(reconcile_missed.c.event_id))).scalars())
    assert {str(m) for m in missed} == {e.id for e in dropped}


async def test_a_pass_lists_only_its_window_and_types(
    engine: AsyncEngine, settings: Settings, sim: Paxos
) -> None:
    since, until = START + timedelta(hours=6), START + timedelta(hours=18)
    types = ("identity.approved", "transfer.crypto_deposit.completed")
    state = await start_pass(engine, "backfill", Window(since, until, types, False))
    await run_pass(engine, paxos_client(settings, engine, sim), state)
    expected = {
        e.id
        for e in sim.universe
        if not e.is_test
        and e.type in types
        and since <= datetime.fromisoformat(e.created_at) < until
    }
    assert expected and set(await stored(engine)) == expected


async def test_a_webhook_after_a_backfill_is_a_duplicate_and_marks_it_delivered(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sim: Paxos
) -> None:
    state = await start_pass(engine, "backfill", Window(START, END))
    await run_pass(engine, paxos_client(settings, engine, sim), state)
    event = next(e for e in sim.universe if not e.is_test)
    response = await client.post(
        "/webhooks/paxos",
        content=msgspec.json.encode(event.notification()),
        headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
    )
    assert response.json()["status"] == "duplicate"
    row = (await stored(engine))[event.id]
    assert (row["via"], row["deliveries"], row["status"]) == ("webhook", 1, "fetched")
    assert row["first_received_at"] is not None
    async with engine.connect() as conn:
        kinds = sorted(
            (
                await conn.execute(select(journal.c.kind).where(journal.c.event_id == event.id))
            ).scalars()
        )
    assert kinds == ["event", "notification"]  # the notification is journaled too


async def test_a_webhook_and_a_listing_racing_for_one_event_end_as_one(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sim: Paxos
) -> None:
    real = [e for e in sim.universe if not e.is_test][:40]
    pc = paxos_client(settings, engine, sim)
    fetched = {e.id: await pc.get_event(e.id) for e in real}

    async def list_one(e: SimEvent) -> None:
        async with engine.begin() as conn:
            await record_listed(conn, [to_listed(fetched[e.id], False)])

    headers = {"Content-Type": "application/json", "X-Api-Key": API_KEY}
    results = await asyncio.gather(
        *(
            coro
            for e in real
            for coro in (
                client.post(
                    "/webhooks/paxos",
                    content=msgspec.json.encode(e.notification()),
                    headers=headers,
                ),
                list_one(e),
            )
        )
    )
    assert all(r.status_code == 200 for r in results if isinstance(r, httpx.Response))
    rows = await stored(engine)
    assert len(rows) == len(real)
    for e in real:
        row = rows[e.id]
        assert (row["via"], row["deliveries"], row["status"]) == ("webhook", 1, "fetched")
    assert await journal_count(engine, "event") == len(real)
    assert await journal_count(engine, "notification") == len(real)


async def test_a_stopped_pass_resumes_where_it_got_to(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sim: Paxos
) -> None:
    delivered, dropped = split(list(sim.universe), 0.5, seed=3)
    await deliver(client, [e.notification() for e in delivered])
    pc = paxos_client(settings, engine, sim)
    state = await start_pass(engine, "backfill", Window(START, END, (), True))

    class Killed(Exception):
        pass

    def kill_after_three_pages(s: PassState, reached: str | None) -> None:
        if s.counts.pages == 3:
            raise Killed

    with pytest.raises(Killed):
        await run_pass(engine, pc, state, page_size=10, progress=kill_after_three_pages)
    calls_before = len(sim.state.api_calls)

    resumed = await load_pass(engine, state.pass_id)
    assert resumed.counts.pages == 3 and resumed.counts.found == 30
    counts = await run_pass(engine, pc, resumed, page_size=10)
    assert (counts.found, counts.missing, counts.known) == (
        len(sim.universe),
        len(dropped),
        len(delivered),
    )
    assert set(await stored(engine)) == {e.id for e in sim.universe}
    # It went on from page 4 rather than starting over (the 13 pages of 120 events, 10 a page,
    # split into real and test listings, minus the 3 already done, plus the resumed boundary).
    assert len(sim.state.api_calls) - calls_before <= 14


async def test_one_reconciler_at_a_time_and_windows_that_overlap(
    engine: AsyncEngine, settings: Settings, sim: Paxos, database_url: str
) -> None:
    from service.db.engine import create_engine

    other = create_engine(database_url)  # another process
    now = END + GRACE + timedelta(hours=1)
    lookback = timedelta(hours=30)
    mine = Reconciler(
        engine,
        paxos_client(settings, engine, sim),
        interval_s=300,
        lookback_s=lookback.total_seconds(),
    )
    theirs = Reconciler(
        other,
        paxos_client(settings, other, sim),
        interval_s=300,
        lookback_s=lookback.total_seconds(),
    )
    sim.state.faults.latency_s = 0.3  # a pass long enough for the two to overlap
    try:
        results = await asyncio.gather(mine.run_once(now), theirs.run_once(now))
    finally:
        await other.dispose()
    sim.state.faults.latency_s = 0.0
    ran = [r for r in results if r is not None]
    assert len(ran) == 1, results
    first: Counts = ran[0]
    assert first.missing == sum(1 for e in sim.universe if not e.is_test)

    await mine.run_once(now + timedelta(minutes=5))
    async with engine.connect() as conn:
        passes = (
            await conn.execute(
                select(reconcile_passes)
                .where(reconcile_passes.c.status == "done")
                .order_by(reconcile_passes.c.pass_id)
            )
        ).all()
    assert passes[0].window_since == now - lookback
    assert passes[0].window_until == now - GRACE
    # The next pass starts a look-back before where the last one ended.
    assert passes[-1].window_since == passes[0].window_until - lookback
    assert passes[-1].missing == 0 and passes[-1].known > 0


async def test_backfill_by_api_runs_as_a_job_with_progress(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sim: Paxos
) -> None:
    body = {"since": START.isoformat(), "until": END.isoformat(), "include_test": True}
    assert (
        await client.post("/admin/backfill", json=body, headers=read_headers())
    ).status_code == 403
    response = await client.post("/admin/backfill", json=body, headers=admin_headers())
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    queued = (await client.get(f"/admin/jobs/{job_id}", headers=admin_headers())).json()
    assert queued["state"] == "queued" and queued["kind"] == "backfill"

    runner = JobRunner(
        engine, {"backfill": backfill_job(engine, paxos_client(settings, engine, sim))}
    )
    assert await runner.run_one()
    job = (await client.get(f"/admin/jobs/{job_id}", headers=admin_headers())).json()
    assert job["state"] == "done", job
    assert job["progress"]["found"] == len(sim.universe) == job["progress"]["missing"]

    passes = (await client.get("/admin/reconciliation", headers=admin_headers())).json()
    assert passes["items"][0]["job_id"] == job_id
    assert passes["items"][0]["missing"] == len(sim.universe)
    one = (
        await client.get(
            f"/admin/reconciliation/{passes['items'][0]['pass_id']}", headers=admin_headers()
        )
    ).json()
    assert {m["event_id"] for m in one["missed"]} == {e.id for e in sim.universe}
    missing_pass = await client.get("/admin/reconciliation/999999", headers=admin_headers())
    assert missing_pass.status_code == 404


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        ({"since": "2026-03-01T00:00:00Z"}, 422, "until"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, 400, "until"),
        ({"since": "2026-03-01T00:00:00", "until": "2026-03-02T00:00:00Z"}, 400, "since"),
        ({"since": "yesterday", "until": "2026-03-02T00:00:00Z"}, 422, "since"),
        (
            {"since": "2026-03-01T00:00:00Z", "until": "2026-03-02T00:00:00Z", "types": [""]},
            422,
            "types",
        ),
        ({"since": "2026-03-01T00:00:00Z", "until": "2026-03-02T00:00:00Z", "x": 1}, 422, "x"),
    ],
)
async def test_a_bad_backfill_request_is_named(
    client: httpx.AsyncClient, body: dict[str, object], status: int, mentions: str
) -> None:
    response = await client.post("/admin/backfill", json=body, headers=admin_headers())
    assert response.status_code == status
    assert mentions in response.json()["detail"]


async def test_a_listing_records_what_paxos_says_not_what_the_notification_said(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, sim: Paxos
) -> None:
    """A pending event completed by a listing takes its test flag from the listing: a real
    event notified as a test event is projected and cannot be pruned, and the other way
    round (issue 15, item 3)."""
    real = next(e for e in sim.universe if not e.is_test and e.type.startswith("identity."))
    test = next(e for e in sim.universe if e.is_test)
    await deliver(client, [real.notification() | {"is_test": True}])
    await deliver(client, [test.notification() | {"is_test": False}])

    state = await start_pass(engine, "backfill", Window(START, END, (), True))
    await run_pass(engine, paxos_client(settings, engine, sim), state)

    rows = await stored(engine)
    assert (rows[real.id]["is_test"], rows[real.id]["confirmed_is_test"]) == (True, False)
    assert (rows[test.id]["is_test"], rows[test.id]["confirmed_is_test"]) == (False, True)
    for e in sim.universe:
        assert rows[e.id]["status"] == "fetched" and rows[e.id]["confirmed_is_test"] == e.is_test
    assert await journal_count(engine, "test_confirmation") == sum(
        1 for e in sim.universe if e.is_test
    )
    await Projector(engine).catch_up()
    identity_id = real.object["identity_id"]
    expected = universe_folds(sim)[0][identity_id]  # the real events, this one included
    assert await stored_view(engine, identity_id) == view_of_state(expected)
    await seal_pending(engine)
    result = await prune_test_events(engine, 0)
    assert result.events == sum(1 for e in sim.universe if e.is_test)
    assert set(await stored(engine)) == {e.id for e in sim.universe if not e.is_test}
