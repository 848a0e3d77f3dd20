"""Health, readiness and the OpenAPI schema."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.db.engine import create_engine
from service.settings import Settings
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.tokens import read_headers
from tests.support.webhooks import post


async def test_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_ready_reports_the_fetch_backlog(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await post(client, encode(notification()))).status_code == 200
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["migrations"]) == ("ready", "ok", "current")
    assert body["fetch_backlog"]["pending"] == 3
    assert body["fetch_backlog"]["oldest_pending_age_s"] >= 0


async def test_not_ready_when_migrations_are_behind(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["migrations"] == "behind"


async def test_not_ready_when_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = create_engine("postgresql://postgres:hunter2@127.0.0.1:1/nowhere")
    async for client in app_client(create_app(settings, engine=unreachable)):
        response = await client.get("/health/ready")
    await unreachable.dispose()
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "database": "unreachable",
        "migrations": "unknown",
        "fetch_backlog": None,
        "fetching": "workers",
    }
    assert "hunter2" not in response.text


async def test_openapi_document_lists_the_routes(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/webhooks/paxos",
        "/events",
        "/events/{event_id}",
        "/health/live",
        "/health/ready",
    ):
        assert path in paths
    assert (await client.get("/schema")).status_code == 200


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_wrong_method_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/webhooks/paxos")
    assert response.status_code == 405
    assert response.json()["status"] == 405


async def test_read_routes_answer_503_when_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = create_engine("postgresql://postgres:hunter2@127.0.0.1:1/nowhere")
    async for client in app_client(create_app(settings, engine=unreachable)):
        headers = read_headers()
        listing = await client.get("/events", headers=headers)
        one = await client.get("/events/6f2c7d3e-1b1a-4f7e-9a43-1c1c1c1c1c1c", headers=headers)
    await unreachable.dispose()
    for response in (listing, one):
        assert response.status_code == 503
        assert response.json()["type"].endswith("/store-unavailable")
        assert "hunter2" not in response.text
