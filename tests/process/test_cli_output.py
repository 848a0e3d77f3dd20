"""`paxos-events export` as a process: a one-line summary on stderr, dates as midnight UTC,
and a reader that goes away (`export | head`) ends it quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.seals import seal_pending
from tests.support.audit import add_events, lines
from tests.support.paths import ROOT
from tests.support.processes import clean_env, cli

pytestmark = pytest.mark.slow


async def test_export_prints_a_summary_and_takes_dates(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await add_events(engine, 3)  # on 2026-01-07
    await seal_pending(engine)
    out = tmp_path / "export.jsonl"
    done = cli(
        database_url, "export", "--since", "2026-01-07", "--until", "2026-01-08", "-o", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert len(lines(out.read_text())) == 4  # 3 events and the trailer
    summary = done.stderr.strip().splitlines()
    assert len(summary) == 1, done.stderr
    assert summary[0].startswith(f"exported 3 events to {out} (6 journal rows, positions "), summary
    assert "; all sealed (through seal " in summary[0], summary
    # Not sealed yet: the summary says so.
    await add_events(engine, 1)
    unsealed = cli(database_url, "export", "--since", "2026-01-07", "--until", "2026-01-08")
    assert unsealed.returncode == 0, unsealed.stderr
    assert "exported 4 events (" in unsealed.stderr
    assert "2 rows not sealed yet" in unsealed.stderr, unsealed.stderr
    # A day before the events: nothing, and said so.
    none = cli(database_url, "export", "--since", "2026-01-06", "--until", "2026-01-07")
    assert none.returncode == 0, none.stderr
    assert none.stderr.startswith("exported 0 events"), none.stderr


async def test_a_closed_pipe_ends_the_export_quietly(
    engine: AsyncEngine, database_url: str
) -> None:
    await add_events(engine, 400)  # far more than a pipe's buffer
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "export",
            "--since",
            "2026-01-07",
            "--until",
            "2026-01-08",
        ],
        cwd=ROOT,
        env=clean_env(DATABASE_URL=database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(100)  # as `head -c 100` does: read a little, then go
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    code = process.wait(timeout=60)
    assert code in (0, 141), stderr
    assert stderr == "", stderr
