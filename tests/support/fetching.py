"""Helpers for tests that fetch from the Paxos simulator (in-process, over ASGI)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.fetching.fetcher import Fetcher, RetryPolicy
from service.paxos.client import build_client
from service.settings import Settings
from service.simulator.server import SimulatorState
from service.simulator.universe import Universe
from service.store.tables import events, journal
from tests.support.factories import encode
from tests.support.tokens import API_KEY

PAXOS = "http://paxos.test"
FAST = RetryPolicy(base_s=0.02, cap_s=0.2, not_found_delays_s=(0.05, 0.05, 0.05))


@dataclass
class Paxos:
    state: SimulatorState
    http: httpx.AsyncClient

    @property
    def universe(self) -> Universe:
        return self.state.universe


def paxos_settings(settings: Settings, **changes: object) -> Settings:
    return settings.replace(
        paxos_api_url=f"{PAXOS}/v2",
        paxos_token_url=f"{PAXOS}/oauth2/token",
        paxos_client_id="sim-client",
        paxos_client_secret="sim-secret",
        paxos_api_rps=1000.0,
        **changes,
    )


async def deliver(client: httpx.AsyncClient, bodies: list[dict[str, object]]) -> None:
    """Deliver notifications through the real intake."""
    headers = {"Content-Type": "application/json", "X-Api-Key": API_KEY}
    for body in bodies:
        response = await client.post("/webhooks/paxos", content=encode(body), headers=headers)
        assert response.status_code == 200, response.text


async def pending(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(events).where(events.c.status == "pending")
            )
            or 0
        )


async def settle(engine: AsyncEngine, fetcher: Fetcher, timeout: float = 20.0) -> None:
    """Run `fetcher` until nothing is pending (or fail after `timeout`)."""
    task = asyncio.create_task(fetcher.run())
    try:
        async with asyncio.timeout(timeout):
            while await pending(engine):
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def new_fetcher(engine: AsyncEngine, settings: Settings, paxos: Paxos, **kwargs: object) -> Fetcher:
    client = build_client(settings, engine, paxos.http)
    return Fetcher(
        engine,
        client,
        policy=kwargs.pop("policy", FAST),  # type: ignore[arg-type]
        poll_s=0.05,
        **kwargs,
    )  # type: ignore[arg-type]


async def rows(engine: AsyncEngine) -> dict[str, dict[str, object]]:
    """Every events row by id, with its `detail` as the API serves it: the journal's full
    event (None until fetched)."""
    full = (
        select(journal.c.body)
        .where(journal.c.event_id == events.c.event_id, journal.c.kind == "event")
        .scalar_subquery()
        .label("detail")
    )
    async with engine.connect() as conn:
        result = await conn.execute(select(events, full))
        return {str(r.event_id): dict(r._mapping) for r in result}
