"""A bad setting stops `paxos-events serve` at start, with one line that names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent


def test_a_bad_setting_stops_the_start_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "PAXOS_"))}
    env.update(
        PORT="eighty",
        DATA_DIR=str(tmp_path),
        PAXOS_CLIENT_ID="x",
        PAXOS_CLIENT_SECRET="y",
        WEBHOOK_API_KEYS="webhook-key-00001",
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "paxos-events: configuration error: PORT: must be a whole number from 1 to 65535, "
        "got 'eighty'"
    ]


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _clean(tmp_path: Path, **changes: str) -> dict[str, str]:
    prefixes = ("WEBHOOK_", "PAXOS_", "API_", "DATABASE_URL", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(DATA_DIR=str(tmp_path), **changes)
    return env


def test_a_short_token_stops_the_start_with_one_line_naming_it(tmp_path: Path) -> None:
    short = "read-token-0015"  # 15 characters
    env = _clean(
        tmp_path,
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere",
        WEBHOOK_API_KEYS="webhook-key-00001",
        API_READ_TOKENS=short,
    )
    result = _serve(env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "paxos-events: configuration error: API_READ_TOKENS: a value is shorter than 16 characters"
    )
    assert short not in result.stderr


def test_a_database_url_with_nothing_else_set_is_no_demo(tmp_path: Path) -> None:
    """Without --demo, a DATABASE_URL is a real deployment: the missing webhook credentials
    stop the start (the demo would make some up and write made-up events into it)."""
    env = _clean(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere")
    result = _serve(env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "paxos-events: configuration error: WEBHOOK_API_KEYS: required when WEBHOOK_AUTH=api_key "
        "(comma-separated accepted keys)"
    ]


def test_a_worker_without_paxos_credentials_refuses_with_one_line(tmp_path: Path) -> None:
    env = _clean(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere")
    result = subprocess.run(
        [sys.executable, "-m", "service", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "paxos-events: configuration error: PAXOS_CLIENT_ID: the worker needs PAXOS_CLIENT_ID "
        "and PAXOS_CLIENT_SECRET (or a demo running on the same DATA_DIR"
    ), lines
