"""`paxos-events prune` as a process: old test events go, and the chain still verifies."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.seals import seal_pending
from tests.support.audit import RECENT, T0, add_events, count
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
