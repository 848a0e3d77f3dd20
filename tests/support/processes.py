"""Real processes for tests that need them: the simulator, workers, servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.paths import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**changes: str) -> dict[str, str]:
    """The environment without any of our settings, plus `changes`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAXOS_", "WEBHOOK_", "API_", "DATABASE_URL", "PORT"))
    }
    env.update(changes)
    return env


@contextmanager
def running(
    args: list[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m service *args` as a process group of its own, stopped on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until `url` answers anything at all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


# The universe's window ends long before "now": the reconciler's look-back (a day) finds none
# of its events, so every stored event came through the webhook path under test.
UNTIL = "2026-11-01T00:00:00Z"
TEST_RATIO = "0.05"
CLIENT_ID, CLIENT_SECRET = "sim-client", "sim-secret"  # noqa: S105 - the simulator's own
API_KEY = "process-api-key-0004"
READ_TOKEN = "process-read-token-0005"  # noqa: S105 - a test credential


def simulator_args(port: int, events: int, seed: int, *extra: str) -> list[str]:
    """`simulate api` serving the universe that `sender_args` with the same values delivers."""
    return [
        "simulate",
        "api",
        "--port",
        str(port),
        "--events",
        str(events),
        "--seed",
        str(seed),
        "--until",
        UNTIL,
        "--test-ratio",
        TEST_RATIO,
        "--client-id",
        CLIENT_ID,
        "--client-secret",
        CLIENT_SECRET,
        *extra,
    ]


def sender_args(target: str, count: int, seed: int, *extra: str) -> list[str]:
    """`simulate send` of the universe that `simulator_args` with the same values serves,
    retrying fast (first retry after 50 ms, none later than 36 s apart, for 864 s)."""
    return [
        "simulate",
        "send",
        "--target",
        target,
        "--count",
        str(count),
        "--seed",
        str(seed),
        "--until",
        UNTIL,
        "--test-ratio",
        TEST_RATIO,
        "--api-key",
        API_KEY,
        "--time-scale",
        "0.01",
        "--timeout",
        "15",
        "--json",
        *extra,
    ]


def universe_notifications(count: int, seed: int) -> list[dict[str, Any]]:
    """The webhooks `sender_args` sends, for the events `simulator_args` serves."""
    from service.simulator.commands import build_universe

    until = datetime.fromisoformat(UNTIL)
    return build_universe(count, float(TEST_RATIO), seed, until).notifications()


def universe_ids(count: int, seed: int) -> list[str]:
    """The ids of the events `simulator_args` serves and `sender_args` sends."""
    return [str(n["id"]) for n in universe_notifications(count, seed)]


def service_env(database_url: str, paxos_port: int, **changes: str) -> dict[str, str]:
    """Settings for `serve` and `worker` against `database_url` and a simulator on a port."""
    paxos = f"http://127.0.0.1:{paxos_port}"
    return (
        clean_env(
            DATABASE_URL=database_url,
            PAXOS_API_URL=f"{paxos}/v2",
            PAXOS_TOKEN_URL=f"{paxos}/oauth2/token",
            PAXOS_CLIENT_ID=CLIENT_ID,
            PAXOS_CLIENT_SECRET=CLIENT_SECRET,
            WEBHOOK_API_KEYS=API_KEY,
            API_READ_TOKENS=READ_TOKEN,
            LOG_LEVEL="warning",
        )
        | changes
    )


def start(
    args: list[str], env: Mapping[str, str], log: Path, *, output: Path | None = None
) -> subprocess.Popen[bytes]:
    """`python -m service *args` as a process group of its own; the caller stops it.

    Its output is appended to `log` (a restarted process keeps one log), or its standard
    output alone goes to `output` when given (a report to parse)."""
    with log.open("ab") as err, (output or log).open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=err if output else subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(base: str, timeout: float = 30.0) -> None:
    """Wait until the service at `base` answers /health/live with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/live", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base} was not live within {timeout} s")


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service *args` against `database_url`, run to its end."""
    env = clean_env() | {"DATABASE_URL": database_url}
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
