"""`paxos-events export` as a process: to a file and to standard output, and its refusals."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.store.audit.seals import seal_pending
from tests.support.audit import WINDOW, add_events, lines
from tests.support.processes import cli


@pytest.mark.slow
async def test_the_export_command(
    engine: AsyncEngine, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    ids = await add_events(engine, 3)
    await seal_pending(engine)
    out = tmp_path / "export.jsonl"
    done = cli(
        database_url,
        "export",
        "--since",
        WINDOW["since"],
        "--until",
        WINDOW["until"],
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    records = lines(out.read_text())
    assert [r["event_id"] for r in records[:-1]] == [str(i) for i in ids]
    assert records[-1]["all_sealed"] is True

    to_stdout = cli(
        database_url,
        "export",
        "--since",
        WINDOW["since"],
        "--until",
        WINDOW["until"],
        "--format",
        "csv",
    )
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert len(list(csv.DictReader(io.StringIO(to_stdout.stdout)))) == 4

    # A time without an offset is refused (a date alone is midnight UTC: test_cli_output.py).
    bad = cli(database_url, "export", "--since", "2026-01-07T00:00:00", "--until", WINDOW["until"])
    assert bad.returncode == 2
    assert "--since" in bad.stderr

    unwritable = cli(
        database_url,
        "export",
        "--since",
        WINDOW["since"],
        "--until",
        WINDOW["until"],
        "-o",
        str(tmp_path / "missing" / "export.jsonl"),
    )
    assert unwritable.returncode == 2
    assert unwritable.stderr.startswith("paxos-events: cannot write the export: ")
    assert "Traceback" not in unwritable.stderr
