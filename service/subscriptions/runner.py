"""The delivery loop of a process (`serve` and `worker`): one pump per subscription.

A pump fills its subscription's outbox from the journal, claims the heads of due keys (leases,
so any number of processes share the work and each key goes one at a time), sends each claimed
event on its own task, and has the outcomes written group-committed. It wakes when the fetcher
stores an event (NOTIFY), when an outcome is written (the key's next event may go), when an
admin route changes a subscription, and on a short poll (retries come due, the horizon moves).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS, Outage, is_store_outage
from service.db.runtime import stop_tasks
from service.store.feed import Horizon, sample
from service.store.subscriptions import (
    Claim,
    Endpoint,
    Result,
    claim,
    fill,
    lags,
    record_outcomes,
    release,
    targets,
)
from service.subscriptions.delivery import TIMEOUT_S, RetryPolicy, decide, send
from service.telemetry import metrics
from service.web.ssrf import guarded_client

log = structlog.get_logger(__name__)

POLL_S = 0.25  # how often a pump looks for due retries and new journal rows unprompted
# While the horizon waits on journal writers still running, look again this soon (their
# transactions are short: a batch of the intake or of the fetcher).
SETTLE_S = 0.005
REFRESH_S = 1.0  # how often the process looks for new, changed or deleted subscriptions
LAG_EVERY_S = 2.0  # how often the lag gauges are refreshed
# A claim's lease: longer than an attempt (TIMEOUT_S) and the write of its outcome. A process
# that dies holds its events this long; then another process delivers them again.
LEASE_S = 30.0
FILL_BATCH = 1000  # journal rows read per fill statement
WINDOW = 2000  # undelivered rows an outbox may hold before its cursor waits
# Heads leased ahead, beyond the requests open, as a share of max_in_flight: a slot that frees
# starts its next POST from them at once instead of waiting for a claim round. (Only while
# this process holds every lease of the subscription: see `claim`.) Each waits at most one
# request of its own process (<= TIMEOUT_S) before it is sent, well within LEASE_S.
AHEAD_SHARE = 1.0


class Deliveries:
    """Every subscription's pump in this process, and the HTTP client they share."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        allow_private: bool = False,
        policy: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        lease_s: float = LEASE_S,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._allow_private = allow_private
        self._policy = policy or RetryPolicy()
        self._client = client
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        # Set by the NOTIFY listener: full events joined the journal / subscriptions changed.
        self.wakeup = asyncio.Event()
        self.changed = asyncio.Event()
        self._pumps: dict[int, _Pump] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # pumps of deleted subscriptions

    async def run(self) -> None:
        """Deliver until cancelled."""
        own_client = self._client is None
        client = self._client or guarded_client(
            allow_private=self._allow_private, max_connections=256, timeout_s=self._timeout_s
        )
        fan_out = asyncio.create_task(self._fan_out(), name="subscriptions-wakeups")
        outage = Outage("subscriptions", first_s=0.4, cap_s=2.0)
        lag_due = 0.0
        try:
            while True:
                try:
                    async with self._engine.connect() as conn:
                        found = await targets(conn)
                        if time.monotonic() >= lag_due:
                            for lag in await lags(conn):
                                metrics.SUBSCRIPTION_LAG_EVENTS.labels(lag.name).set(lag.events)
                            lag_due = time.monotonic() + LAG_EVERY_S
                    outage.succeeded()
                except STORE_ERRORS as exc:
                    await asyncio.sleep(outage.failed(exc))
                    continue
                self._sync({t.subscription_id: t.name for t in found}, client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), REFRESH_S)
                if self.changed.is_set():
                    self.changed.clear()
                    for pump in self._pumps.values():
                        pump.poke()
        finally:
            fan_out.cancel()
            for pump in self._pumps.values():
                await pump.stop()
            self._pumps.clear()
            await stop_tasks([fan_out])
            if own_client:
                await client.aclose()

    def _sync(self, wanted: dict[int, str], client: httpx.AsyncClient) -> None:
        for subscription_id in set(self._pumps) - set(wanted):
            pump = self._pumps.pop(subscription_id)
            task = asyncio.get_running_loop().create_task(pump.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            with contextlib.suppress(KeyError):
                metrics.SUBSCRIPTION_LAG_EVENTS.remove(pump.name)
        for subscription_id, name in wanted.items():
            if subscription_id not in self._pumps:
                pump = _Pump(self, subscription_id, name, client)
                self._pumps[subscription_id] = pump
                pump.start()

    async def _fan_out(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            for pump in self._pumps.values():
                pump.poke()


class _Pump:
    """One subscription's loops in this process: the filler (journal -> outbox, on the feed's
    horizon) and the claimer (outbox -> deliveries in flight). Apart, so that a claim never
    waits behind a fill: the claimer runs as soon as an outcome frees a slot."""

    def __init__(
        self, owner: Deliveries, subscription_id: int, name: str, client: httpx.AsyncClient
    ) -> None:
        self._owner = owner
        self.subscription_id = subscription_id
        self.name = name
        self._client = client
        self._fill_wanted = asyncio.Event()
        self._claim_wanted = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._ready: collections.deque[Claim] = collections.deque()  # leased ahead, not sent
        self._endpoint: Endpoint | None = None  # as the last claim read it
        self._held = 0  # leases this pump holds: in flight, ready, outcomes not written
        self._results: list[Result] = []  # outcomes not written yet (their leases hold)
        self._tasks: list[asyncio.Task[None]] = []
        self._max_in_flight = 16  # the subscription's, as the last claim read it
        self._horizon = Horizon()  # the feed's, as this pump has sampled it

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._supervised("fill", self._fill_loop), name=f"subscription-fill-{self.name}"
            ),
            asyncio.create_task(
                self._supervised("claim", self._claim_loop),
                name=f"subscription-claim-{self.name}",
            ),
        ]

    def poke(self) -> None:
        """New journal rows, or a changed subscription: look at both."""
        self._fill_wanted.set()
        self._claim_wanted.set()

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._endpoint = None  # a slot that frees now sends nothing more
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        ready = list(self._ready)
        self._ready.clear()
        if self._results or ready:  # what was delivered, so that it is not delivered again
            with contextlib.suppress(*STORE_ERRORS):
                async with self._owner._engine.begin() as conn:
                    if self._results:
                        await record_outcomes(conn, self._results)
                    if ready:  # and what was leased ahead, due again for whoever claims
                        await release(conn, ready)
                self._results = []

    async def _supervised(self, what: str, loop: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    f"subscription {what} loop failed; restarting", subscription=self.name
                )
                await asyncio.sleep(1.0)

    async def _fill_loop(self) -> None:
        owner = self._owner
        outage = Outage(f"subscription {self.name} (fill)", first_s=0.4, cap_s=2.0)
        settle_s = SETTLE_S
        reached = 0  # the horizon at the last look
        while True:
            self._fill_wanted.clear()
            try:
                async with owner._engine.connect() as conn:
                    through = self._horizon.observe(await sample(conn))
                async with owner._engine.begin() as conn:
                    filled = await fill(
                        conn, self.subscription_id, through, limit=FILL_BATCH, window=WINDOW
                    )
                outage.succeeded()
            except STORE_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            if filled is not None and filled.added:
                self._claim_wanted.set()
            if filled is not None and filled.read >= FILL_BATCH or self._fill_wanted.is_set():
                continue
            if not self._horizon.settled:
                # Rows past the horizon are being written: look again in a moment (sooner
                # while that works, backing off to the poll behind a long writer).
                wait_s = settle_s
                settle_s = SETTLE_S if through > reached else min(owner._poll_s, settle_s * 2)
            else:
                wait_s = owner._poll_s
                settle_s = SETTLE_S
            reached = through
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fill_wanted.wait(), wait_s)

    async def _claim_loop(self) -> None:
        owner = self._owner
        outage = Outage(f"subscription {self.name} (claim)", first_s=0.4, cap_s=2.0)
        while True:
            self._claim_wanted.clear()
            ahead = int(self._max_in_flight * AHEAD_SHARE)
            free = self._max_in_flight + ahead - len(self._inflight) - len(self._ready)
            results = self._results[:]
            try:
                # The outcomes that came in and the claims of the slots they free (and of the
                # heads leased ahead), in one transaction.
                async with owner._engine.begin() as conn:
                    if results:
                        await record_outcomes(conn, results)
                    endpoint, claims = await claim(
                        conn,
                        self.subscription_id,
                        max(0, free),
                        owner._lease_s,
                        ahead=ahead,
                        own=self._held - len(results),
                    )
                    if endpoint is None and self._ready:  # paused or gone: give them back
                        await release(conn, list(self._ready))
                        self._held -= len(self._ready)
                        self._ready.clear()
                del self._results[: len(results)]
                self._held -= len(results)
                outage.succeeded()
            except STORE_ERRORS as exc:
                if results and not is_store_outage(exc):
                    # Not the database's absence: a statement the store refused. Drop these
                    # outcomes rather than refuse them for ever; their leases run out and
                    # the events are delivered again.
                    log.error("push outcomes not stored", subscription=self.name, error=str(exc))
                    del self._results[: len(results)]
                    self._held -= len(results)
                await asyncio.sleep(outage.failed(exc))
                continue
            self._endpoint = endpoint
            if endpoint is not None:
                self._max_in_flight = endpoint.max_in_flight
                self._held += len(claims)
                self._ready.extend(claims)
                self._start_ready()
                if claims and len(claims) < free:
                    self._fill_wanted.set()  # the outbox ran short of heads: room to fill
            if self._claim_wanted.is_set():
                continue
            # Retries come due with time: the poll finds them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_wanted.wait(), owner._poll_s)

    def _start_ready(self) -> None:
        """Send heads leased ahead while fewer than `max_in_flight` requests are open."""
        endpoint = self._endpoint
        while endpoint is not None and self._ready and len(self._inflight) < self._max_in_flight:
            item = self._ready.popleft()
            task = asyncio.create_task(self._deliver(endpoint, item))
            self._inflight.add(task)
            task.add_done_callback(self._delivered)

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            self._start_ready()  # the freed slot takes a head leased ahead at once

    async def _deliver(self, endpoint: Endpoint, item: Claim) -> None:
        owner = self._owner
        started = time.perf_counter()
        attempt = await send(self._client, endpoint, item, timeout_s=owner._timeout_s)
        metrics.SUBSCRIPTION_DELIVERY_SECONDS.labels(self.name).observe(
            time.perf_counter() - started
        )
        metrics.SUBSCRIPTION_DELIVERIES.labels(self.name, attempt.outcome).inc()
        result = decide(item, attempt, owner._policy, datetime.now(UTC), owner._rng)
        if attempt.outcome != "delivered":
            log.info(
                "push delivery failed",
                subscription=self.name,
                event_id=str(item.event.id),
                outcome=attempt.outcome,
                error=attempt.error,
                retry_in_s=round(result.retry_in_s, 1),
                failing=result.give_up,
            )
        # Written by the claim loop with the next claims; until then the lease holds the row.
        self._results.append(result)
        self._claim_wanted.set()  # a slot is free, and the key's next event may go now
