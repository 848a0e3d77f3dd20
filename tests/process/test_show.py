"""`paxos-events show` as a process: a state now, as of a time, as known at a time, its history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.projections.runner import Projector
from tests.support.processes import cli
from tests.support.projections import event
from tests.support.timetravel import record

T0 = datetime(2026, 1, 7, 14, 0, tzinfo=UTC)


def rfc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.slow
async def test_the_show_command(engine: AsyncEngine, database_url: str) -> None:
    pending = event(
        "identity.pending", {"identity_id": "idt-s", "new_summary_status": "PENDING"}, rfc(T0)
    )
    frozen = event(
        "identity.control.created",
        {"identity_id": "idt-s", "control_id": "c1", "control_type": "CLOSED"},
        rfc(T0 + timedelta(minutes=1)),
    )
    approved = event(
        "identity.approved",
        {"identity_id": "idt-s", "new_summary_status": "APPROVED"},
        rfc(T0 + timedelta(minutes=2)),
    )
    await record(engine, [pending, approved], recorded_at=T0 + timedelta(hours=1))
    await record(engine, [frozen], via="list_events", recorded_at=T0 + timedelta(days=2))
    await Projector(engine).catch_up()

    now = cli(database_url, "show", "identity", "idt-s")
    assert now.returncode == 0, now.stderr
    assert now.stdout.splitlines()[0] == "identity idt-s"
    assert "  summary_status: APPROVED" in now.stdout.splitlines()

    then = cli(database_url, "show", "identity", "idt-s", "--as-of", rfc(T0 + timedelta(minutes=1)))
    assert then.returncode == 0, then.stderr
    assert "  summary_status: PENDING" in then.stdout.splitlines()
    assert "CLOSED" in then.stdout

    known = cli(
        database_url,
        "show",
        "identity",
        "idt-s",
        "--known-at",
        rfc(T0 + timedelta(days=1)),
        "--history",
    )
    assert known.returncode == 0, known.stderr
    lines = known.stdout.splitlines()
    history = lines[lines.index("history (2 events, oldest first):") + 1 :]
    assert [line.split()[2] for line in history] == [pending["id"], approved["id"]]
    assert history[0].endswith("summary_status - → PENDING")
    assert history[1].endswith("summary_status PENDING → APPROVED")

    full = cli(database_url, "show", "identity", "idt-s", "--history", "--json")
    assert full.returncode == 0, full.stderr
    body = json.loads(full.stdout)
    assert body["state"]["summary_status"] == "APPROVED"
    assert [e["event"]["via"] for e in body["history"]] == ["webhook", "list_events", "webhook"]
    assert body["history"][1]["changes"][0]["field"] == "controls"

    text_history = cli(database_url, "show", "identity", "idt-s", "--history")
    assert "control CLOSED added" in text_history.stdout

    unknown = cli(database_url, "show", "transfer", "nothing")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "paxos-events: no transfer with id nothing"
    assert unknown.stdout == ""
    before = cli(database_url, "show", "identity", "idt-s", "--as-of", rfc(T0 - timedelta(1)))
    assert before.returncode == 1 and len(before.stderr.strip().splitlines()) == 1

    bad = cli(database_url, "show", "identity", "idt-s", "--known-at", "2026-01-07T14:00:00")
    assert bad.returncode == 2
    assert "--known-at" in bad.stderr and "Traceback" not in bad.stderr
