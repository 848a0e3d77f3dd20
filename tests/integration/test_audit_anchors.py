"""Anchors outside the database: the seal head written to a file sink, and verify held
against the anchors: an insider who rewrites the chain in SQL, or deletes its tail, passes
the database's own checks and is caught by the anchors."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.anchoring import Anchorer
from service.domain.anchor import anchor_name, decode
from service.settings import Settings
from service.store.audit.anchors import sink_status
from service.store.audit.seals import head, seal_next, seal_pending
from service.store.audit.sinks import FileSink, sink_for
from service.store.audit.verify import VerifyReport, verify
from service.telemetry.metrics import AUDIT_ANCHOR_FAILURES
from tests.support.audit import add_events, burn_position, tamper

THRESHOLD_S = 3600.0


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def kinds(report: VerifyReport) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seal_id) for p in report.problems]


@pytest.fixture
def anchor_dir(tmp_path: Path) -> Path:
    return tmp_path / "anchors"


@pytest.fixture
def anchor_url(anchor_dir: Path) -> str:
    return f"file://{anchor_dir}"


def anchorer(
    engine: AsyncEngine, http: httpx.AsyncClient, url: str, *, interval_s: float = 0
) -> Anchorer:
    return Anchorer(engine, http, [sink_for(url)], interval_s=interval_s)


async def anchored_chain(engine: AsyncEngine, http: httpx.AsyncClient, url: str) -> None:
    """Three seals (positions 1-4, 5-8, 9-11 with a burned position), each anchored when made."""
    await add_events(engine, 3)
    await burn_position(engine)
    await add_events(engine, 2)
    for _ in range(3):
        assert await seal_next(engine, 11, max_rows=4) is not None
        assert await anchorer(engine, http, url).anchor_once() == [url]


async def test_each_new_head_is_anchored_once_as_the_documented_document(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_dir: Path, anchor_url: str
) -> None:
    await anchored_chain(engine, http, anchor_url)
    assert names(anchor_dir) == [anchor_name(i) for i in (1, 2, 3)]
    async with engine.connect() as conn:
        newest = await head(conn)
    assert newest is not None
    data = (anchor_dir / anchor_name(3)).read_bytes()
    doc = json.loads(data)
    assert set(doc) == {
        "format", "seal_id", "first_position", "last_position", "seal_hash", "signature",
        "key_id", "anchored_at", "timestamp_token",
    }  # fmt: skip
    assert (doc["seal_id"], doc["first_position"], doc["last_position"], doc["seal_hash"]) == (
        3, newest.first_position, newest.last_position, newest.hash_hex
    )  # fmt: skip
    assert data.endswith(b"\n") and decode(data).seal_hash == newest.hash_hex
    assert os.stat(anchor_dir / anchor_name(3)).st_mode & 0o222 == 0  # read-only
    # Nothing new: nothing written.
    assert await anchorer(engine, http, anchor_url).anchor_once() == []
    report = await verify(engine, THRESHOLD_S, anchors=[anchor_url])
    assert report.ok, report.problems


async def test_a_new_head_waits_for_the_interval(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_dir: Path, anchor_url: str
) -> None:
    await add_events(engine, 1)
    assert await seal_pending(engine)
    assert await anchorer(engine, http, anchor_url, interval_s=3600).anchor_once() == [anchor_url]
    await add_events(engine, 1)
    assert await seal_pending(engine)
    assert await anchorer(engine, http, anchor_url, interval_s=3600).anchor_once() == []
    assert await anchorer(engine, http, anchor_url, interval_s=0).anchor_once() == [anchor_url]
    assert len(names(anchor_dir)) == 2


async def test_an_existing_anchor_file_is_never_overwritten(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_dir: Path, anchor_url: str
) -> None:
    await add_events(engine, 1)
    assert await seal_pending(engine)
    os.mkdir(anchor_dir)
    squatter = anchor_dir / anchor_name(1)
    forged = b'{"format":"paxos-events-anchor/1","seal_id":1,"first_position":1,' + (
        b'"last_position":2,"seal_hash":"' + b"ab" * 32 + b'","signature":null,"key_id":null,'
        b'"anchored_at":"2026-01-01T00:00:00.000000Z","timestamp_token":null}\n'
    )
    squatter.write_bytes(forged)
    before = AUDIT_ANCHOR_FAILURES.labels(sink=anchor_url)._value.get()
    assert await anchorer(engine, http, anchor_url).anchor_once() == []
    assert squatter.read_bytes() == forged
    assert AUDIT_ANCHOR_FAILURES.labels(sink=anchor_url)._value.get() == before + 1
    async with engine.connect() as conn:
        (status,) = await sink_status(conn, [anchor_url])
    assert status.seal_id is None and status.failures == 1
    assert status.last_error is not None and "exists with seal hash" in status.last_error
    # And verify says the anchor disagrees with the seal.
    assert kinds(await verify(engine, THRESHOLD_S, anchors=[anchor_url])) == [
        ("anchor_mismatch", 1)
    ]


async def _recompute_seals_in_sql(engine: AsyncEngine, from_seal: int) -> None:
    """The insider: every seal from `from_seal` on recomputed in SQL from the documented
    canonical form (docs/audit.md), with the triggers off."""
    async with engine.connect() as conn:
        last = await conn.scalar(text("SELECT max(seal_id) FROM seals"))
    assert last is not None
    for seal_id in range(from_seal, last + 1):
        await tamper(
            engine,
            "UPDATE seals s SET rows_digest = d.digest FROM ("
            "  SELECT string_agg(int8send(j.position) || sha256(convert_to("
            "    j.position::text || E'\\n' || j.event_id::text || E'\\n' || j.kind || E'\\n' "
            "    || to_char(j.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            "    || E'\\n' || j.body::text, 'UTF8')), ''::bytea ORDER BY j.position) AS digest"
            "  FROM journal j, seals x WHERE x.seal_id = :id"
            "  AND j.position BETWEEN x.first_position AND x.last_position) d "
            "WHERE s.seal_id = :id",
            {"id": seal_id},
        )
        await tamper(
            engine,
            "UPDATE seals s SET prev_hash = coalesce("
            "  (SELECT p.hash FROM seals p WHERE p.seal_id = s.seal_id - 1), "
            "  '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) "
            "WHERE s.seal_id = :id",
            {"id": seal_id},
        )
        await tamper(
            engine,
            "UPDATE seals SET hash = sha256(prev_hash || int8send(first_position) "
            "|| int8send(last_position) || rows_digest) WHERE seal_id = :id",
            {"id": seal_id},
        )


async def test_an_insiders_rewrite_passes_the_database_and_fails_the_anchors(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_url: str
) -> None:
    await anchored_chain(engine, http, anchor_url)
    await tamper(engine, 'UPDATE journal SET body = \'{"id": "forged"}\' WHERE position = 6')
    await _recompute_seals_in_sql(engine, 2)
    # Against the database alone, the rewrite is invisible:
    alone = await verify(engine, THRESHOLD_S, anchors=[])
    assert alone.ok, alone.problems
    # The anchors name the first seal that disagrees.
    report = await verify(engine, THRESHOLD_S, anchors=[anchor_url])
    assert not report.ok
    assert kinds(report) == [("anchor_mismatch", 2)]
    assert "seal 2's hash" in report.problems[0].detail
    assert "1 later anchored seal(s) differ too" in report.problems[0].detail


async def test_a_deleted_tail_is_an_anchor_missing(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_url: str
) -> None:
    await anchored_chain(engine, http, anchor_url)
    await tamper(engine, "DELETE FROM seals WHERE seal_id = 3")
    alone = await verify(engine, THRESHOLD_S, anchors=[])
    assert [p.kind for p in alone.problems] in ([], ["unsealed_backlog"])
    report = await verify(engine, THRESHOLD_S, anchors=[anchor_url])
    assert ("anchor_missing", 3) in kinds(report)
    assert "anchor_mismatch" not in [p.kind for p in report.problems]


async def test_a_removed_anchor_file_is_reported(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_dir: Path, anchor_url: str
) -> None:
    await anchored_chain(engine, http, anchor_url)
    (anchor_dir / anchor_name(2)).unlink()
    report = await verify(engine, THRESHOLD_S, anchors=[anchor_url])
    assert kinds(report) == [("anchor_missing", 2)]
    assert anchor_name(2) in report.problems[0].detail


async def test_verify_reads_the_configured_anchors(
    engine: AsyncEngine, http: httpx.AsyncClient, anchor_dir: Path, anchor_url: str
) -> None:
    """With the settings, verify reads AUDIT_ANCHOR_URL's sinks."""
    await anchored_chain(engine, http, anchor_url)
    (anchor_dir / anchor_name(3)).unlink()
    settings = replace(Settings(), audit_anchor_url=(anchor_url,))
    assert kinds(await verify(engine, settings)) == [("anchor_missing", 3)]
    assert (await verify(engine, replace(Settings(), audit_anchor_url=()))).ok


async def test_a_failing_sink_does_not_stop_the_others(
    engine: AsyncEngine, http: httpx.AsyncClient, tmp_path: Path, anchor_url: str
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    bad_url = f"file://{blocked}/anchors"
    await add_events(engine, 1)
    assert await seal_pending(engine)
    both = Anchorer(engine, http, [sink_for(bad_url), sink_for(anchor_url)], interval_s=0)
    assert await both.anchor_once() == [anchor_url]
    async with engine.connect() as conn:
        bad, good = await sink_status(conn, [bad_url, anchor_url])
    assert (bad.seal_id, bad.failures) == (None, 1) and good.seal_id == 1
    assert isinstance(sink_for(anchor_url), FileSink)


async def test_ready_reports_anchoring_and_the_console_shows_each_sink(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient, anchor_url: str
) -> None:
    from service.app import create_app
    from tests.integration.ui.test_pages import browser, sign_in
    from tests.support.asgi import running
    from tests.support.tokens import READ_TOKEN

    off = create_app(settings, engine=engine)
    async with running(off), browser(off) as client:
        assert (await client.get("/health/ready")).json()["anchoring"] == "off"
        await sign_in(client, READ_TOKEN)
        page = await client.get("/ui/pipeline")
        assert "No anchor sink" in page.text

    configured = replace(settings, audit_anchor_url=(anchor_url,), audit_anchor_max_lag_s=60)
    app = create_app(configured, engine=engine)
    await add_events(engine, 1)
    assert await seal_pending(engine)
    async with running(app), browser(app) as client:
        assert (await client.get("/health/ready")).json()["anchoring"] == "ok"  # just sealed
        # The seal has waited longer than AUDIT_ANCHOR_MAX_LAG_S for its anchor: degraded,
        # and still ready.
        await tamper(engine, "UPDATE seals SET sealed_at = now() - interval '2 minutes'")
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["anchoring"] == "degraded"
        assert await anchorer(engine, http, anchor_url).anchor_once() == [anchor_url]
        assert (await client.get("/health/ready")).json()["anchoring"] == "ok"
        await sign_in(client, READ_TOKEN)
        page = await client.get("/ui/pipeline")
        assert page.status_code == 200
        row = re.search(r'<tr class="anchor-sink">.*?</tr>', page.text, re.S)
        assert row is not None and anchor_url in row.group(0)
        assert "seal 1," in row.group(0)
        signature = re.search(r'<dd id="seal-signature">(.*?)</dd>', page.text, re.S)
        assert signature is not None and signature.group(1) == "unsigned"


async def test_get_audit_verify_reads_the_anchors(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient, anchor_url: str
) -> None:
    from service.app import create_app
    from tests.support.asgi import app_client
    from tests.support.tokens import read_headers

    await anchored_chain(engine, http, anchor_url)
    await tamper(engine, "DELETE FROM seals WHERE seal_id = 3")
    app = create_app(replace(settings, audit_anchor_url=(anchor_url,)), engine=engine)
    async for client in app_client(app):
        body = (await client.get("/audit/verify", headers=read_headers())).json()
        assert body["ok"] is False
        assert [(p["kind"], p["seal_id"]) for p in body["problems"]] == [("anchor_missing", 3)]
