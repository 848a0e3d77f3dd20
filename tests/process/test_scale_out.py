"""Two `serve --no-background` and two `worker` processes on one database under one stream:
no loss, no duplicate, one shared rate limit, projections equal to a rebuild."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.tables import events
from tests.support.invariants import (
    assert_each_stored_once_and_fetched,
    assert_projections_equal_rebuild,
    wait_settled,
)
from tests.support.processes import (
    free_port,
    running,
    sender_args,
    service_env,
    simulator_args,
    start,
    stop,
    universe_ids,
    wait_http,
    wait_ready,
)
from tests.support.ratelimit import max_in_any_window

EVENTS = 300
RPS = 20
SEED = 7


@pytest.mark.slow
async def test_two_servers_and_two_workers_share_one_database(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    paxos_port = free_port()
    paxos = f"http://127.0.0.1:{paxos_port}"
    ports = [free_port(), free_port()]
    env = service_env(database_url, paxos_port, PAXOS_API_RPS=str(RPS))
    simulator = simulator_args(paxos_port, EVENTS, SEED, "--rate", "1000")
    with running(simulator, env, tmp_path / "simulator.log"):
        await asyncio.to_thread(wait_http, f"{paxos}/_simulator/stats")
        processes = [
            start(["serve", "--no-background"], env | {"PORT": str(p)}, tmp_path / f"serve-{p}.log")
            for p in ports
        ] + [start(["worker"], env, tmp_path / f"worker-{i}.log") for i in (1, 2)]
        try:
            for p in ports:
                await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{p}")
            # Each server is sent the whole universe, shuffled, some ids twice: every event
            # arrives at both, often at the same moment.
            senders = [
                start(
                    sender_args(
                        f"http://127.0.0.1:{p}/webhooks/paxos",
                        EVENTS,
                        SEED,
                        "--rate",
                        "40",
                        "--duplicates",
                        "0.1",
                        "--shuffle",
                    ),
                    env,
                    tmp_path / f"sender-{p}.log",
                    output=tmp_path / f"report-{p}.json",
                )
                for p in ports
            ]
            for sender in senders:
                assert await asyncio.to_thread(sender.wait, 60) == 0
            await wait_settled(engine, timeout=60)
        finally:
            for process in processes:
                stop(process)
        calls = httpx.get(f"{paxos}/_simulator/calls").json()
    reports = [json.loads((tmp_path / f"report-{p}.json").read_text()) for p in ports]
    acknowledged: Counter[str] = Counter()
    for report in reports:
        acknowledged.update(report["delivered"])
    ids = universe_ids(EVENTS, SEED)
    await assert_each_stored_once_and_fetched(engine, ids, acknowledged)
    async with engine.connect() as conn:
        rows = await conn.execute(select(events.c.event_id, events.c.deliveries))
        deliveries = {str(event_id): count for event_id, count in rows}
    # Every acknowledged delivery was counted once, whichever server took it.
    assert deliveries == dict(acknowledged)
    # One deployment-wide limit, seen from Paxos's side: never above it in any second, and
    # each event fetched once, by one of the two workers.
    gets = [c for c in calls if c["endpoint"] == "get_event"]
    assert max_in_any_window([c["at"] for c in gets]) <= RPS
    assert Counter(c["path"] for c in gets if c["status"] == 200).most_common(1)[0][1] == 1
    assert len({c["path"] for c in gets if c["status"] == 200}) == EVENTS
    await assert_projections_equal_rebuild(engine)
    for name in [f"serve-{p}.log" for p in ports] + ["worker-1.log", "worker-2.log"]:
        assert "Traceback" not in (tmp_path / name).read_text(), name
