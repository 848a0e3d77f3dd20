"""The demo's webhook stream never announces an event before its time (`paced_by_time`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar, Request, Response, post

from service.simulator.sender import send
from service.simulator.universe import NS, generate_universe, parse_rfc3339_ns

pytestmark = pytest.mark.server_independent


async def test_no_webhook_arrives_before_its_event_s_time() -> None:
    now = datetime.now(UTC)
    # 30 events over the next 1.5 s: far more than a rate of 100/s would send at once.
    universe = generate_universe(
        30, start=now + timedelta(seconds=0.1), end=now + timedelta(seconds=1.5), seed=3
    )
    arrived: dict[str, float] = {}

    @post("/webhooks/paxos", status_code=200)
    async def webhook(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = msgspec.json.decode(await request.body())
        arrived.setdefault(body["id"], time.time())
        return Response(b"{}")

    transport = httpx.ASGITransport(app=Litestar([webhook]))
    async with httpx.AsyncClient(transport=transport) as client:
        report = await send(
            universe.notifications(),
            "http://consumer.test/webhooks/paxos",
            client=client,
            rate=100.0,
            duplicates=0.3,
            paced_by_time=True,
            seed=1,
        )
    assert len(report.delivered) == 30
    for event in universe:
        assert arrived[event.id] >= parse_rfc3339_ns(event.created_at) / NS, event.created_at
    # Paced, not merely delayed: the last arrives about when the last event happens.
    assert max(arrived.values()) >= universe.events[-1].created_at_ns / NS
