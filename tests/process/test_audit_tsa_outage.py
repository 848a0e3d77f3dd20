"""A timestamp authority that is down, as real processes see it: `serve` (with its background:
fetcher, sealer, anchorer) fed webhooks while AUDIT_TSA_URL answers nothing keeps
acknowledging and storing them and keeps sealing; anchoring waits, counted in
paxos_audit_anchor_failures_total{sink="tsa"} and shown by /health/ready as degraded; when the
TSA comes back on its address, anchoring resumes with a token over the newest seal's hash."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.signing import Signer, private_pem
from tests.support.processes import (
    API_KEY,
    READ_TOKEN,
    free_port,
    running,
    service_env,
    simulator_args,
    universe_notifications,
    wait_http,
    wait_ready,
)
from tests.support.tsa import OPENSSL, make_tsa, openssl, tsa_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed"),
]

EVENTS = 60
SEED = 17
FAILURES = re.compile(r'^paxos_audit_anchor_failures_total\{sink="tsa"\} (\S+)$', re.M)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.2)


async def _tsa_failures(client: httpx.AsyncClient) -> float:
    metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert metrics.status_code == 200
    found = FAILURES.search(metrics.text)
    return float(found.group(1)) if found else 0.0


async def _deliver(client: httpx.AsyncClient, bodies: list[dict[str, object]]) -> list[int]:
    statuses = []
    for body in bodies:
        response = await client.post(
            "/webhooks/paxos",
            content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
        )
        statuses.append(response.status_code)
        await asyncio.sleep(0.05)
    return statuses


async def _scalar(engine: AsyncEngine, statement: str, **params: object) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(statement), params) or 0)


async def _stored(engine: AsyncEngine, bodies: list[dict[str, object]]) -> int:
    """How many of these notifications are in the journal."""
    return await _scalar(
        engine,
        "SELECT count(*) FROM journal WHERE kind = 'notification' "
        "AND event_id = ANY(CAST(:ids AS uuid[]))",
        ids=[str(b["id"]) for b in bodies],
    )


async def _sealed_through(engine: AsyncEngine) -> int:
    return await _scalar(engine, "SELECT coalesce(max(last_position), 0) FROM seals")


async def _newest_position(engine: AsyncEngine, bodies: list[dict[str, object]]) -> int:
    return await _scalar(
        engine,
        "SELECT coalesce(max(position), 0) FROM journal WHERE kind = 'notification' "
        "AND event_id = ANY(CAST(:ids AS uuid[]))",
        ids=[str(b["id"]) for b in bodies],
    )


async def test_a_tsa_outage_delays_anchoring_but_not_intake_or_sealing(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    bodies = universe_notifications(EVENTS, SEED)
    first, second = bodies[: EVENTS // 2], bodies[EVENTS // 2 :]
    tsa = make_tsa(tmp_path / "tsa")
    tsa_port, paxos_port, port = free_port(), free_port(), free_port()
    key = tmp_path / "seal.pem"
    key.write_bytes(private_pem(Signer.generate().private))
    anchors = tmp_path / "anchors"
    env = service_env(
        database_url,
        paxos_port,
        PORT=str(port),
        SEAL_INTERVAL_S="0.5",
        AUDIT_SIGNING_KEY=str(key),
        AUDIT_ANCHOR_URL=anchors.as_uri(),
        AUDIT_ANCHOR_INTERVAL_S="1",
        AUDIT_ANCHOR_MAX_LAG_S="2",
        # Nothing listens there yet: the TSA is down (connection refused).
        AUDIT_TSA_URL=f"http://127.0.0.1:{tsa_port}/tsa",
    )
    base = f"http://127.0.0.1:{port}"
    with (
        running(simulator_args(paxos_port, EVENTS, SEED), env, tmp_path / "sim.log"),
        running(["serve"], env, tmp_path / "serve.log") as serve,
    ):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{paxos_port}/_simulator/stats")
        await asyncio.to_thread(wait_ready, base)
        async with httpx.AsyncClient(base_url=base, timeout=15) as client:
            # The TSA is down: every webhook is acknowledged after it is stored, and sealed.
            assert await _deliver(client, first) == [200] * len(first)
            assert await _stored(engine, first) == len(first)
            through = await _newest_position(engine, first)

            async def first_sealed() -> bool:
                return await _sealed_through(engine) >= through

            await _until(first_sealed, 20, "the first webhooks sealed")

            async def retried() -> bool:
                return await _tsa_failures(client) >= 2

            await _until(retried, 20, "the TSA asked again after a failure")
            assert not list(anchors.glob("seal-*.json")), "anchored without a timestamp"

            async def degraded() -> bool:
                ready = await client.get("/health/ready")
                assert ready.status_code == 200, ready.text  # degraded anchoring is ready
                assert ready.json()["seals"] == "signed"
                return bool(ready.json()["anchoring"] == "degraded")

            # A seal unanchored for over AUDIT_ANCHOR_MAX_LAG_S (2 s).
            await _until(degraded, 10, "anchoring degraded")

            # Still down: more webhooks, acknowledged, stored and sealed all the same.
            sealed_before = await _scalar(engine, "SELECT count(*) FROM seals")
            assert await _deliver(client, second) == [200] * len(second)
            assert await _stored(engine, second) == len(second)
            through = await _newest_position(engine, second)
            await _until(first_sealed, 20, "the later webhooks sealed")
            assert await _scalar(engine, "SELECT count(*) FROM seals") > sealed_before
            assert not list(anchors.glob("seal-*.json"))
            failed = await _tsa_failures(client)
            log = (tmp_path / "serve.log").read_text()
            assert "Traceback" not in log, log

            # The TSA comes back on its address: anchoring resumes by itself (the backoff is
            # at most a minute), with a token over the anchored seal's hash.
            with tsa_server(tsa, tsa_port):

                async def anchored() -> bool:
                    return bool(list(anchors.glob("seal-*.json")))

                await _until(anchored, 60, "an anchor after the TSA came back")

                async def caught_up() -> bool:
                    ready = await client.get("/health/ready")
                    return bool(ready.json()["anchoring"] == "ok")

                await _until(caught_up, 30, "anchoring ok again")
                # Back: no failure counted since.
                assert await _tsa_failures(client) == failed
            assert serve.poll() is None

    newest = sorted(anchors.glob("seal-*.json"))[-1]
    doc = json.loads(newest.read_bytes())
    async with engine.connect() as conn:
        seal = (
            await conn.execute(
                text("SELECT hash, key_id, last_position FROM seals WHERE seal_id = :id"),
                {"id": doc["seal_id"]},
            )
        ).one()
    assert doc["seal_hash"] == bytes(seal.hash).hex() and doc["key_id"] == seal.key_id
    assert doc["last_position"] >= through  # the anchor covers everything delivered during
    assert doc["timestamp_token"] is not None

    (tsa / "anchor.tsr").write_bytes(base64.b64decode(doc["timestamp_token"]))
    verified = openssl("ts", "-verify", "-digest", doc["seal_hash"], "-in", "anchor.tsr",
                       "-CAfile", "ca.crt", "-untrusted", "tsa.crt", cwd=tsa)  # fmt: skip
    assert b"Verification: OK" in verified
    # The service recorded the outage for the console: the TSA's last error, its failures
    # cleared by the success, and the seal it timestamped.
    async with engine.connect() as conn:
        tsa = (
            await conn.execute(
                text("SELECT failures, last_error FROM audit_anchor_sinks WHERE sink = 'tsa'")
            )
        ).one()
        timestamped = await conn.scalar(
            text("SELECT max(seal_id) FROM audit_anchors WHERE sink = 'tsa'")
        )
    assert tsa.failures == 0 and tsa.last_error is not None
    assert timestamped is not None and timestamped >= doc["seal_id"]
