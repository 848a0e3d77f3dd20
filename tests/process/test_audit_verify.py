"""`paxos-events verify` as a process: the head, an expected head, and a tampered row."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.seals import head
from tests.support.audit import sealed_journal, tamper
from tests.support.processes import cli


@pytest.mark.slow
async def test_the_verify_command(engine: AsyncEngine, database_url: str) -> None:
    no_seals = cli(database_url, "verify", "--head")
    assert no_seals.returncode == 2
    assert "no seals yet" in no_seals.stderr

    await sealed_journal(engine)
    async with engine.connect() as conn:
        newest = await head(conn)
    assert newest is not None
    shown = cli(database_url, "verify", "--head")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == newest.hash_hex + "\n"

    clean = cli(database_url, "verify", "--expect-head", newest.hash_hex)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("ok: 10 sealed rows checked, sealed through position 11")

    await tamper(engine, "UPDATE journal SET body = '{}' WHERE position = 4")
    broken = cli(database_url, "verify")
    assert broken.returncode == 1
    assert broken.stdout.splitlines()[0] == (
        "changed_row position 4: row 4 does not hash to what seal 1 holds"
    )
    bad = cli(database_url, "verify", "--expect-head", "nothex")
    assert bad.returncode == 2
