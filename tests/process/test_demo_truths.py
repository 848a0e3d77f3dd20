"""What the demo tells a newcomer is true, run as real processes on an embedded database of
its own: the banner's webhook is fetched, no event is newer than its first delivery, the
made-up tokens survive a restart, and the other commands work against a running demo (or
say exactly what to do when none runs)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.paths import ROOT
from tests.support.processes import clean_env, free_port, start, wait_ready

pytestmark = pytest.mark.slow


def _banner(log: Path, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "List events:" in text:
            return text
        time.sleep(0.2)
    raise TimeoutError(log.read_text())


def _command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def test_the_demo_keeps_its_word(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="warning")
    log = tmp_path / "demo.log"
    demo = start(["serve"], env, log)
    try:
        wait_ready(base, timeout=90)
        banner = _banner(log)
        token_match = re.search(r"read token:\s+(\S+)", banner)
        curl = re.search(r"-H '([\w-]+): (\S+)' -d '(\{.*\})'", banner)
        assert token_match and curl, banner
        token = token_match.group(1)
        reads = {"Authorization": f"Bearer {token}"}
        assert f"{data_dir / 'demo-secrets.json'}" in banner

        # The banner's webhook: an event the simulator knows, so it is fetched.
        body = json.loads(curl.group(3))
        sent = httpx.post(
            f"{base}/webhooks/paxos",
            content=curl.group(3),
            headers={"Content-Type": "application/json", curl.group(1): curl.group(2)},
        )
        assert sent.status_code == 200, sent.text
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != "fetched":
            time.sleep(0.5)
            status = httpx.get(f"{base}/events/{body['id']}", headers=reads).json()["status"]
        assert status == "fetched", status

        # No event is announced before it happened.
        deadline = time.monotonic() + 30  # a few of the stream's webhooks (slower when busy)
        page: dict[str, Any] = {"items": []}
        while time.monotonic() < deadline and len(page["items"]) <= 3:
            time.sleep(1)
            page = httpx.get(f"{base}/events", params={"limit": 200}, headers=reads).json()
        assert len(page["items"]) > 3, page
        for item in page["items"]:
            happened = datetime.fromisoformat(item["time"])
            assert happened <= datetime.fromisoformat(item["first_received_at"]), item

        # The other commands, on the same DATA_DIR, while the demo runs.
        now = datetime.now(UTC)
        window = [
            "--since",
            (now - timedelta(hours=1)).isoformat(),
            "--until",
            (now + timedelta(minutes=1)).isoformat(),
        ]
        backfill = _command(env, "backfill", *window)
        assert backfill.returncode == 0, backfill.stderr
        assert re.search(r"backfill pass \d+: \d+ events found", backfill.stdout), backfill
        verify = _command(env, "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        export = _command(env, "export", "--since", now.date().isoformat(), "--until", "2100-01-01")
        assert export.returncode == 0, export.stderr
        assert export.stderr.startswith("exported "), export.stderr
        worker_log = tmp_path / "worker.log"
        worker = start(["worker"], env | {"LOG_LEVEL": "info"}, worker_log)
        try:
            deadline = time.monotonic() + 60
            while "worker started" not in worker_log.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, worker_log.read_text()
                time.sleep(0.2)
            assert "using the running demo's simulator" in worker_log.read_text()
            assert _stop(worker) == 0, worker_log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert _stop(demo) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()

    # Stopped: the commands that need Paxos say what to do.
    refused = _command(env, "backfill", *window)
    assert refused.returncode == 2
    assert "PAXOS_CLIENT_ID" in refused.stderr and "make run" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    # Started again: the same tokens, so what was printed before still works.
    again = start(["serve"], env, tmp_path / "again.log")
    try:
        wait_ready(base, timeout=90)
        assert f"read token:  {token}" in _banner(tmp_path / "again.log")
        assert httpx.get(f"{base}/events", params={"limit": 1}, headers=reads).status_code == 200
        assert _stop(again) == 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
