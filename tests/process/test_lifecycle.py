"""Starting and stopping `serve` and `worker` as real processes: a signal is a clean stop
(exit 0, no "Aborted!") that also stops the embedded PostgreSQL the process started, and
what keeps the service from starting is one line, with a hint, before any banner."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.paths import ROOT
from tests.support.processes import clean_env, free_port, start, wait_ready

pytestmark = pytest.mark.slow

BANNER = "Paxos Event Store (demo)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _postmaster_pid(data_dir: Path, timeout: float = 60.0) -> int:
    pid_file = data_dir / "pg" / "postmaster.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_file.exists():
            return int(pid_file.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError(f"no {pid_file} within {timeout} s")


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _stopped_by(process: subprocess.Popen[bytes], sig: int, data_dir: Path | None = None) -> int:
    """Send `sig` to the process alone (as `kill` does, not to its group) and wait."""
    process.send_signal(sig)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if data_dir is not None:
            _leave_no_postgres(data_dir)
        raise AssertionError(f"not stopped 60 s after signal {sig}") from None


def _leave_no_postgres(data_dir: Path) -> None:
    """After a failure: stop the server a killed process left (fast shutdown)."""
    pid_file = data_dir / "pg" / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_serve_and_its_embedded_postgres(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = clean_env(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="info")
    process = start(["serve"], env, log)  # the embedded database, nothing set: the demo
    try:
        wait_ready(base, timeout=90)
        postgres = _postmaster_pid(data_dir)
        assert _alive(postgres)
        code = _stopped_by(process, sig, data_dir)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _leave_no_postgres(data_dir)
    output = log.read_text()
    assert code == 0, output
    assert "Aborted!" not in output, output
    assert "Traceback" not in output, output
    assert _wait_gone(postgres), f"postgres {postgres} of {data_dir} still runs\n{output}"
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    # The demo's note for `worker` and `backfill` goes with it.
    assert not (data_dir / "demo-paxos.json").exists()
    assert output.count("Started server process") == 1, output


def test_a_signal_stops_a_worker_and_its_embedded_postgres(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "worker.log"
    # Paxos is nowhere (a closed port): the worker retries and keeps running until stopped.
    paxos = f"http://127.0.0.1:{free_port()}"
    env = clean_env(
        DATA_DIR=str(data_dir),
        PAXOS_CLIENT_ID="lifecycle-client",
        PAXOS_CLIENT_SECRET="lifecycle-secret",
        PAXOS_API_URL=f"{paxos}/v2",
        PAXOS_TOKEN_URL=f"{paxos}/oauth2/token",
        LOG_LEVEL="info",
    )
    process = start(["worker"], env, log)
    try:
        deadline = time.monotonic() + 90
        while "worker started" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        postgres = _postmaster_pid(data_dir)
        code = _stopped_by(process, signal.SIGTERM, data_dir)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()}") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _leave_no_postgres(data_dir)
    output = log.read_text()
    assert code == 0, output
    assert "worker stopped" in output, output
    assert _wait_gone(postgres), f"postgres {postgres} still runs\n{output}"


def test_a_process_killed_outright_does_not_keep_the_next_one_from_stopping_postgres(
    tmp_path: Path,
) -> None:
    """SIGKILL leaves the dead process in the embedded server's list of users; the next
    process must not wait for it to stop the server."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = clean_env(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="warning")
    first = start(["serve"], env, tmp_path / "first.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=90)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    second = start(["serve"], env, tmp_path / "second.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=90)
        postgres = _postmaster_pid(data_dir)
        assert _stopped_by(second, signal.SIGTERM, data_dir) == 0
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    assert _wait_gone(postgres), (tmp_path / "second.log").read_text()


def _serve_once(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert BANNER not in result.stdout + result.stderr, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_taken_port_is_one_line_before_the_banner(tmp_path: Path, database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(DATABASE_URL=database_url, DATA_DIR=str(tmp_path), PORT=str(port))
        line = _one_line(_serve_once(env, "--demo"))
    assert re.search(rf"cannot listen on 127\.0\.0\.1:{port}: .*set PORT", line), line


def test_an_unreachable_database_is_one_line_before_the_banner(tmp_path: Path) -> None:
    url = f"postgresql://nobody:secret-password@127.0.0.1:{free_port()}/nothing"
    env = clean_env(DATABASE_URL=url, DATA_DIR=str(tmp_path), PORT=str(free_port()))
    started = time.monotonic()
    result = _serve_once(env, "--demo")
    line = _one_line(result)
    assert time.monotonic() - started < 30
    assert line.startswith("paxos-events: database unreachable: "), line
    assert "check DATABASE_URL" in line
    assert "secret-password" not in result.stderr + result.stdout


async def test_a_database_behind_its_migrations_is_one_line_before_the_banner(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0013'"))
    env = clean_env(DATABASE_URL=database_url, DATA_DIR=str(tmp_path), PORT=str(free_port()))
    line = _one_line(_serve_once(env, "--demo"))
    assert "the database is at migration 0013" in line, line
    assert "run `paxos-events migrate`" in line, line


def test_a_real_deployment_without_tokens_is_warned_at_start(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = clean_env(
        DATABASE_URL=database_url,
        DATA_DIR=str(tmp_path),
        PORT=str(port),
        WEBHOOK_API_KEYS="lifecycle-webhook-key-01",
        PAXOS_CLIENT_ID="lifecycle-client",
        PAXOS_CLIENT_SECRET="lifecycle-secret",
        PAXOS_API_URL=f"http://127.0.0.1:{free_port()}/v2",
        PAXOS_TOKEN_URL=f"http://127.0.0.1:{free_port()}/oauth2/token",
    )
    process = start(["serve"], env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        assert httpx.get(f"http://127.0.0.1:{port}/events").status_code == 401
        code = _stopped_by(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log.read_text()
    assert code == 0, output
    assert "no API_READ_TOKENS or API_ADMIN_TOKENS" in output, output
    assert BANNER not in output
