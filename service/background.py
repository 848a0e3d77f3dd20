"""The background parts of a process (fetcher, reconciler, job runner, NOTIFY listener),
started and stopped as one.

`serve` runs them beside the HTTP service unless `--no-background`; `worker` runs only them.
Any number of processes may run them at once: all coordination goes through Postgres.
Without Paxos credentials (a `serve` that only takes webhooks in) the parts that call Paxos,
the fetcher, the reconciler and backfill jobs, are not started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.anchoring import Anchorer, sinks_of
from service.audit.sealer import Sealer, signer_for
from service.db.notify import FETCHED_CHANNEL, PENDING_CHANNEL, listen
from service.db.runtime import stop_tasks
from service.fetching.fetcher import FETCH_POLL_S, Fetcher, RetryPolicy
from service.jobs.runner import JobRunner
from service.paxos.client import PaxosClient, build_client
from service.projections.jobs import rebuild_job
from service.projections.runner import PROJECTION_POLL_S, Projector
from service.reconciling.reconciler import Reconciler, backfill_job
from service.settings import Settings
from service.store.jobs import JOBS_CHANNEL, Handler
from service.store.subscriptions import SUBSCRIPTIONS_CHANNEL
from service.subscriptions.delivery import RetryPolicy as PushRetryPolicy
from service.subscriptions.runner import Deliveries
from service.ui.sampler import ActivitySampler

log = structlog.get_logger(__name__)


FETCHING_OFF = "fetching is off until PAXOS_CLIENT_ID and PAXOS_CLIENT_SECRET are set"


@dataclass
class Background:
    client: PaxosClient | None  # None: no Paxos credentials, nothing is fetched
    fetcher: Fetcher | None
    jobs: JobRunner
    projector: Projector


def fetching_mode(settings: Settings, *, background: bool) -> str:
    """What `/health/ready` says of fetching in this process: `on` (it runs the fetcher),
    `workers` (`serve --no-background`: left to `worker` processes), or `off` (no Paxos
    credentials: webhooks are stored, nothing is fetched)."""
    if not background:
        return "workers"
    return "on" if settings.has_paxos_credentials else "off"


def job_handlers(
    settings: Settings, engine: AsyncEngine, client: PaxosClient | None
) -> dict[str, Handler]:
    """What each kind of job does. One place, so every process runs every kind it can: a
    process without Paxos credentials leaves backfills queued for one that has them."""
    handlers: dict[str, Handler] = {"rebuild": rebuild_job(engine)}
    if client is not None:
        handlers["backfill"] = backfill_job(engine, client)
    return handlers


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
    settings: Settings,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    *,
    fetch_poll_s: float = FETCH_POLL_S,
    projection_poll_s: float = PROJECTION_POLL_S,
) -> AsyncIterator[Background]:
    """Start the background parts; stop them (finishing their writes) on exit.

    The poll intervals are how often the fetcher and the projector look for work that no
    NOTIFY woke them for (tests lengthen them to show that the wake-ups alone suffice)."""
    if not settings.database_url:
        raise ValueError("the background parts need settings.database_url (for LISTEN)")
    client: PaxosClient | None = None
    fetcher: Fetcher | None = None
    tasks: list[asyncio.Task[None]] = []
    if settings.has_paxos_credentials:
        client = build_client(settings, engine, http)
        fetcher = Fetcher(
            engine,
            client,
            policy=RetryPolicy(
                horizon_s=settings.fetch_retry_horizon_s, cap_s=settings.fetch_retry_max_delay_s
            ),
            lease_s=settings.fetch_lease_s,
            poll_s=fetch_poll_s,
        )
        reconciler = Reconciler(
            engine,
            client,
            interval_s=settings.reconcile_interval_s,
            lookback_s=settings.reconcile_lookback_s,
            include_test=settings.reconcile_include_test,
        )
        tasks += [
            asyncio.create_task(supervise("fetcher", fetcher.run), name="fetcher"),
            asyncio.create_task(supervise("reconciler", reconciler.run), name="reconciler"),
        ]
    else:
        # Webhooks are still taken in and stored (pending); /health/ready says fetching: off.
        log.warning(FETCHING_OFF)
    jobs = JobRunner(engine, job_handlers(settings, engine, client))
    projector = Projector(engine, poll_s=projection_poll_s)
    # Push subscriptions: every process delivers (leases share the work between them).
    deliveries = Deliveries(
        engine,
        allow_private=settings.subscription_allow_private_urls,
        policy=PushRetryPolicy(
            horizon_s=settings.subscription_retry_horizon_s,
            cap_s=settings.subscription_retry_max_delay_s,
        ),
    )
    # One LISTEN connection per process wakes each part when its kind of work arrives.
    wakeups = {
        JOBS_CHANNEL: [jobs.wakeup],
        FETCHED_CHANNEL: [projector.wakeup, deliveries.wakeup],
        SUBSCRIPTIONS_CHANNEL: [deliveries.changed],
    }
    if fetcher is not None:
        wakeups[PENDING_CHANNEL] = [fetcher.wakeup]
    database_url = settings.database_url
    # The audit trail's sealer: one at a time across processes (an advisory lock).
    sealer = Sealer(engine, interval_s=settings.seal_interval_s, signer=signer_for(settings))
    if settings.audit_anchor_url:
        # Anchors of the seal head outside the database: one anchorer at a time (a lock).
        anchorer = Anchorer(
            engine,
            http,
            sinks_of(settings),
            interval_s=settings.audit_anchor_interval_s,
            tsa_url=settings.audit_tsa_url,
            poll_s=min(5.0, settings.audit_anchor_interval_s),
        )
        tasks.append(asyncio.create_task(supervise("anchorer", anchorer.run), name="anchorer"))
    tasks += [
        asyncio.create_task(supervise("jobs", jobs.run), name="jobs"),
        asyncio.create_task(supervise("projector", projector.run), name="projector"),
        asyncio.create_task(supervise("sealer", sealer.run), name="sealer"),
        # The console's activity charts: every process samples (its writes agree).
        asyncio.create_task(
            supervise("activity", ActivitySampler(engine).run), name="activity-sampler"
        ),
        asyncio.create_task(supervise("subscriptions", deliveries.run), name="subscriptions"),
        asyncio.create_task(
            supervise("listener", lambda: listen(database_url, wakeups)), name="notify-listener"
        ),
    ]
    try:
        yield Background(client, fetcher, jobs, projector)
    finally:
        await stop_tasks(tasks)
        if client is not None:
            await client.close()
