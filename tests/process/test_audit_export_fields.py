"""`verify-export` (the command and the standalone script) holds each exported event's own
fields against the sealed journal rows it carries: an export whose `type`, `time`, `source`,
`is_test` or `confirmed_is_test` was edited while the sealed bodies were left alone fails,
naming the line. An untouched export of events that came by webhook (times with nanoseconds
and offsets, `is_test` absent) and by List Events (a late webhook with another time and a
wrong `is_test` adding its notification row) passes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.offline import verify_export
from service.domain.signing import Signer, public_pem
from service.store.audit.export import ExportQuery, export
from service.store.audit.seals import seal_pending
from service.store.listed import Listed, record_listed
from tests.support.audit import WINDOW
from tests.support.factories import notification
from tests.support.fetching import deliver
from tests.support.paths import ROOT
from tests.support.processes import clean_env

SCRIPT = ROOT / "docs" / "verify_export.py"


def _listed(event_id: uuid.UUID, created_at: str, *, is_test: bool) -> Listed:
    raw = json.dumps(
        {"id": str(event_id), "type": "identity.approved", "created_at": created_at},
        separators=(",", ":"),
    )
    return Listed(
        event_id=event_id,
        type="identity.approved",
        created_at=datetime.fromisoformat(created_at),
        is_test=is_test,
        raw=raw,
        identity_id=None,
        object_type=None,
        undelivered_webhooks=None,
        object_id=None,
    )


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI and script
        [sys.executable, *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
async def test_edited_event_fields_are_found_and_their_line_named(
    engine: AsyncEngine, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    signer = Signer.generate()
    # By webhook, through the real intake: nanoseconds and an offset; no is_test at all.
    webhooks = [
        notification(type="identity.denied", time="2026-01-07T15:30:02.123456789+01:00"),
        notification(time="2026-01-07T14:30:03Z", is_test=None),
        notification(time="2026-01-07T14:30:04.5Z", is_test=True),
    ]
    await deliver(client, webhooks)
    # By List Events: a real one whose webhook comes later (another time, a false is_test),
    # and a test one (its test_confirmation row).
    late, test = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await record_listed(
            conn,
            [
                _listed(late, "2026-01-07T14:30:05.000001+00:00", is_test=False),
                _listed(test, "2026-01-07T14:30:06+00:00", is_test=True),
            ],
        )
    await deliver(client, [notification(id=late, time="2026-01-07T14:31:00Z", is_test=True)])
    assert await seal_pending(engine, signer=signer)
    query = ExportQuery(
        since=datetime.fromisoformat(WINDOW["since"].replace("Z", "+00:00")),
        until=datetime.fromisoformat(WINDOW["until"].replace("Z", "+00:00")),
    )
    original = b"".join([chunk async for chunk in export(engine, query)]).splitlines(keepends=True)
    records = [json.loads(line) for line in original[:-1]]
    # The late webhook made the listed event `via` webhook; its time stayed the listing's.
    assert [r["via"] for r in records] == ["webhook"] * 4 + ["list_events"]
    assert records[3]["time"] == "2026-01-07T14:30:05.000001Z"
    keys = {signer.key_id: signer.public}
    report = verify_export(original, keys)
    assert report.ok, [str(p) for p in report.problems]
    assert report.rows_checked == 7
    key_file = tmp_path / "keys.pem"
    key_file.write_text(public_pem(signer.public))
    exported = tmp_path / "export.jsonl"
    exported.write_bytes(b"".join(original))
    for args in (
        ["-m", "service", "verify-export", str(exported), "--public-key", str(key_file)],
        [str(SCRIPT), str(exported), "--public-key", str(key_file)],
    ):
        done = _run(*args)
        assert done.returncode == 0, done.stdout + done.stderr

    # (line index, field, new value): each edit leaves every sealed body as it was.
    edits: list[tuple[int, str, Any]] = [
        (0, "type", "identity.approved"),
        (0, "time", "2026-01-07T14:30:02.123458Z"),  # 1 µs later
        (1, "is_test", True),
        (2, "source", "com.example"),
        (2, "confirmed_is_test", True),  # a test event without Paxos's confirmation
        (3, "time", "2026-01-07T14:32:00Z"),  # neither the listing's nor the webhook's
        (3, "type", "identity.denied"),
        (4, "object", "transfer"),
        (4, "is_test", False),
        (4, "confirmed_is_test", False),
    ]
    for index, field, value in edits:
        edited = dict(records[index], **{field: value})
        lines = list(original)
        lines[index] = json.dumps(edited, separators=(",", ":")).encode() + b"\n"
        report = verify_export(lines, keys)
        assert [(p.kind, p.line) for p in report.problems] == [("changed_field", index + 1)], (
            field,
            [str(p) for p in report.problems],
        )
        assert field in report.problems[0].detail
        exported.write_bytes(b"".join(lines))
        for args in (
            ["-m", "service", "verify-export", str(exported), "--public-key", str(key_file)],
            [str(SCRIPT), str(exported), "--public-key", str(key_file)],
        ):
            done = _run(*args)
            assert done.returncode == 1, (field, args[1], done.stdout, done.stderr)
            assert f"changed_field line {index + 1}" in done.stdout, (field, done.stdout)
