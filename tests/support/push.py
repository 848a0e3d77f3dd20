"""Push subscription test helpers: full events journalled as the fetcher stores them, and the
delivery loop run in the test's own process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.subscriptions.delivery import RetryPolicy
from service.subscriptions.runner import Deliveries

# Retries within a test's patience: 50 ms doubling to 200 ms, for an hour.
FAST = RetryPolicy(horizon_s=3600.0, base_s=0.05, cap_s=0.2)


def full_event(
    type_: str = "identity.approved",
    *,
    identity_id: str | None = None,
    object_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """A full Paxos event as Get Event returns it."""
    obj: dict[str, Any] = {}
    if identity_id is not None:
        obj["identity_id"] = identity_id
    if object_id is not None:
        obj["id"] = object_id
    return {
        "id": str(event_id or uuid.uuid4()),
        "type": type_,
        "object_type": type_.split(".")[0],
        "object": obj,
        "created_at": "2026-01-07T14:30:02Z",
        "undelivered_webhooks": 0,
    }


async def store_fetched(
    conn: AsyncConnection, body: dict[str, Any], *, is_test: bool = False
) -> None:
    """The events row and the journal `event` row the fetcher writes for a fetched event, in
    `conn`'s transaction (the caller commits)."""
    raw = msgspec.json.encode(body).decode()
    await conn.execute(
        text(
            "INSERT INTO events (event_id, type, source, time, object, is_test, status, "
            "fetched_at, identity_id, object_type, undelivered_webhooks, object_id, deliveries, "
            "first_received_at, last_received_at) "
            "VALUES (:id, :type, 'com.paxos', now(), 'event', :is_test, 'fetched', now(), "
            ":identity_id, :object_type, 0, :object_id, 1, now(), now())"
        ),
        {
            "id": uuid.UUID(body["id"]),
            "type": body["type"],
            "is_test": is_test,
            "identity_id": body["object"].get("identity_id"),
            "object_type": body["object_type"],
            "object_id": body["object"].get("id"),
        },
    )
    await conn.execute(
        text(
            "INSERT INTO journal (event_id, kind, body) VALUES (:id, 'event', CAST(:raw AS json))"
        ),
        {"id": uuid.UUID(body["id"]), "raw": raw},
    )


async def append(
    engine: AsyncEngine, bodies: Iterable[dict[str, Any]], *, is_test: bool = False
) -> None:
    """Store fetched events, each in a transaction of its own, in order."""
    for body in bodies:
        async with engine.begin() as conn:
            await store_fetched(conn, body, is_test=is_test)


@asynccontextmanager
async def delivering(engine: AsyncEngine, **options: Any) -> AsyncIterator[Deliveries]:
    """The delivery loop running in this process until the block ends."""
    options.setdefault("allow_private", True)
    options.setdefault("policy", FAST)
    options.setdefault("poll_s", 0.05)
    deliveries = Deliveries(engine, **options)
    task = asyncio.create_task(deliveries.run())
    try:
        yield deliveries
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Wait until `await predicate()` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
