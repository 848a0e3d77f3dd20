"""Verify: each kind of tampering, done through SQL as a superuser with the append-only
triggers off, is found and named with its position or seal; a clean chain verifies ok."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.audit.seals import head
from service.store.audit.verify import VERIFY_LOCK, VerifyReport, last_run, verify
from tests.support.audit import add_events, count, sealed_journal, tamper
from tests.support.tokens import admin_headers, read_headers

THRESHOLD_S = 3600.0


def kinds(report: VerifyReport) -> list[tuple[str, int | None, int | None]]:
    return [(p.kind, p.position, p.seal_id) for p in report.problems]


async def test_a_clean_chain_verifies_ok_and_the_run_is_recorded(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    report = await verify(engine, THRESHOLD_S)
    assert report.ok, report.problems
    assert report.problems == ()
    assert report.rows_checked == 10
    assert report.sealed_through == 11  # the burned position is inside a seal's range
    async with engine.connect() as conn:
        newest = await head(conn)
        run = await last_run(conn)
    assert newest is not None and report.head_hash == newest.hash_hex
    assert run is not None
    assert (run.ok, run.sealed_through, run.rows_checked, run.problem_count) == (True, 11, 10, 0)


async def test_a_changed_body_is_a_changed_row(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await tamper(engine, 'UPDATE journal SET body = \'{"id": "forged"}\' WHERE position = 5')
    report = await verify(engine, THRESHOLD_S)
    assert not report.ok
    assert kinds(report) == [("changed_row", 5, 2)]
    async with engine.connect() as conn:
        run = await last_run(conn)
    assert run is not None and (run.ok, run.problem_count) == (False, 1)


async def test_a_changed_recorded_at_is_a_changed_row(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await tamper(
        engine, "UPDATE journal SET recorded_at = recorded_at - interval '1 day' WHERE position = 2"
    )
    assert kinds(await verify(engine, THRESHOLD_S)) == [("changed_row", 2, 1)]


async def test_a_deleted_row_is_a_deleted_row(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await tamper(engine, "DELETE FROM journal WHERE position = 3")
    assert kinds(await verify(engine, THRESHOLD_S)) == [("deleted_row", 3, 1)]


async def test_a_row_inserted_into_a_gap_is_an_inserted_row(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    # Position 7 was burned: a free slot inside seal 2's range.
    await tamper(
        engine,
        "INSERT INTO journal (position, event_id, kind, body) OVERRIDING SYSTEM VALUE "
        "VALUES (7, gen_random_uuid(), 'notification', '{\"id\": \"backdated\"}')",
    )
    assert kinds(await verify(engine, THRESHOLD_S)) == [("inserted_row", 7, 2)]


async def test_a_row_inserted_below_the_first_seal_is_an_inserted_row(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await tamper(
        engine,
        "INSERT INTO journal (position, event_id, kind, body) OVERRIDING SYSTEM VALUE "
        "VALUES (0, gen_random_uuid(), 'notification', '{}')",
    )
    assert kinds(await verify(engine, THRESHOLD_S)) == [("inserted_row", 0, None)]


async def test_a_changed_prev_hash_is_a_broken_link(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await tamper(engine, "UPDATE seals SET prev_hash = sha256('forged') WHERE seal_id = 2")
    report = await verify(engine, THRESHOLD_S)
    assert kinds(report) == [("broken_link", None, 2)]
    assert "prev_hash" in report.problems[0].detail


async def test_a_rewritten_seal_is_a_broken_link(engine: AsyncEngine) -> None:
    """A forger who rewrites a row and its seal's digest still breaks the seal's own hash."""
    await sealed_journal(engine)
    await tamper(
        engine,
        "UPDATE seals SET rows_digest = overlay(rows_digest placing sha256('x') from 9 for 32) "
        "WHERE seal_id = 1",
    )
    report = await verify(engine, THRESHOLD_S)
    assert ("broken_link", None, 1) in kinds(report)
    assert ("changed_row", 1, 1) in kinds(report)


async def test_a_deleted_seal_is_a_broken_link(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await tamper(engine, "DELETE FROM seals WHERE seal_id = 2")
    report = await verify(engine, THRESHOLD_S)
    assert kinds(report) == [("broken_link", None, 3)]
    assert "seal ids jump from 1 to 3" in report.problems[0].detail


async def test_removed_newest_seals_are_caught_by_the_recorded_head(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    async with engine.connect() as conn:
        recorded = await head(conn)
    assert recorded is not None
    assert (await verify(engine, THRESHOLD_S, expect_head=recorded.hash_hex)).ok
    await tamper(engine, "DELETE FROM seals WHERE seal_id = 3")
    report = await verify(engine, THRESHOLD_S, expect_head=recorded.hash_hex)
    assert kinds(report) == [("broken_link", None, None)]


async def test_an_old_unsealed_backlog_is_reported(engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    await add_events(engine, 1)  # positions 12, 13: not sealed
    assert (await verify(engine, THRESHOLD_S)).ok  # recent: the sealer will get to them
    await tamper(
        engine, "UPDATE journal SET recorded_at = now() - interval '2 hours' WHERE position = 12"
    )
    report = await verify(engine, THRESHOLD_S)
    assert kinds(report) == [("unsealed_backlog", 12, None)]
    assert "2 journal rows are not sealed" in report.problems[0].detail


async def test_get_audit_verify(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await sealed_journal(engine)
    response = await client.get("/audit/verify", headers=read_headers())
    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["sealed_through"], body["rows_checked"], body["problems"]) == (
        True,
        11,
        10,
        [],
    )
    await tamper(engine, "DELETE FROM journal WHERE position = 10")
    await age_runs(engine)  # a recent run would be answered again (see below)
    body = (await client.get("/audit/verify", headers=read_headers())).json()
    assert body["ok"] is False
    assert body.pop("verified_at")
    assert body["problems"] == [
        {
            "kind": "deleted_row",
            "position": 10,
            "seal_id": 3,
            "detail": "row 10, sealed by seal 3, is gone from the journal and was not pruned",
        }
    ]
    assert (await client.get("/audit/verify")).status_code == 401


# --- one verification at a time; a recent one is answered again (issue 15, item 9) ---------


async def runs(engine: AsyncEngine) -> int:
    return await count(engine, "SELECT count(*) FROM audit_verifications")


async def age_runs(engine: AsyncEngine) -> None:
    """Make every recorded run older than a reader is answered with."""
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE audit_verifications SET ran_at = ran_at - interval '1 h'"))


async def test_concurrent_calls_run_one_verification(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await sealed_journal(engine)
    headers = [read_headers(), admin_headers()] * 4
    responses = await asyncio.gather(*(client.get("/audit/verify", headers=h) for h in headers))
    assert [r.status_code for r in responses] == [200] * 8
    bodies = [r.json() for r in responses]
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["ok"] is True and bodies[0]["rows_checked"] == 10
    assert await runs(engine) == 1


async def test_a_recent_run_is_answered_again_and_an_older_one_is_run_anew(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await sealed_journal(engine)
    first = (await client.get("/audit/verify", headers=read_headers())).json()
    await tamper(engine, "DELETE FROM journal WHERE position = 10")
    again = (await client.get("/audit/verify", headers=read_headers())).json()
    assert again == first  # recorded under a minute ago: no new run
    assert await runs(engine) == 1
    await age_runs(engine)
    fresh = (await client.get("/audit/verify", headers=read_headers())).json()
    assert fresh["ok"] is False and fresh["verified_at"] > first["verified_at"]
    assert await runs(engine) == 2


async def test_a_run_elsewhere_is_waited_for_and_its_result_answered(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Another process verifying holds the deployment's lock: a caller waits for it, then
    answers the run it recorded instead of running its own."""
    await sealed_journal(engine)
    async with engine.connect() as other:
        await other.begin()
        await other.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": VERIFY_LOCK})
        call = asyncio.create_task(client.get("/audit/verify", headers=read_headers()))
        await asyncio.sleep(0.5)
        assert not call.done()
        await other.execute(
            text(
                "INSERT INTO audit_verifications "
                "(ok, sealed_through, rows_checked, problems, head_hash) "
                "VALUES (true, 11, 10, '[]', 'ab12')"
            )
        )
        await other.commit()
        response = await asyncio.wait_for(call, 10)
    assert response.status_code == 200
    body = response.json()
    assert body.pop("verified_at")
    assert body == {
        "ok": True,
        "sealed_through": 11,
        "rows_checked": 10,
        "head_hash": "ab12",
        "problems": [],
    }
    assert await runs(engine) == 1
