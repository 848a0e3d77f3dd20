"""`serve` without Paxos credentials: the demo a new user sees, run as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.paths import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_demo_shows_fetched_events_within_seconds(database_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAXOS_", "WEBHOOK_", "API_"))}
    env.update(DATABASE_URL=database_url, PORT=str(port), LOG_LEVEL="warning")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
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
        token = None
        deadline = time.monotonic() + 30
        while token is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(process.stdout.readline)
            output.append(line)
            if match := re.search(r"read token:\s+(\S+)", line):
                token = match.group(1)
        assert token, "".join(output)
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
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout:
            process.stdout.close()
