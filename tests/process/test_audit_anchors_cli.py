"""`paxos-events verify --anchors URL` as a process: a deleted tail is caught by the anchors;
a bad sink URL is a usage error."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.anchoring import Anchorer
from service.store.audit.seals import seal_pending
from service.store.audit.sinks import sink_for
from tests.support.audit import add_events, tamper
from tests.support.processes import cli


@pytest.mark.slow
async def test_verify_against_anchors(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    url = f"file://{tmp_path}/anchors"
    async with httpx.AsyncClient() as http:
        for _ in range(2):
            await add_events(engine, 1)
            assert await seal_pending(engine)
            assert await Anchorer(engine, http, [sink_for(url)], interval_s=0).anchor_once()
    clean = cli(database_url, "verify", "--anchors", url)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    await tamper(engine, "DELETE FROM seals WHERE seal_id = 2")
    assert cli(database_url, "verify").returncode == 0  # the database alone: a shorter chain
    broken = cli(database_url, "verify", "--anchors", url)
    assert broken.returncode == 1
    assert "anchor_missing seal 2: the chain ends at seal 1" in broken.stdout

    bad = cli(database_url, "verify", "--anchors", "ftp://elsewhere/x")
    assert bad.returncode == 2
    assert "file:///dir or s3://bucket/prefix" in bad.stderr
