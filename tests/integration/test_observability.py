"""Metrics, structured logs, and secrets that never reach a log line or an error body."""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid

import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.db.engine import create_engine
from service.domain.notification import KNOWN_TYPES
from service.fetching.fetcher import Fetcher
from service.paxos.client import build_client
from service.settings import Settings
from tests.support.asgi import app_client
from tests.support.factories import encode, notification
from tests.support.fetching import FAST, Paxos, deliver, paxos_settings, settle
from tests.support.tokens import API_KEY, read_headers
from tests.support.webhooks import post

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


async def test_metrics_count_webhooks_fetches_and_the_backlog(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, paxos: Paxos
) -> None:
    assert (await client.get("/metrics")).status_code == 401
    sims = [e for e in paxos.universe if not e.is_test][:3]
    await deliver(client, [sims[0].notification(), sims[0].notification()])
    bad = await client.post(
        "/webhooks/paxos",
        content=b"{",
        headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
    )
    assert bad.status_code == 400
    await deliver(client, [s.notification() for s in sims[1:]])
    text = (await client.get("/metrics", headers=read_headers())).text
    assert "paxos_events_pending 3.0" in text
    assert 'paxos_webhook_rejections_total{reason="invalid-json"}' in text
    assert f'paxos_webhooks_total{{outcome="duplicate",type="{sims[0].type}"}}' in text

    fetcher = Fetcher(
        engine,
        build_client(paxos_settings(settings), engine, paxos.http),
        policy=FAST,
        poll_s=0.05,
    )
    await settle(engine, fetcher)
    text = (await client.get("/metrics", headers=read_headers())).text
    assert "paxos_events_pending 0.0" in text
    for name in (
        'paxos_fetches_total{outcome="fetched"}',
        "paxos_fetch_seconds_bucket",
        "paxos_token_refreshes_total",
        "paxos_events_oldest_pending_age_seconds",
        "paxos_rate_limit_waits_total",
    ):
        assert name in text


async def test_invented_event_types_do_not_grow_the_metrics(client: httpx.AsyncClient) -> None:
    prefixes = ("identity.", "transfer.", "orchestration.", "")
    invented = [f"{prefixes[n % 4]}invented_{n}.x" for n in range(300)]
    for start in range(0, len(invented), 50):
        answers = await asyncio.gather(
            *(post(client, encode(notification(type=t))) for t in invented[start : start + 50])
        )
        assert {a.status_code for a in answers} == {200}  # stored all the same
    await post(client, encode(notification(type="transfer.crypto_deposit.completed")))
    text = (await client.get("/metrics", headers=read_headers())).text
    labels = set(re.findall(r'^paxos_webhooks_total\{[^}]*type="([^"]*)"', text, re.MULTILINE))
    assert {"other", "transfer.crypto_deposit.completed"} <= labels
    assert labels <= {*KNOWN_TYPES, "other"}, sorted(labels - {*KNOWN_TYPES, "other"})[:5]


async def test_log_lines_about_an_event_carry_its_id(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    paxos: Paxos,
    json_logs: io.StringIO,
) -> None:
    ghost = next(iter(paxos.universe)).notification() | {"id": str(uuid.uuid4())}
    await deliver(client, [ghost])
    fetcher = Fetcher(
        engine,
        build_client(paxos_settings(settings), engine, paxos.http),
        policy=FAST,
        poll_s=0.05,
    )
    await settle(engine, fetcher)
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.startswith("{")]
    about = [line for line in lines if "fetch" in line["event"]]
    assert about, lines
    assert all(line["event_id"] == ghost["id"] for line in about)
    assert {"timestamp", "level"} <= set(about[0])


async def test_no_secret_reaches_a_log_line_or_an_error_body(
    database_url: str,
    engine: AsyncEngine,
    settings: Settings,
    paxos: Paxos,
    json_logs: io.StringIO,
) -> None:
    secrets = {
        "api key": "apikey-SECRET-1",
        "oauth client secret": "oauth-SECRET-2",
        "read token": "read-SECRET-3",
        "admin token": "admin-SECRET-4",
        "database password": "dbpass-SECRET-5",
        "paxos client secret": "sim-secret",
    }
    cfg = paxos_settings(
        settings,
        webhook_api_keys=(secrets["api key"],),
        api_read_tokens=(secrets["read token"],),
        api_admin_tokens=(secrets["admin token"],),
        webhook_oauth_client_id="paxos",
        webhook_oauth_client_secret=secrets["oauth client secret"],
    )
    bodies: list[str] = []
    async for client in app_client(create_app(cfg, engine=engine, http_client=paxos.http)):
        ok = {"Content-Type": "application/json", "X-Api-Key": secrets["api key"]}
        for headers in (
            ok,
            {**ok, "X-Api-Key": secrets["api key"] + "x"},
            {**ok, "X-Api-Key": secrets["admin token"]},
        ):
            bodies.append(
                (
                    await client.post(
                        "/webhooks/paxos", content=encode(notification()), headers=headers
                    )
                ).text
            )
        for token in (secrets["read token"] + "x", secrets["admin token"]):
            bodies.append(
                (
                    await client.get(
                        f"/events/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"}
                    )
                ).text
            )
        bodies.append(
            (
                await client.post(
                    f"/admin/events/{uuid.uuid4()}/refetch",
                    headers={"Authorization": f"Bearer {secrets['read token']}"},
                )
            ).text
        )
        bodies.append(
            (
                await client.post(
                    "/oauth/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": "paxos",
                        "client_secret": secrets["oauth client secret"] + "x",
                    },
                )
            ).text
        )
        bodies.append((await client.get("/health/ready")).text)
        # A fetch: the client secret goes to the (simulated) Paxos token endpoint, and back
        # comes a token; neither may be logged.
        sim = next(e for e in paxos.universe if not e.is_test)
        await deliver_with(client, sim.notification(), secrets["api key"])
        await settle(
            engine,
            Fetcher(engine, build_client(cfg, engine, paxos.http), policy=FAST, poll_s=0.05),
        )
        paxos.state.tokens.clear()  # a refused token: refresh path
        await build_client(cfg, engine, paxos.http).get_event(sim.id)
    issued_tokens = list(paxos.state.tokens)
    # The database unreachable with a password in its URL.
    url = f"postgresql://paxos:{secrets['database password']}@127.0.0.1:1/nowhere"
    unreachable = create_engine(url)
    async for client in app_client(create_app(cfg.replace(database_url=url), engine=unreachable)):
        bodies.append(
            (
                await client.post(
                    "/webhooks/paxos",
                    content=encode(notification()),
                    headers={"Content-Type": "application/json", "X-Api-Key": secrets["api key"]},
                )
            ).text
        )
        bodies.append((await client.get("/health/ready")).text)
    await unreachable.dispose()

    logged = json_logs.getvalue()
    assert logged, "the scenario must have logged something"
    for name, secret in [*secrets.items(), *(("paxos token", t) for t in issued_tokens)]:
        assert secret not in logged, f"{name} in a log line"
        for body in bodies:
            assert secret not in body, f"{name} in an error body"
    assert repr(cfg).count("SECRET") == 0


async def deliver_with(client: httpx.AsyncClient, body: dict[str, object], key: str) -> None:
    response = await client.post(
        "/webhooks/paxos",
        content=msgspec.json.encode(body),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
    )
    assert response.status_code == 200
