"""The background parts of a process (fetcher, reconciler, job runner, NOTIFY listener),
started and stopped as one.

`serve` runs them beside the HTTP service unless `--no-background`; `worker` runs only them.
Any number of processes may run them at once: all coordination goes through Postgres.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.seals import Sealer
from service.db.notify import FETCHED_CHANNEL, PENDING_CHANNEL, listen
from service.fetching.fetcher import Fetcher, RetryPolicy
from service.jobs.runner import JOBS_CHANNEL, Handler, JobRunner
from service.paxos.client import PaxosClient, TokenProvider
from service.paxos.ratelimit import RateLimiter
from service.projections.jobs import rebuild_job
from service.projections.runner import Projector
from service.reconciling.reconciler import Reconciler, backfill_job
from service.settings import Settings

log = structlog.get_logger(__name__)


def build_paxos_client(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient
) -> PaxosClient:
    """The Paxos client, with the deployment-wide limits on API calls and token requests."""
    tokens = TokenProvider(
        http=http,
        token_url=settings.paxos_token_url,
        client_id=settings.paxos_client_id or "",
        client_secret=settings.paxos_client_secret or "",
        scope=settings.paxos_scope,
        # Paxos allows one token request per second; the whole deployment shares it. 0.9/s
        # leaves 100 ms for a request that leaves one process late to still arrive more than
        # a second after another's (tokens are needed about once an hour: it costs nothing).
        limiter=RateLimiter(engine, "paxos_token", 0.9),
    )
    limiter = RateLimiter(engine, "paxos_api", settings.paxos_api_rps)
    timeout = httpx.Timeout(settings.paxos_timeout_s, connect=min(5.0, settings.paxos_timeout_s))
    return PaxosClient(
        http,
        settings.paxos_api_url,
        tokens,
        limiter,
        timeout=timeout,
        connections=settings.paxos_max_connections,
    )


@dataclass
class Background:
    client: PaxosClient
    fetcher: Fetcher
    jobs: JobRunner
    projector: Projector


def job_handlers(
    settings: Settings, engine: AsyncEngine, client: PaxosClient
) -> dict[str, Handler]:
    """What each kind of job does. One place, so every process runs every kind."""
    return {"backfill": backfill_job(engine, client), "rebuild": rebuild_job(engine)}


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run` until cancelled, restarting it (after a pause) if it ever fails."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed; restarting", task=name)
            await asyncio.sleep(1.0)


@asynccontextmanager
async def running_background(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient
) -> AsyncIterator[Background]:
    """Start the background parts; stop them (finishing their writes) on exit."""
    if not settings.database_url:
        raise ValueError("the background parts need settings.database_url (for LISTEN)")
    client = build_paxos_client(settings, engine, http)
    fetcher = Fetcher(
        engine,
        client,
        policy=RetryPolicy(
            horizon_s=settings.fetch_retry_horizon_s, cap_s=settings.fetch_retry_max_delay_s
        ),
        lease_s=settings.fetch_lease_s,
    )
    jobs = JobRunner(engine, job_handlers(settings, engine, client))
    projector = Projector(engine)
    # One LISTEN connection per process wakes each part when its kind of work arrives.
    wakeups = {
        PENDING_CHANNEL: [fetcher.wakeup],
        JOBS_CHANNEL: [jobs.wakeup],
        FETCHED_CHANNEL: [projector.wakeup],
    }
    database_url = settings.database_url
    reconciler = Reconciler(
        engine,
        client,
        interval_s=settings.reconcile_interval_s,
        lookback_s=settings.reconcile_lookback_s,
        include_test=settings.reconcile_include_test,
    )
    # The audit trail's sealer: one at a time across processes (an advisory lock).
    sealer = Sealer(engine, interval_s=settings.seal_interval_s)
    tasks = [
        asyncio.create_task(supervise("fetcher", fetcher.run), name="fetcher"),
        asyncio.create_task(supervise("reconciler", reconciler.run), name="reconciler"),
        asyncio.create_task(supervise("jobs", jobs.run), name="jobs"),
        asyncio.create_task(supervise("projector", projector.run), name="projector"),
        asyncio.create_task(supervise("sealer", sealer.run), name="sealer"),
        asyncio.create_task(
            supervise("listener", lambda: listen(database_url, wakeups)), name="notify-listener"
        ),
    ]
    try:
        yield Background(client, fetcher, jobs, projector)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
