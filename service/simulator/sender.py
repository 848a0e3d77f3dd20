"""Paxos's webhook delivery, played against a consumer: rate, duplicates, disorder, loss, retries.

What PAXOS.md says Paxos does when it delivers a webhook: POST the thin notification as JSON,
authenticated by an API-key header or by an OAuth client-credentials token; treat any non-2xx
answer, or no answer, as a failure and retry it with exponential backoff and jitter (first
retry about 5 s later) until 24 hours after the first attempt; deliver some events more than
once and in no promised order; stay under the webhook's delivery rate. On top of that the
sender can drop a share of the events for good, so that a consumer's List Events safety net
has something to find.

Timing scales down for tests through `RetryPolicy.scaled`.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote_plus

import httpx
import msgspec

USER_AGENT = "paxos-event-store-simulator/1 (webhook delivery)"


@dataclass(frozen=True)
class ApiKeyAuth:
    """The Dashboard's API-key option: one header, sent on every delivery."""

    header: str
    value: str


@dataclass(frozen=True)
class OAuthAuth:
    """The Dashboard's OAuth option: client credentials against the consumer's token URL."""

    token_url: str
    client_id: str
    client_secret: str


Auth = ApiKeyAuth | OAuthAuth


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again, and when Paxos stops trying."""

    first_retry_s: float = 5.0
    multiplier: float = 2.0
    max_delay_s: float = 3600.0
    horizon_s: float = 86_400.0  # since the first attempt
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    def scaled(self, factor: float) -> RetryPolicy:
        """The same policy with every duration multiplied by `factor` (tests use 0.001)."""
        return replace(
            self,
            first_retry_s=self.first_retry_s * factor,
            max_delay_s=self.max_delay_s * factor,
            horizon_s=self.horizon_s * factor,
        )

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        base = min(self.max_delay_s, self.first_retry_s * self.multiplier ** (retry - 1))
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


@dataclass
class SendReport:
    """What happened to every notification handed to `send`."""

    seed: int
    notifications: int = 0
    test_notifications: int = 0
    # Event id -> how many deliveries of it were answered 2xx (more than 1 for duplicates).
    delivered: dict[str, int] = field(default_factory=dict)
    # Ids never sent at all (List Events must find them).
    dropped: list[str] = field(default_factory=list)
    # Ids sent more than once on purpose (each copy retried on its own).
    duplicated: list[str] = field(default_factory=list)
    # Ids with no 2xx at all when every copy had run out of time.
    given_up: list[str] = field(default_factory=list)
    attempts: int = 0
    # "200", "503", ... or "no answer" -> count of attempts.
    statuses: dict[str, int] = field(default_factory=dict)
    # Requests to the consumer's token endpoint (OAuth only).
    token_requests: int = 0
    elapsed_s: float = 0.0

    @property
    def retries(self) -> int:
        """Attempts beyond the first of each delivered copy."""
        copies = self.notifications - len(self.dropped) + len(self.duplicated)
        return self.attempts - copies

    def summary(self) -> str:
        """One paragraph for a person at a terminal."""
        more_than_once = sum(1 for n in self.delivered.values() if n > 1)
        statuses = ", ".join(f"{k}×{v}" for k, v in sorted(self.statuses.items())) or "none"
        return (
            f"{self.notifications} notifications ({self.test_notifications} test): "
            f"{len(self.delivered)} delivered ({more_than_once} more than once), "
            f"{len(self.dropped)} dropped, {len(self.given_up)} given up; "
            f"{self.attempts} attempts in {self.elapsed_s:.1f} s ({statuses}); seed {self.seed}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "seed": self.seed,
            "notifications": self.notifications,
            "test_notifications": self.test_notifications,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "given_up": self.given_up,
            "attempts": self.attempts,
            "statuses": self.statuses,
            "token_requests": self.token_requests,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class TokenError(Exception):
    """The consumer's token endpoint did not give a token."""


class _TokenCache:
    """One OAuth token at a time, fetched when missing or about to expire."""

    def __init__(self, auth: OAuthAuth, client: httpx.AsyncClient, timeout_s: float) -> None:
        self.auth = auth
        self.client = client
        self.timeout_s = timeout_s
        self.requests = 0
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        # One fetch at a time: a hundred deliveries starting together need one token.
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._token is None or now >= self._expires_at:
                self._token, lifetime = await self._fetch()
                # Renew a little early so that no delivery carries a token that expires on the way.
                self._expires_at = now + lifetime - min(30.0, lifetime / 10)
            return self._token

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _fetch(self) -> tuple[str, float]:
        auth = self.auth
        self.requests += 1
        # As Paxos does: client_secret_basic and client_secret_post in the same request. RFC 6749
        # §2.3.1 form-urlencodes both parts before the Basic encoding.
        basic = httpx.BasicAuth(quote_plus(auth.client_id), quote_plus(auth.client_secret))
        form = {
            "grant_type": "client_credentials",
            "client_id": auth.client_id,
            "client_secret": auth.client_secret,
        }
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.client.post(
                    auth.token_url, data=form, auth=basic, headers={"User-Agent": USER_AGENT}
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            raise TokenError(f"token request failed: {exc!r}") from None
        if response.status_code != 200:
            raise TokenError(f"token endpoint answered {response.status_code}")
        try:
            body = msgspec.json.decode(response.content, type=dict[str, Any])
        except msgspec.DecodeError:
            raise TokenError("token response is not JSON") from None
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError("token response has no access_token")
        expires_in = body.get("expires_in", 3600)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        return token, lifetime


@dataclass
class _Copy:
    """One delivery of one notification, retried on its own."""

    event_id: str
    body: bytes
    retries: int = 0
    first_attempt_at: float | None = None
    # Wall-clock seconds before which the first attempt is not made (`paced_by_time`).
    not_before: float | None = None


def _wall_time(notification: Mapping[str, Any]) -> float:
    """The notification's `time` in seconds since the epoch."""
    from service.simulator.universe import NS, parse_rfc3339_ns

    return parse_rfc3339_ns(str(notification["time"])) / NS


async def send(
    notifications: Iterable[Mapping[str, Any]],
    target: str,
    *,
    client: httpx.AsyncClient | None = None,
    auth: Auth | None = None,
    rate: float | None = 10.0,
    duplicates: float = 0.0,
    shuffle: bool = False,
    drop: float = 0.0,
    retry: RetryPolicy | None = None,
    timeout_s: float = 10.0,
    concurrency: int = 100,
    seed: int | None = None,
    paced_by_time: bool = False,
) -> SendReport:
    """Deliver `notifications` to `target` the way Paxos would, and report what happened.

    `rate` caps attempts per second (retries included; None: no cap), as the Dashboard's
    webhook rate limit does. `duplicates` is the chance that a notification is delivered
    twice, `drop` the chance that it is never delivered. Without `shuffle` notifications go
    in the order given, duplicates last. A copy is retried on any non-2xx answer or no answer
    within `timeout_s`, per `retry`, until its horizon has passed. With `paced_by_time`, no
    notification is sent before its `time` (a duplicate 5 s after it), as Paxos cannot announce
    an event that has not happened yet: the demo's stream of events created as it runs.
    """
    for name, value in (("duplicates", duplicates), ("drop", drop)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    if concurrency < 1 or timeout_s <= 0:
        raise ValueError("concurrency must be >= 1 and timeout_s > 0")
    policy = retry or RetryPolicy()
    seed = secrets.randbits(32) if seed is None else seed
    # Seeded so that a run can be replayed; nothing here is secret.
    rng = random.Random(seed)  # noqa: S311
    report = SendReport(seed=seed)

    copies: list[_Copy] = []
    seconds: list[_Copy] = []
    for notification in notifications:
        event_id = str(notification["id"])
        report.notifications += 1
        report.test_notifications += bool(notification.get("is_test", False))
        if rng.random() < drop:
            report.dropped.append(event_id)
            continue
        body = msgspec.json.encode(notification)
        at = _wall_time(notification) if paced_by_time else None
        copies.append(_Copy(event_id, body, not_before=at))
        if rng.random() < duplicates:
            report.duplicated.append(event_id)
            seconds.append(_Copy(event_id, body, not_before=None if at is None else at + 5.0))
    copies += seconds
    if shuffle:
        rng.shuffle(copies)

    own_client = client is None
    http = client or httpx.AsyncClient(
        timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency)
    )
    try:
        delivery = _Delivery(http, target, auth, rate, policy, timeout_s, concurrency, rng, report)
        await delivery.run(copies)
    finally:
        if own_client:
            await http.aclose()
    return report


class _Delivery:
    """The dispatcher: a queue of copies by due time, paced, with a cap on requests in flight."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        target: str,
        auth: Auth | None,
        rate: float | None,
        policy: RetryPolicy,
        timeout_s: float,
        concurrency: int,
        rng: random.Random,
        report: SendReport,
    ) -> None:
        self.client = client
        self.target = target
        self.auth = auth
        self.interval = 1.0 / rate if rate else 0.0
        self.policy = policy
        self.timeout_s = timeout_s
        self.rng = rng
        self.report = report
        self.tokens = _TokenCache(auth, client, timeout_s) if isinstance(auth, OAuthAuth) else None
        self.slots = asyncio.Semaphore(concurrency)
        self.queue: list[tuple[float, int, _Copy]] = []
        self.seq = 0
        self.in_flight: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.failed_copies: Counter[str] = Counter()
        self.copies: Counter[str] = Counter()
        self.error: BaseException | None = None

    def _push(self, due: float, copy: _Copy) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (due, self.seq, copy))
        self.wake.set()

    async def run(self, copies: list[_Copy]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        wall = time.time()
        for copy in copies:
            self.copies[copy.event_id] += 1
            due = started
            if copy.not_before is not None:
                due += max(0.0, copy.not_before - wall)
            self._push(due, copy)
        try:
            await self._dispatch(started)
        finally:
            # Cancelled or failed: leave no attempt running behind the caller's back.
            for task in list(self.in_flight):
                task.cancel()
            if self.in_flight:
                await asyncio.wait(self.in_flight)
        for event_id, failed in self.failed_copies.items():
            if failed == self.copies[event_id] and event_id not in self.report.delivered:
                self.report.given_up.append(event_id)
        if self.tokens is not None:
            self.report.token_requests = self.tokens.requests
        self.report.elapsed_s = loop.time() - started

    async def _dispatch(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        next_slot = started
        while self.queue or self.in_flight:
            if self.error is not None:
                raise self.error
            now = loop.time()
            if self.queue:
                due = max(self.queue[0][0], next_slot)
                if due <= now:
                    _, _, copy = heapq.heappop(self.queue)
                    next_slot = max(now, next_slot) + self.interval
                    await self.slots.acquire()
                    task = asyncio.create_task(self._attempt(copy))
                    self.in_flight.add(task)
                    task.add_done_callback(self._done)
                    continue
                timeout: float | None = due - now
            else:
                timeout = None
            # Sleep until the next copy is due, or until an attempt ends (it may queue a retry
            # that is due sooner, or be the last one).
            self.wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            except TimeoutError:
                pass
        if self.error is not None:
            raise self.error

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None and self.error is None:
            # A bug in the sender itself: `run` raises it instead of carrying on without it.
            self.error = task.exception()

    async def _attempt(self, copy: _Copy) -> None:
        loop = asyncio.get_running_loop()
        if copy.first_attempt_at is None:
            copy.first_attempt_at = loop.time()
        try:
            status = await self._post(copy)
        finally:
            self.slots.release()
        report = self.report
        report.attempts += 1
        label = str(status) if status is not None else "no answer"
        report.statuses[label] = report.statuses.get(label, 0) + 1
        if status is not None and 200 <= status < 300:
            report.delivered[copy.event_id] = report.delivered.get(copy.event_id, 0) + 1
            return
        copy.retries += 1
        now = loop.time()
        due = now + self.policy.delay(copy.retries, self.rng)
        if due - copy.first_attempt_at > self.policy.horizon_s:
            self.failed_copies[copy.event_id] += 1
            return
        self._push(due, copy)

    async def _post(self, copy: _Copy) -> int | None:
        """The answer's status, or None when there was no answer in time."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        token: str | None = None
        if isinstance(self.auth, ApiKeyAuth):
            headers[self.auth.header] = self.auth.value
        elif self.tokens is not None:
            try:
                token = await self.tokens.get()
            except TokenError:
                return None
            headers["Authorization"] = f"Bearer {token}"
        try:
            # Our own deadline too: a transport without timeouts (ASGI) must not hang the run.
            async with asyncio.timeout(self.timeout_s):
                response = await self.client.post(self.target, content=copy.body, headers=headers)
        except (httpx.HTTPError, TimeoutError):
            return None
        if response.status_code == 401 and token is not None and self.tokens is not None:
            # The consumer no longer takes this token (restart, key rotation): get a new one.
            self.tokens.invalidate(token)
        return response.status_code


__all__ = [
    "ApiKeyAuth",
    "Auth",
    "OAuthAuth",
    "RetryPolicy",
    "SendReport",
    "TokenError",
    "send",
]
