"""`paxos-events prune` as a process: old test events go, and the chain still verifies."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.seals import seal_pending
from tests.support.audit import RECENT, T0, add_events, count, prune_by_hand, tamper
from tests.support.processes import cli


@pytest.mark.slow
async def test_the_prune_command(engine: AsyncEngine, database_url: str) -> None:
    await add_events(engine, 2, is_test=True, time=T0)
    await add_events(engine, 1, is_test=True, time=RECENT)
    await seal_pending(engine)
    done = cli(database_url, "prune", "--test-events-older-than", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pruned 2 test events (4 journal rows) with event time before")
    assert done.stdout.rstrip().endswith("prune records: 1")
    assert await count(engine, "SELECT count(*) FROM events") == 1
    bad = cli(database_url, "prune", "--test-events-older-than", "-1")
    assert bad.returncode == 2
    assert cli(database_url, "verify").returncode == 0


@pytest.mark.slow
async def test_the_reported_attack_removes_nothing_and_verify_names_a_forced_prune(
    engine: AsyncEngine, database_url: str
) -> None:
    """Issue 15, item 3, as reproduced: a real, sealed event flagged as a test event, then
    `prune --test-events-older-than 0`, then `verify`."""
    await add_events(engine, 1)
    await seal_pending(engine)
    with pytest.raises(DBAPIError, match="is_test never changes"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE events SET is_test = true"))
    await tamper(engine, "UPDATE events SET is_test = true")  # a superuser, triggers off

    done = cli(database_url, "prune", "--test-events-older-than", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pruned 0 test events (0 journal rows)")
    assert "1 older events notified as test events kept" in done.stderr
    assert await count(engine, "SELECT count(*) FROM journal") == 2
    assert cli(database_url, "verify").returncode == 0

    await prune_by_hand(engine)  # what the prune did before, forced through by a superuser
    broken = cli(database_url, "verify")
    assert broken.returncode == 1
    assert broken.stdout.splitlines()[0].startswith("unconfirmed_prune position 1: row 1 ")
