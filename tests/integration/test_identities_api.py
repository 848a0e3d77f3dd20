"""GET /identities, /transfers, /orchestrations over real intake, fetch and projection."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain import orchestration, transfer
from service.projections.runner import Projector
from service.settings import Settings
from tests.support.asgi import app_client
from tests.support.fetching import Paxos, deliver, new_fetcher, settle
from tests.support.projections import append, event, stored_view, universe_folds, view_of_state
from tests.support.tokens import admin_headers, read_headers


async def test_projections_of_delivered_and_fetched_events_match_the_folds(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    await deliver(client, [e.notification() for e in reversed(paxos.universe.events)])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    await Projector(engine).catch_up()
    identities, transfers, orchestrations = universe_folds(paxos)
    assert identities and transfers and orchestrations
    for identity_id, state in identities.items():
        response = await client.get(f"/identities/{identity_id}", headers=read_headers())
        assert response.status_code == 200
        body = response.json()
        body.pop("updated_at")
        assert body == view_of_state(state)
    for transfer_id, t in transfers.items():
        body = (await client.get(f"/transfers/{transfer_id}", headers=read_headers())).json()
        assert {k: body[k] for k in transfer.FIELDS} == t.fields
        assert body["events_count"] == t.events_count
        assert body["last_event_type"] == t.last_event_type
    for orchestration_id, o in orchestrations.items():
        body = (
            await client.get(f"/orchestrations/{orchestration_id}", headers=read_headers())
        ).json()
        assert {k: body[k] for k in orchestration.FIELDS} == o.fields
    # Test events made no identity.
    test_subjects = {e.object.get("identity_id") for e in paxos.universe if e.is_test} - {None}
    for identity_id in test_subjects:
        response = await client.get(f"/identities/{identity_id}", headers=read_headers())
        assert response.status_code == 404
    # The identity's event history is /events for that identity.
    some = next(iter(identities))
    history = (await client.get(f"/identities/{some}/events", headers=read_headers())).json()
    assert len(history["items"]) == identities[some].events_count
    assert all(item["identity_id"] == some for item in history["items"])


async def test_listings_page_filter_and_refuse_bad_parameters(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    bodies = []
    for i in range(25):
        status = "APPROVED" if i % 2 else "DENIED"
        bodies.append(
            event(
                f"identity.{status.lower()}",
                {"identity_id": f"idt-{i:02}", "new_summary_status": status},
                "2026-01-07T14:30:02Z",
            )
        )
    bodies.append(
        event(
            "identity.control.created",
            {"identity_id": "idt-03", "control_id": "c", "control_type": "FROZEN"},
            "2026-01-07T14:30:03Z",
        )
    )
    await append(engine, bodies)
    await Projector(engine).catch_up()
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"summary_status": "APPROVED", "limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/identities", params=params, headers=read_headers())).json()
        seen += [item["identity_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"idt-{i:02}" for i in range(1, 25, 2)]
    frozen = (
        await client.get("/identities", params={"control_type": "FROZEN"}, headers=read_headers())
    ).json()
    assert [i["identity_id"] for i in frozen["items"]] == ["idt-03"]
    first = (await client.get("/identities", params={"limit": 2}, headers=read_headers())).json()
    for params, name in [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"colour": "red"}, "colour"),
        ({"cursor": "nonsense!"}, "cursor"),
        ({"cursor": first["next_cursor"], "summary_status": "DENIED"}, "cursor"),
        ({"summary_status": ["A", "B"]}, "summary_status"),
    ]:
        response = await client.get("/identities", params=params, headers=read_headers())
        assert response.status_code == 400, params
        assert response.json()["parameter"] == name
    bad = await client.get("/transfers", params={"limit": "x"}, headers=read_headers())
    assert bad.status_code == 400 and bad.json()["parameter"] == "limit"
    assert (await client.get("/identities/nobody", headers=read_headers())).status_code == 404
    assert (await client.get("/transfers/nothing", headers=read_headers())).status_code == 404
    assert (await client.get("/identities")).status_code == 401


async def test_readiness_fails_past_the_lag_limit_and_metrics_show_lag(
    settings: Settings, engine: AsyncEngine
) -> None:
    from service.app import create_app

    app = create_app(settings.replace(projection_max_lag_s=1), engine=engine)
    async for client in app_client(app):
        await append(
            engine,
            [
                event(
                    "identity.approved",
                    {"identity_id": "idt-r", "new_summary_status": "APPROVED"},
                    "2026-01-07T14:30:02Z",
                )
            ],
        )
        ready = (await client.get("/health/ready")).json()
        lags = {p["name"]: p for p in ready["projections"]}
        assert lags["identities"]["events_behind"] == 1
        await asyncio.sleep(1.2)
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "not_ready"
        metrics = (await client.get("/metrics", headers=read_headers())).text
        assert 'paxos_projection_lag_events{projection="identities"} 1.0' in metrics
        await Projector(engine).catch_up()
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert all(p["events_behind"] == 0 for p in response.json()["projections"])


async def test_rebuild_endpoint_runs_a_job_with_progress(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    from service.jobs.runner import JobRunner
    from service.projections.jobs import rebuild_job

    await append(
        engine,
        [
            event(
                "identity.approved",
                {"identity_id": "idt-j", "new_summary_status": "APPROVED"},
                "2026-01-07T14:30:02Z",
            )
        ],
    )
    assert (
        await client.post("/admin/projections/nope/rebuild", headers=admin_headers())
    ).status_code == 404
    assert (
        await client.post("/admin/projections/identities/rebuild", headers=read_headers())
    ).status_code == 403
    started = await client.post("/admin/projections/identities/rebuild", headers=admin_headers())
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    assert await JobRunner(engine, {"rebuild": rebuild_job(engine)}).run_one()
    job = (await client.get(f"/admin/jobs/{job_id}", headers=admin_headers())).json()
    assert job["state"] == "done", job
    assert job["progress"]["identities"]["phase"] == "done"
    assert job["progress"]["identities"]["done"] == 1
    view = await stored_view(engine, "idt-j")
    assert view is not None and view["summary_status"] == "APPROVED"
