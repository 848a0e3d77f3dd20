"""Security on a real server: X-Forwarded-For counts only from trusted proxies, and no
database password reaches a log line or an error body when the database cannot be reached
at start-up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.paths import ROOT
from tests.support.processes import clean_env, free_port, wait_http
from tests.support.processes import running as running_process
from tests.support.secrets import SECRETS, assert_no_secret
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN, bearer

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


@pytest.mark.slow
def test_x_forwarded_for_counts_only_from_trusted_proxies(
    database_url: str, tmp_path: Path
) -> None:
    def start(port: int, **extra: str) -> Any:
        env = clean_env(
            DATABASE_URL=database_url,
            PORT=str(port),
            WEBHOOK_API_KEYS=API_KEY,
            API_READ_TOKENS=READ_TOKEN,
            API_ADMIN_TOKENS=ADMIN_TOKEN,
            PAXOS_CLIENT_ID="unused",
            PAXOS_CLIENT_SECRET="unused",
            AUTH_FAILURE_LIMIT="2",
            **extra,
        )
        return running_process(["serve", "--no-background"], env, tmp_path / f"serve-{port}.log")

    def get(port: int, token: str, forwarded_for: str) -> int:
        return httpx.get(
            f"http://127.0.0.1:{port}/events",
            headers={**bearer(token), "X-Forwarded-For": forwarded_for},
        ).status_code

    # Not trusted (the default): every request counts against the peer, 127.0.0.1, so
    # changing the header does not escape the throttle.
    port = free_port()
    with start(port):
        wait_http(f"http://127.0.0.1:{port}/health/live")
        assert get(port, "wrong", "203.0.113.1") == 401
        assert get(port, "wrong", "203.0.113.2") == 401
        assert get(port, "wrong", "203.0.113.3") == 429
        assert get(port, READ_TOKEN, "203.0.113.4") == 200  # checked first: never refused
    # Behind a trusted proxy, the forwarded address is the client's.
    port = free_port()
    with start(port, TRUSTED_PROXIES="127.0.0.1"):
        wait_http(f"http://127.0.0.1:{port}/health/live")
        assert get(port, "wrong", "203.0.113.1") == 401
        assert get(port, "wrong", "203.0.113.1") == 401
        assert get(port, "wrong", "203.0.113.1") == 429
        assert get(port, "wrong", "198.51.100.2") == 401


@pytest.mark.slow
@pytest.mark.parametrize("command", [["migrate"], ["serve", "--no-background"], ["worker"]])
def test_no_database_password_when_the_database_cannot_be_reached(
    command: list[str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    password = SECRETS["database password"]
    env = clean_env(
        DATABASE_URL=f"postgresql://paxos:{password}@127.0.0.1:{free_port()}/events",
        PORT=str(port),
        WEBHOOK_API_KEYS=SECRETS["api key"],
        API_READ_TOKENS=SECRETS["read token"],
        API_ADMIN_TOKENS=SECRETS["admin token"],
        PAXOS_CLIENT_ID="paxos-client",
        PAXOS_CLIENT_SECRET=SECRETS["paxos client secret"],
        PAXOS_API_URL="http://127.0.0.1:1/v2",
        PAXOS_TOKEN_URL="http://127.0.0.1:1/token",
        LOG_LEVEL="debug",
        LOG_FORMAT="json",
    )
    log = tmp_path / "out.log"
    bodies: list[str] = []
    if command[0] in ("migrate", "serve"):
        # Both check the database before anything else and stop with one line (#19); a
        # database lost once `serve` runs is answered with 503s (tests/process/test_outages.py).
        result = subprocess.run(
            [sys.executable, "-m", "service", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode != 0
        output = (result.stdout + result.stderr).decode()
        assert "Traceback" not in output, output
        lines = [x for x in output.splitlines() if x.startswith("paxos-events: ")]
        assert lines == [lines[0]] and "database unreachable" in lines[0], output
    else:
        with running_process(command, env, log) as process:
            time.sleep(3)  # the worker tries, fails, and retries
            assert process.poll() is None or process.returncode != 0
        output = log.read_text()
    assert_no_secret(output, bodies)
