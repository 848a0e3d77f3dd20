"""A real server killed with SIGKILL five times while Paxos-style deliveries stream in:
nothing acknowledged is lost, nothing is stored or applied twice, everything is fetched."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

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

EVENTS = 600
RATE = 40  # deliveries per second: the stream lasts about 15 s, retries included
KILLS = 5


@pytest.mark.slow
async def test_sigkill_during_a_stream_loses_nothing_and_duplicates_nothing(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    seed = secrets.randbits(16)
    print(f"crash test seed: {seed}")  # replay a failure with this seed
    rng = random.Random(seed)  # noqa: S311 - test dice
    paxos_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        database_url, paxos_port, PORT=str(port), PAXOS_API_RPS="200", FETCH_LEASE_S="15"
    )
    simulator = simulator_args(paxos_port, EVENTS, seed, "--rate", "1000")
    with running(simulator, env, tmp_path / "simulator.log"):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{paxos_port}/_simulator/stats")
        server = start(["serve"], env, tmp_path / "server.log")
        sender = None
        restarts: list[float] = []
        try:
            await asyncio.to_thread(wait_ready, base)
            sender = start(
                sender_args(
                    f"{base}/webhooks/paxos",
                    EVENTS,
                    seed,
                    "--rate",
                    str(RATE),
                    "--duplicates",
                    "0.2",
                    "--shuffle",
                ),
                env,
                tmp_path / "sender.log",
                output=tmp_path / "report.json",
            )
            for _ in range(KILLS):
                # A random moment of the stream, in any phase of a request or a fetch.
                await asyncio.sleep(rng.uniform(0.3, 2.5))
                assert sender.poll() is None, "the stream ended before all the kills"
                stop(server, signal.SIGKILL)
                killed = time.monotonic()
                server = start(["serve"], env, tmp_path / "server.log")
                await asyncio.to_thread(wait_ready, base)
                restarts.append(time.monotonic() - killed)
            assert await asyncio.to_thread(sender.wait, 120) == 0, "the sender gave up on some"
            streamed = time.monotonic()
            await wait_settled(engine, timeout=60)
            print(
                "restarts took " + ", ".join(f"{t:.1f}" for t in restarts) + " s; all fetched "
                f"and projected {time.monotonic() - streamed:.1f} s after the stream ended"
            )
        finally:
            stop(server)
            if sender is not None:
                stop(sender)
    report = json.loads((tmp_path / "report.json").read_text())
    # The sender saw the kills: attempts without an answer, retried until they got a 2xx.
    assert report["statuses"].get("no answer", 0) > 0
    assert report["given_up"] == []
    sent = universe_ids(EVENTS, seed)
    await assert_each_stored_once_and_fetched(engine, sent, report["delivered"])
    await assert_projections_equal_rebuild(engine)
    assert "Traceback" not in (tmp_path / "server.log").read_text()
