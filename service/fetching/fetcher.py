"""The fetcher: turns each stored notification into the full, trusted Paxos event.

It claims due `pending` events (any number of fetchers, in any number of processes, share the
queue through leases), calls Get Event under the deployment's rate limit, and writes each
outcome group-committed: the event stored and marked `fetched`, a retry scheduled, or a final
`failed` / `not_found`. It wakes on NOTIFY from the intake and polls as a fallback. Whether
an event is a test event is Paxos's answer, not the notification's (`_get_event`).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.batching import CommitFailed, GroupWriter
from service.db.notify import FETCHED_CHANNEL, Waker
from service.db.outages import STORE_ERRORS, Outage
from service.domain.paxos_event import Fetched, identity_id_of, object_id_of
from service.paxos.client import (
    PaxosBadRequest,
    PaxosClient,
    PaxosError,
    PaxosForbidden,
    PaxosNotFound,
    PaxosRateLimited,
)
from service.store.fetch_queue import (
    Claim,
    FetchedOutcome,
    FinalOutcome,
    Outcome,
    RetryOutcome,
    claim_due,
    record_outcomes,
)
from service.telemetry import metrics

log = structlog.get_logger(__name__)

FETCH_POLL_S = 1.0  # how often to look for due work when no NOTIFY woke the loop


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed fetch again, and when to stop."""

    # 5xx, timeouts, connection errors: exponential backoff with jitter, unlimited within the
    # horizon (counted from the first delivery), then `failed`.
    horizon_s: float = 7 * 86400.0
    base_s: float = 2.0
    cap_s: float = 900.0
    # 404: Paxos may lag behind its own webhooks; retry over several minutes, then
    # `not_found`. The n-th attempt that answers 404 waits the n-th delay.
    not_found_delays_s: tuple[float, ...] = (10.0, 30.0, 60.0, 120.0, 300.0)

    def backoff_s(self, attempts: int, rng: random.Random) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, attempts - 1))
        return ceiling / 2 + rng.random() * ceiling / 2


def decide(
    claim: Claim, error: PaxosError, policy: RetryPolicy, now: datetime, rng: random.Random
) -> Outcome:
    """The outcome of a failed Get Event: retry when, or give up how. Pure."""
    reason = str(error)
    if isinstance(error, PaxosRateLimited):
        return RetryOutcome(claim.event_id, error.retry_after or 1.0, reason)
    if isinstance(error, (PaxosBadRequest, PaxosForbidden)):
        return FinalOutcome(claim.event_id, "failed", reason)
    if isinstance(error, PaxosNotFound):
        if claim.attempts > len(policy.not_found_delays_s):
            return FinalOutcome(
                claim.event_id, "not_found", f"{reason}; gave up after {claim.attempts} attempts"
            )
        return RetryOutcome(claim.event_id, policy.not_found_delays_s[claim.attempts - 1], reason)
    first = claim.first_received_at or now
    delay = policy.backoff_s(claim.attempts, rng)
    if (now - first).total_seconds() + delay > policy.horizon_s:
        return FinalOutcome(
            claim.event_id,
            "failed",
            f"{reason}; gave up after {claim.attempts} attempts over {policy.horizon_s:g} s",
        )
    return RetryOutcome(claim.event_id, delay, reason)


def check_matches(claim: Claim, fetched: Fetched) -> str | None:
    """Why the fetched event is not the one the notification announced, or None."""
    got = fetched.event
    if got.id.lower() != str(claim.event_id):
        return f"Get Event for {claim.event_id} returned event {got.id!r}; not stored as this event"
    if got.type != claim.type:
        return (
            f"Get Event for {claim.event_id} returned type {got.type!r}, but the "
            f"notification said {claim.type!r}; not stored as this event"
        )
    return None


class Fetcher:
    """One process's fetch loop: up to `concurrency` Get Event calls in flight."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: PaxosClient,
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 32,
        lease_s: float = 60.0,
        poll_s: float = FETCH_POLL_S,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._client = client
        self._policy = policy or RetryPolicy()
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.wakeup = asyncio.Event()
        self._fetched = Waker(engine, FETCHED_CHANNEL)
        self._writer: GroupWriter[Outcome, None] = GroupWriter(
            engine, record_outcomes, name="fetch", writers=1, single_statement=True
        )

    async def run(self) -> None:
        """Fetch until cancelled."""
        self._writer.start()
        self._fetched.start()
        inflight: set[asyncio.Task[None]] = set()
        # Under load, claim in batches of a quarter of the slots rather than one slot at a
        # time: a claim is a round trip and a transaction, and claiming per completed call
        # cost more CPU than the call itself. Idle, the first free slot claims at once, so
        # a lone webhook is fetched without waiting for company.
        batch = max(1, self._concurrency // 4)
        slots = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            if self._concurrency - len(inflight) >= batch or not inflight:
                slots.set()

        # Back within 2 s of the database, without hammering it meanwhile.
        outage = Outage("fetch queue", first_s=0.4, cap_s=2.0)
        drained = False
        try:
            while True:
                free = self._concurrency - len(inflight)
                if free < batch and inflight or drained:
                    # A full claim means more may be due: wait for slots. A short one means
                    # the queue is drained: wait for a NOTIFY or the poll.
                    await self._idle(slots, wait_for_slots=not drained)
                    drained = False
                    continue
                try:
                    claims = await claim_due(self._engine, free, self._lease_s)
                    outage.succeeded()
                except STORE_ERRORS as exc:
                    await asyncio.sleep(outage.failed(exc))
                    continue
                for claim in claims:
                    task = asyncio.create_task(self._fetch(claim))
                    inflight.add(task)
                    task.add_done_callback(finished)
                drained = len(claims) < free
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            await self._writer.stop()
            await self._fetched.stop()

    async def _idle(self, slots: asyncio.Event, *, wait_for_slots: bool) -> None:
        """Wait for freed slots (when asked), a NOTIFY saying events were made due, or the
        poll interval, whichever comes first."""
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.wakeup.wait())}
        if wait_for_slots:
            waiters.add(asyncio.ensure_future(slots.wait()))
        try:
            await asyncio.wait(waiters, timeout=self._poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            self.wakeup.clear()
            slots.clear()

    async def _get_event(self, claim: Claim) -> tuple[Fetched, bool]:
        """The full event, and whether Paxos holds it as a test event.

        The notification is unsigned, so its `is_test` only says which side to ask first: Get
        Event answers a test event only with `is_test=true` and a real one only without. On a
        404 the other side is asked; a 404 there too is the first side's (Paxos may lag)."""
        try:
            fetched = await self._client.get_event(claim.event_id, is_test=claim.is_test)
        except PaxosNotFound as first:
            try:
                other = await self._client.get_event(claim.event_id, is_test=not claim.is_test)
            except PaxosNotFound:
                raise first from None
            return other, not claim.is_test
        return fetched, claim.is_test

    async def _fetch(self, claim: Claim) -> None:
        log_ = log.bind(event_id=str(claim.event_id), type=claim.type)
        claimed_at = time.monotonic()  # just after the claim: the lease started about now
        started = time.perf_counter()
        outcome: Outcome
        try:
            fetched, is_test = await self._get_event(claim)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # The rate limit lives in the database, and it is unavailable: no call was made.
            # The lease runs out and the event is claimed again once the database is back.
            log_.warning("fetch postponed: the store is unavailable", error=type(exc).__name__)
            return
        except PaxosError as error:
            outcome = decide(claim, error, self._policy, datetime.now(UTC), self._rng)
            _report(log_, error, outcome)
        else:
            mismatch = check_matches(claim, fetched)
            if mismatch:
                outcome = FinalOutcome(claim.event_id, "failed", mismatch)
                log_.error("fetched event does not match its notification", reason=mismatch)
                metrics.FETCHES.labels(outcome="mismatch").inc()
            else:
                if is_test != claim.is_test:
                    log_.warning(
                        "the notification's is_test was wrong: stored as Paxos has it",
                        notified_is_test=claim.is_test,
                        is_test=is_test,
                    )
                outcome = FetchedOutcome(
                    claim.event_id,
                    fetched.raw,
                    identity_id_of(fetched),
                    fetched.event.object_type,
                    fetched.event.undelivered_webhooks,
                    is_test,
                    object_id_of(fetched.event.type, fetched.event.object),
                )
                metrics.FETCHES.labels(outcome="fetched").inc()
        metrics.FETCH_SECONDS.observe(time.perf_counter() - started)
        # While the lease lasts, the outcome is ours to write: keep trying through a short
        # database outage rather than fetch the event again after it.
        give_up_at = claimed_at + self._lease_s * 0.8
        delay = 0.2
        while True:
            try:
                await self._writer.submit(outcome)
                break
            except CommitFailed as exc:
                if time.monotonic() + delay > give_up_at:
                    # Nothing written: the lease runs out and the event is claimed again.
                    log_.warning("fetch outcome not stored; will retry", reason=str(exc))
                    return
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        if isinstance(outcome, FetchedOutcome):
            self._fetched.poke()  # the projector has a new journal event to apply


def _report(
    log_: structlog.typing.FilteringBoundLogger, error: PaxosError, outcome: Outcome
) -> None:
    if isinstance(outcome, FinalOutcome):
        metrics.FETCHES.labels(outcome=outcome.status).inc()
        if isinstance(error, (PaxosBadRequest, PaxosForbidden)):
            # Not the event's fault: our credentials, scope or configuration. Loudly.
            log_.error(
                "Paxos refused the fetch: check PAXOS_CLIENT_ID/SECRET, PAXOS_SCOPE "
                "and PAXOS_API_URL",
                status=error.status,
                reason=str(error),
            )
            metrics.FETCH_CONFIG_ERRORS.inc()
        else:
            log_.warning("fetch given up", status=outcome.status, reason=outcome.error)
    else:
        kind = "rate_limited" if isinstance(error, PaxosRateLimited) else "retry"
        metrics.FETCHES.labels(outcome=kind).inc()
        delay_s = outcome.delay_s if isinstance(outcome, RetryOutcome) else None
        log_.info("fetch will be retried", reason=str(error), in_s=delay_s and round(delay_s, 1))
