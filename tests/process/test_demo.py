"""`serve --demo`, the demo a new user sees, and `serve` without Paxos credentials outside
the demo (webhooks in, nothing fetched, no demo), run as real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.background import FETCHING_OFF
from service.store.tables import events, journal
from tests.support.factories import encode, notification
from tests.support.paths import ROOT
from tests.support.processes import clean_env, running, wait_ready
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN, read_headers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_demo_shows_fetched_events_within_seconds(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAXOS_", "WEBHOOK_", "API_"))}
    env.update(
        DATABASE_URL=database_url, PORT=str(port), LOG_LEVEL="warning", DATA_DIR=str(tmp_path)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        token = admin = None
        deadline = time.monotonic() + 30
        while admin is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(process.stdout.readline)
            output.append(line)
            if match := re.search(r"read token:\s+(\S+)", line):
                token = match.group(1)
            if match := re.search(r"admin token:\s+(\S+)", line):
                admin = match.group(1)
        assert token and admin, "".join(output)
        banner = "".join(output)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            fetched: list[dict[str, object]] = []
            started = time.monotonic()
            while time.monotonic() - started < 30 and not fetched:
                await asyncio.sleep(0.5)
                try:
                    response = await client.get(
                        "/events",
                        params={"status": "fetched"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    fetched = response.json()["items"]
        assert fetched, "no fetched event within 30 s of start"
        assert all(isinstance(item["detail"], dict) for item in fetched)
        assert all(item["detail"]["id"] == item["id"] for item in fetched)
        assert "built-in Paxos simulator" in banner
        assert "subscription demo-receiver" in banner
        # The demo's own subscription: its receiver (in the demo process) acknowledges only
        # deliveries whose signature it checks, so `delivered` counts verified pushes.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            shown: dict[str, object] = {}
            started = time.monotonic()
            while time.monotonic() - started < 30:
                response = await client.get(
                    "/admin/subscriptions/demo-receiver",
                    headers={"Authorization": f"Bearer {admin}"},
                )
                if response.status_code == 200:
                    shown = response.json()
                    if shown["deliveries"]["delivered"] > 0:  # type: ignore[index]
                        break
                await asyncio.sleep(0.5)
        assert shown, "no demo-receiver subscription within 30 s"
        assert shown["deliveries"]["delivered"] > 0, shown  # type: ignore[index]
        assert shown["state"] == "active", shown
        assert shown["url"].startswith("http://127.0.0.1:"), shown  # type: ignore[attr-defined]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout:
            process.stdout.close()


async def _demo_receiver_after(
    database_url: str, delivered_before: int, data_dir: Path, url_before: str | None = None
) -> dict[str, Any]:
    """Run `serve --demo` until its subscription has delivered more than `delivered_before`
    (its receiver acknowledges only what carries a signature of this run's secret); the
    subscriptions then listed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAXOS_", "WEBHOOK_", "API_"))}
    env.update(
        DATABASE_URL=database_url, PORT=str(port), LOG_LEVEL="warning", DATA_DIR=str(data_dir)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        admin = None
        deadline = time.monotonic() + 30
        while admin is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(process.stdout.readline)
            if match := re.search(r"admin token:\s+(\S+)", line):
                admin = match.group(1)
        assert admin
        headers = {"Authorization": f"Bearer {admin}"}
        moved_at: int | None = None  # deliveries counted when this run's receiver took over
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            started = time.monotonic()
            while time.monotonic() - started < 30:
                await asyncio.sleep(0.5)
                try:
                    response = await client.get("/admin/subscriptions", headers=headers)
                except httpx.TransportError:
                    continue
                items = response.json()["items"] if response.status_code == 200 else []
                if not items or items[0]["url"] == url_before:
                    continue  # not yet moved to this run's receiver
                delivered = items[0]["deliveries"]["delivered"]
                if moved_at is None:
                    # Counted from the move on: the run before may have had outcomes recorded
                    # after `delivered_before` was read.
                    moved_at = delivered
                if delivered > max(delivered_before, moved_at):
                    return response.json()  # type: ignore[no-any-return]
        raise AssertionError(f"no delivery past {delivered_before} within 30 s")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.mark.slow
async def test_a_restarted_demo_keeps_its_one_subscription_and_delivers_on(
    database_url: str, tmp_path: Path
) -> None:
    first = (await _demo_receiver_after(database_url, 0, tmp_path))["items"]
    assert [s["name"] for s in first] == ["demo-receiver"]
    # Another run: the same subscription, this run's receiver (another port), a new secret
    # (what the old one signed would be refused with 401, not counted as delivered).
    second = (
        await _demo_receiver_after(
            database_url, first[0]["deliveries"]["delivered"], tmp_path, first[0]["url"]
        )
    )["items"]
    assert [s["name"] for s in second] == ["demo-receiver"]
    assert second[0]["url"] != first[0]["url"]
    assert second[0]["state"] == "active"


async def _counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        stored = (await conn.execute(select(func.count()).select_from(events))).scalar_one()
        journaled = (await conn.execute(select(func.count()).select_from(journal))).scalar_one()
    return stored, journaled


@pytest.mark.slow
async def test_serve_on_a_database_url_without_paxos_credentials_is_no_demo(
    database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    """A real deployment that has not set its Paxos credentials yet: no banner with its
    secrets, no simulator writing made-up events into its append-only journal; webhooks are
    stored and acknowledged, nothing is fetched, and both the log and /health/ready say so."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        DATABASE_URL=database_url,
        PORT=str(port),
        WEBHOOK_API_KEYS=API_KEY,
        API_READ_TOKENS=READ_TOKEN,
        API_ADMIN_TOKENS=ADMIN_TOKEN,
    )
    log = tmp_path / "serve.log"
    with running(["serve"], env, log) as process:
        await asyncio.to_thread(wait_ready, base)
        # The demo streams 2 webhooks/s from the start: a few seconds would show them.
        await asyncio.sleep(4)
        assert await _counts(engine) == (0, 0), log.read_text()
        async with httpx.AsyncClient(base_url=base) as client:
            body = notification()
            delivered = await client.post(
                "/webhooks/paxos",
                content=encode(body),
                headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
            )
            assert delivered.status_code == 200, delivered.text
            assert delivered.json()["status"] == "accepted"
            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"  # the intake works: ready
            assert ready.json()["fetching"] == "off"
            await asyncio.sleep(3)  # a fetcher would have tried by now
            stored = await client.get(f"/events/{body['id']}", headers=read_headers())
        assert stored.status_code == 200, stored.text
        assert (stored.json()["status"], stored.json()["attempts"]) == ("pending", 0)
        assert await _counts(engine) == (1, 1)  # the notification, and nothing made up
        assert process.poll() is None, log.read_text()
    output = log.read_text()
    for secret in (READ_TOKEN, ADMIN_TOKEN, API_KEY):
        assert secret not in output, output
    assert "demo" not in output.lower(), output
    assert output.count(FETCHING_OFF) == 1, output
