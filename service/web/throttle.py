"""Slowing down password guessing: repeated failed authentication from one address gets 429.

Every 401 the service answers (a wrong or missing API key, OAuth client secret, JWT, or read
or admin token) counts as one failure against the client's address. Failures leak away at
`limit / window_s` per second (a leaky bucket); while an address's bucket holds `limit`
failures, each further failure of it is answered `429` with `Retry-After` instead of `401`,
until the bucket has room for one more.

Credentials are always checked first, and the throttle acts only on the answer: a valid
credential is never refused, whatever its address did before. Behind one NAT or one proxy
(`TRUSTED_PROXIES` unset), a stranger's wrong keys therefore cannot lock Paxos or an operator
out. The throttle does not cap how many guesses are checked (a right guess must succeed): the
length of the keys and tokens is the defence against guessing; the throttle makes a guesser
conspicuous (`paxos_auth_throttled_total`), tells well-behaved clients to back off, and keeps
one address's failures from flooding the log.

The counts live in this process's memory only. That is deliberate: this is a defence, not a
correctness property (DESIGN.md §1 keeps those in Postgres). With N `serve` processes a guesser
gets N times the 401s; a restart forgets. The table is bounded (`max_clients`, least recently
failed evicted first), so a flood of new addresses costs memory once, never without bound.

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

# Routes that check no credentials: nothing to count there, and a throttled address may always
# probe health and the docs.
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
        """Seconds before a failure of `client` is answered 401 again (None: now)."""
        now = self._clock()
        # Room for one more failure: it is answered 401 (and counted).
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
    """ASGI middleware: count every 401 answered; answer 429 instead while the address is over
    its limit.

    One place for every route that authenticates (webhooks, `/oauth/token`, the read and
    admin API, the console's sign-in, and routes added later), rather than a check in each
    authenticator. It looks only at the status the route answers, so the credential check
    itself is the route's, unchanged (constant time), and a request that passes it is never
    touched.
    """

    def __init__(self, app: ASGIApp, throttle: FailureThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"].startswith(UNTHROTTLED_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = client_address(scope)
        replaced = False

        async def throttling_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of the 401 that the 429 replaced
            if message["type"] == "http.response.start" and message["status"] == 401:
                wait = self.throttle.retry_after(client)
                if wait is not None:
                    replaced = True
                    await self._refuse(scope, send, wait)
                    return
                self.throttle.failed(client)
            await send(message)

        await self.app(scope, receive, throttling_send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, wait: int) -> None:
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


def throttle_middleware(throttle: FailureThrottle) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware factory Litestar's `middleware=[...]` takes."""

    def factory(app: ASGIApp) -> ASGIApp:
        return ThrottleMiddleware(app, throttle)

    return factory


__all__ = ["FailureThrottle", "ThrottleMiddleware", "client_address", "throttle_middleware"]
