"""`paxos-events backfill` as a process, against the simulator on a port: it prints its counts,
and a second run resumes with what the first one stored."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.fetching import rows
from tests.support.paths import ROOT
from tests.support.processes import clean_env, free_port, running, wait_http


@pytest.mark.slow
async def test_backfill_command_prints_its_counts_and_resumes(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    paxos = f"http://127.0.0.1:{port}"
    until = "2026-11-01T00:00:00Z"
    env = clean_env(
        DATABASE_URL=database_url,
        PAXOS_API_URL=f"{paxos}/v2",
        PAXOS_TOKEN_URL=f"{paxos}/oauth2/token",
        PAXOS_CLIENT_ID="c",
        PAXOS_CLIENT_SECRET="s",
        PAXOS_API_RPS="200",
        LOG_LEVEL="warning",
    )
    with running(
        [
            "simulate",
            "api",
            "--port",
            str(port),
            "--events",
            "150",
            "--test-ratio",
            "0.1",
            "--seed",
            "9",
            "--until",
            until,
            "--client-id",
            "c",
            "--client-secret",
            "s",
            "--rate",
            "1000",
        ],
        env,
        tmp_path / "sim.log",
    ):
        await asyncio.to_thread(wait_http, f"{paxos}/_simulator/stats")
        args = [
            sys.executable,
            "-m",
            "service",
            "backfill",
            "--since",
            "2026-10-31T00:00:00Z",
            "--until",
            until,
        ]
        first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        second = subprocess.run(
            [*args, "--include-test"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        bad = subprocess.run(
            [*args[:4], "--until", "yesterday"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert first.returncode == 0, first.stderr
    assert "135 events found" in first.stdout and "135 missing" in first.stdout
    assert "0 already known" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "150 events found" in second.stdout and "15 missing" in second.stdout
    assert "135 already known" in second.stdout
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr
    assert len(await rows(engine)) == 150
    assert os.environ.get("PAXOS_CLIENT_SECRET") != "s"  # the test did not leak its env
