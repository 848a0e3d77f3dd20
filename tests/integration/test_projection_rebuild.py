"""Rebuilds: readers never see a missing or half-built identity, what lands meanwhile is
reflected, a killed rebuild resumes where it stopped (while staging or while folding), and a
rebuild gives every projection the very rows the runner gives it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

import service.projections.rebuild as rebuild_module
from service.projections.rebuild import Progress, rebuild
from service.projections.runner import Projector
from service.settings import Settings
from service.store.projections.fold import fold_statement
from service.store.projections.rebuild import facts_name, shadow_name
from service.store.projections.registry import IDENTITIES, PROJECTIONS
from tests.support.fetching import Paxos, deliver, new_fetcher, settle
from tests.support.projections import universe_folds, view_of_state
from tests.support.tokens import read_headers


async def test_a_rebuild_is_invisible_to_readers_and_keeps_what_lands_meanwhile(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    events = paxos.universe.events
    early, late = events[: len(events) // 2], events[len(events) // 2 :]
    await deliver(client, [e.notification() for e in early])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    projector = Projector(engine)
    await projector.catch_up()
    async with engine.connect() as conn:
        before = {
            r.identity_id: r.events_count
            for r in await conn.execute(text("SELECT identity_id, events_count FROM identities"))
        }
    assert before
    stop = asyncio.Event()
    answers: list[tuple[int, dict[str, Any]]] = []

    async def poll() -> None:
        while not stop.is_set():
            for identity_id, count in before.items():
                response = await client.get(f"/identities/{identity_id}", headers=read_headers())
                body = response.json()
                answers.append((response.status_code, body))
                # Never missing, never half-built: at least what it had before the rebuild.
                assert response.status_code == 200
                assert body["events_count"] >= count
            await asyncio.sleep(0)

    async def land_more(progress: Progress) -> None:
        if progress.phase == "building" and progress.done and late:
            batch = [late.pop() for _ in range(min(5, len(late)))]
            await deliver(client, [e.notification() for e in batch])
            await settle(engine, new_fetcher(engine, fetch_settings, paxos))
            await projector.catch_up()
        await asyncio.sleep(0.01)

    reader = asyncio.create_task(poll())
    await rebuild(engine, IDENTITIES, batch=3, progress=land_more)
    stop.set()
    await reader
    assert len(answers) > len(before)
    # What is left lands after the rebuild; everything is reflected once caught up.
    await deliver(client, [e.notification() for e in late])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    await projector.catch_up()
    identities, _, _ = universe_folds(paxos)
    for identity_id, state in identities.items():
        body = (await client.get(f"/identities/{identity_id}", headers=read_headers())).json()
        body.pop("updated_at")
        assert body == view_of_state(state)
    async with engine.connect() as conn:
        names = {r[0] for r in await conn.execute(text("SELECT name FROM projection_checkpoints"))}
        shadows = await conn.scalar(text("SELECT to_regclass('identities_rebuild')"))
        indexes = {
            r[0]
            for r in await conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'identities'")
            )
        }
    assert "identities@rebuild" not in names and shadows is None
    assert indexes == {"pk_identities", "ix_identities_summary_status_identity_id"}


async def _all_projected(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> int:
    """Deliver, fetch and project every event of the universe; the journal's event rows."""
    await deliver(client, [e.notification() for e in paxos.universe.events])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    await Projector(engine).catch_up()
    async with engine.connect() as conn:
        return int(
            await conn.scalar(text("SELECT count(*) FROM journal WHERE kind = 'event'")) or 0
        )


class Killed(Exception):
    pass


async def test_a_killed_rebuild_resumes_where_it_stopped(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    total = await _all_projected(client, engine, fetch_settings, paxos)

    async def die_halfway(progress: Progress) -> None:
        if progress.done >= total // 2:
            raise Killed

    with pytest.raises(Killed):
        await rebuild(engine, IDENTITIES, batch=4, progress=die_halfway)
    seen: list[Progress] = []

    async def record(progress: Progress) -> None:
        seen.append(progress)

    final = await rebuild(engine, IDENTITIES, batch=4, progress=record)
    assert seen[0].resumed_from >= total // 2
    assert final.phase == "done" and final.done == total
    identities, _, _ = universe_folds(paxos)
    for identity_id, state in identities.items():
        body = (await client.get(f"/identities/{identity_id}", headers=read_headers())).json()
        body.pop("updated_at")
        assert body == view_of_state(state)


async def _tables(engine: AsyncEngine, tables: tuple[str, ...]) -> dict[str, list[Any]]:
    """Every row of `tables` (but its updated_at), in key order."""
    out: dict[str, list[Any]] = {}
    async with engine.connect() as conn:
        for table in tables:
            rows = (await conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))).mappings()
            out[table] = [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]
    return out


async def test_a_rebuild_of_every_projection_equals_what_the_runner_built(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    fetch_settings: Settings,
    paxos: Paxos,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rebuild stages in chunks and folds part after part of the subjects, on several
    connections; the runner applies batch after batch. Same rows either way."""
    # Parts of about 10 events: many more parts than connections.
    monkeypatch.setattr(rebuild_module, "FOLD_EVENTS", 10)
    await deliver(client, [e.notification() for e in paxos.universe.events])
    await settle(engine, new_fetcher(engine, fetch_settings, paxos))
    await Projector(engine, batch_size=7).catch_up()
    for projection in PROJECTIONS.values():
        built = await _tables(engine, projection.tables)
        assert all(built.values())
        phases: list[str] = []
        parts: list[int] = []

        async def record(
            progress: Progress, phases: list[str] = phases, parts: list[int] = parts
        ) -> None:
            phases.append(progress.phase)
            if progress.phase == "folding" and not parts:
                async with engine.connect() as conn:
                    parts.append(
                        await conn.scalar(
                            text(
                                "SELECT count(*) FROM pg_inherits "
                                "WHERE inhparent = CAST(:t AS regclass)"
                            ),
                            {"t": facts_name(PROJECTIONS[progress.projection])},
                        )
                    )

        final = await rebuild(engine, projection, batch=5, progress=record)
        assert await _tables(engine, projection.tables) == built
        assert phases[0] == "building" and "folding" in phases and phases[-1] == "done"
        assert parts[0] > 2
        assert final.done == final.total


async def test_a_rebuild_killed_while_folding_folds_again(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    total = await _all_projected(client, engine, fetch_settings, paxos)
    built = await _tables(engine, IDENTITIES.tables)

    async def die_when_folding(progress: Progress) -> None:
        if progress.phase == "folding":
            # Half a fold, as a crash would leave it: one part in the shadow, committed.
            async with engine.begin() as conn:
                await conn.execute(
                    fold_statement(
                        IDENTITIES.name,
                        {t: shadow_name(t) for t in IDENTITIES.tables},
                        facts_name(IDENTITIES) + "_0",
                    )
                )
            raise Killed

    with pytest.raises(Killed):
        await rebuild(engine, IDENTITIES, batch=4, progress=die_when_folding)
    seen: list[Progress] = []

    async def record(progress: Progress) -> None:
        seen.append(progress)

    final = await rebuild(engine, IDENTITIES, batch=4, progress=record)
    # Everything was staged: the resumed rebuild only folds (again) and swaps.
    assert seen[0].resumed_from == total
    assert final.phase == "done" and final.done == total
    assert await _tables(engine, IDENTITIES.tables) == built


async def test_a_journal_rewritten_while_staging_is_staged_again(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_settings: Settings, paxos: Paxos
) -> None:
    """Chunks are ranges of the journal's heap blocks: a rewrite (here CLUSTER, which puts
    every row in another place) makes the blocks staged so far mean other rows, so the
    staging starts again from a new plan."""
    total = await _all_projected(client, engine, fetch_settings, paxos)
    built = await _tables(engine, IDENTITIES.tables)
    async with engine.connect() as conn:
        before = {
            r.position: r.ctid
            for r in await conn.execute(text("SELECT position, ctid FROM journal"))
        }
    seen: list[Progress] = []

    async def rewrite_once(progress: Progress) -> None:
        seen.append(progress)
        if progress.phase == "building" and 0 < progress.done < total and not rewritten:
            rewritten.append(len(seen))
            async with engine.begin() as conn:
                await conn.execute(text("CLUSTER journal USING uq_journal_event_id_kind"))

    rewritten: list[int] = []

    with capture_logs() as logs:
        final = await rebuild(engine, IDENTITIES, batch=4, progress=rewrite_once)
    async with engine.connect() as conn:
        after = {
            r.position: r.ctid
            for r in await conn.execute(text("SELECT position, ctid FROM journal"))
        }
    moved = sum(before[p] != after[p] for p in before)
    assert moved > len(before) // 2
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "the journal was rewritten during the rebuild; staging it again"
    ]
    # The staging went back to nothing, then read every row once.
    assert any(p.done == 0 for p in seen[rewritten[0] :]) and final.done == total
    assert await _tables(engine, IDENTITIES.tables) == built
