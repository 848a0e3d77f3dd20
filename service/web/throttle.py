"""Slowing down password guessing: repeated failed authentication from one address gets 429.

Every 401 the service answers (a wrong or missing API key, OAuth client secret, JWT, or read
or admin token) counts as one failure against the client's address. Failures leak away at
`limit / window_s` per second (a leaky bucket); an address whose bucket holds `limit` failures
is answered `429` with `Retry-After` on every authenticated route, without its credentials
being looked at, until the bucket has room for one more try. A guesser therefore gets about
`limit` tries per window, and legitimate senders from other addresses are not affected.

The counts live in this process's memory only. That is deliberate: this is a defence, not a
correctness property (DESIGN.md §1 keeps those in Postgres). With N `serve` processes a guesser
gets N times the tries; an attacker with many addresses gets more; a restart forgets. The
table is bounded (`max_clients`, least recently failed evicted first), so a flood of new
addresses costs memory once, never without bound.

A success does not reset anything: an attacker's count is its own address's, and a valid
request from elsewhere (or even from the same address, behind one NAT) leaves it as it was.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from service.telemetry import metrics
from service.web.problems import PROBLEM_JSON, problem_body

# Routes that check no credentials: a throttled address may still probe health and the docs.
UNTHROTTLED_PREFIXES = ("/health/", "/schema")


class FailureThrottle:
    """Failed authentications per client address, as leaky buckets, in memory."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_s <= 0 or max_clients < 1:
            raise ValueError("limit, window_s and max_clients must be positive")
        self.limit = limit
        self._leak_per_s = limit / window_s
        self._max_clients = max_clients
        self._clock = clock
        # address -> (failures, when last counted); oldest-touched first, for eviction.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, client: str, now: float) -> float:
        entry = self._buckets.get(client)
        if entry is None:
            return 0.0
        level, at = entry
        return max(0.0, level - (now - at) * self._leak_per_s)

    def retry_after(self, client: str) -> int | None:
        """Seconds `client` must wait before its credentials are checked again, or None."""
        now = self._clock()
        # Room for one more failure: checked (and maybe failed) once more.
        excess = self._level(client, now) + 1 - self.limit
        if excess <= 0:
            return None
        return max(1, math.ceil(excess / self._leak_per_s))

    def failed(self, client: str) -> None:
        """Count one failed authentication from `client`."""
        now = self._clock()
        level = self._level(client, now) + 1
        self._buckets[client] = (level, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)


def client_address(scope: Scope) -> str:
    """The peer's address as the server saw it (uvicorn replaces it with the forwarded one
    only when the connection comes from a proxy listed in TRUSTED_PROXIES)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class ThrottleMiddleware:
    """ASGI middleware: refuse a throttled address with 429; count every 401 answered.

    One place for every route that authenticates (webhooks, `/oauth/token`, the read and
    admin API, and routes added later), rather than a check in each authenticator.
    """

    def __init__(self, app: ASGIApp, throttle: FailureThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"].startswith(UNTHROTTLED_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = client_address(scope)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            metrics.AUTH_THROTTLED.inc()
            body = problem_body(
                429,
                "too many failed authentications from this address; retry later",
                type_slug="too-many-failed-authentications",
                instance=scope["path"],
            )
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(wait).encode()),
                ],
            }
            end: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": body,
                "more_body": False,
            }
            await send(start)
            await send(end)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.throttle.failed(client)
            await send(message)

        await self.app(scope, receive, counting_send)


def throttle_middleware(throttle: FailureThrottle) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware factory Litestar's `middleware=[...]` takes."""

    def factory(app: ASGIApp) -> ASGIApp:
        return ThrottleMiddleware(app, throttle)

    return factory


__all__ = ["FailureThrottle", "ThrottleMiddleware", "client_address", "throttle_middleware"]
