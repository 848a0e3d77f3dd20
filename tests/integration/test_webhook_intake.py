"""POST /webhooks/paxos: every answer of DESIGN.md §3, durability and idempotency."""

from __future__ import annotations

import asyncio
import logging
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.db.engine import create_engine
from service.settings import Settings
from service.store.tables import events, journal
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.tokens import API_KEY
from tests.support.webhooks import HEADERS, post


async def journal_rows(engine: AsyncEngine, event_id: uuid.UUID | str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(journal).where(journal.c.event_id == event_id)
            )
            or 0
        )


async def test_new_notification_is_accepted_and_stored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = notification(type="identity.kyc_refresh.started", is_test=True)
    response = await post(client, encode(body))
    assert response.status_code == 200
    assert response.json() == {"id": body["id"], "status": "accepted"}
    async with engine.connect() as conn:
        row = (await conn.execute(select(events).where(events.c.event_id == body["id"]))).one()
        stored = (
            await conn.execute(
                select(journal.c.kind, journal.c.body).where(journal.c.event_id == body["id"])
            )
        ).one()
    assert row.type == "identity.kyc_refresh.started"
    assert row.is_test is True
    assert row.status == "pending"
    assert row.via == "webhook"
    assert row.deliveries == 1
    assert row.first_received_at == row.last_received_at
    assert row.next_attempt_at is not None
    assert stored.kind == "notification"
    assert stored.body == body


async def test_duplicate_delivery_counts_and_appends_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = encode(notification())
    first = await post(client, body)
    second = await post(client, body)
    assert first.json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    event_id = first.json()["id"]
    async with engine.connect() as conn:
        row = (await conn.execute(select(events).where(events.c.event_id == event_id))).one()
    assert row.deliveries == 2
    assert row.last_received_at > row.first_received_at
    assert await journal_rows(engine, event_id) == 1


async def test_missing_is_test_is_read_as_false(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = notification(is_test=None)
    assert "is_test" not in body
    assert (await post(client, encode(body))).status_code == 200
    async with engine.connect() as conn:
        assert (
            await conn.scalar(select(events.c.is_test).where(events.c.event_id == body["id"]))
            is False
        )


async def test_unknown_event_type_is_accepted(client: httpx.AsyncClient) -> None:
    response = await post(client, encode(notification(type="stablecoin.minted.v9")))
    assert response.json()["status"] == "accepted"


async def test_unknown_fields_are_kept_in_the_journal(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = notification(extra={"nested": [1, 2]})
    assert (await post(client, encode(body))).status_code == 200
    async with engine.connect() as conn:
        stored = await conn.scalar(select(journal.c.body).where(journal.c.event_id == body["id"]))
    assert stored["extra"] == {"nested": [1, 2]}


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        (b"not json", 400, "not valid JSON"),
        (b'{"id": "6f2c7d3e-1b1a-4f7e-9a43-1c1c1c1c1c1c"', 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "not valid JSON"),
        (b"[]", 422, "Expected `object`"),
        (encode(notification(id="not-a-uuid")), 422, "id:"),
        (encode(notification(time="2026-01-07 14:30")), 422, "time:"),
        (encode(notification(time="2026-01-07T14:30:02")), 422, "time:"),
        # Valid RFC 3339, but no UTC form (years 0 and 10000): out of PostgreSQL's range too.
        (encode(notification(time="0001-01-01T00:00:00+14:00")), 422, "time: out of range"),
        (encode(notification(time="9999-12-31T23:59:59-00:01")), 422, "time: out of range"),
        (encode(notification(source="com.evil")), 422, "source:"),
        (encode(notification(object="transfer")), 422, "object:"),
        (encode(notification(type="")), 422, "type:"),
        (encode(notification(type=7)), 422, "type:"),
        (encode(notification(is_test="yes")), 422, "is_test:"),
        (encode({k: v for k, v in notification().items() if k != "type"}), 422, "`type`"),
    ],
)
async def test_bad_bodies_get_a_precise_problem(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes, status: int, mentions: str
) -> None:
    response = await post(client, body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert mentions in problem["detail"]
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(events)) == 0


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"X-Api-Key": API_KEY}
    if content_type:
        headers["Content-Type"] = content_type
    response = await post(client, encode(notification()), headers)
    assert response.status_code == 415
    assert response.json()["detail"] == "Content-Type must be application/json"


async def test_json_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    headers = {**HEADERS, "Content-Type": "application/json; charset=utf-8"}
    assert (await post(client, encode(notification()), headers)).status_code == 200


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    body = encode(notification(padding="x" * 70_000))
    response = await post(client, body)
    assert response.status_code == 413
    assert "65536" in response.json()["detail"]


async def test_body_over_the_limit_is_refused_without_reading_it(client: httpx.AsyncClient) -> None:
    sent = 0

    async def endless() -> object:
        nonlocal sent
        yield b'{"padding": "'
        while sent < 10_000_000:
            sent += 8192
            yield b"x" * 8192

    response = await client.post("/webhooks/paxos", content=endless(), headers=HEADERS)
    assert response.status_code == 413
    # Reading stopped shortly after the limit, not at the end of the 10 MB stream.
    assert sent < 200_000


@pytest.mark.server_independent  # refused before any SQL runs
@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "X-Api-Key": "wrong"},
        {"Content-Type": "application/json", "X-Api-Key": API_KEY + "x"},
        {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    ],
)
async def test_bad_credentials_are_401_and_store_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str]
) -> None:
    response = await post(client, encode(notification()), headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert API_KEY not in response.text
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(events)) == 0


async def test_fifty_concurrent_deliveries_of_one_new_id(
    client: httpx.AsyncClient, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    event_id = uuid.uuid4()
    body = encode(notification(id=event_id))
    with caplog.at_level(logging.WARNING):
        responses = await asyncio.gather(*(post(client, body) for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["accepted"] + ["duplicate"] * 49
    assert await journal_rows(engine, event_id) == 1
    async with engine.connect() as conn:
        assert (
            await conn.scalar(select(events.c.deliveries).where(events.c.event_id == event_id))
            == 50
        )
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_store_unreachable_answers_503_and_acknowledges_nothing(settings: Settings) -> None:
    # A real unreachable database: nothing listens on port 1.
    unreachable = create_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    app = create_app(settings, engine=unreachable)
    async for client in app_client(app):
        response = await post(client, encode(notification()))
    await unreachable.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    problem = response.json()
    assert problem["type"].endswith("/store-unavailable")
    assert "nothing was stored" in problem["detail"]
    assert "127.0.0.1" not in response.text
