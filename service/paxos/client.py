"""The Paxos REST API as we use it: OAuth2 client credentials, Get Event, List Events.

The error tree, in one place:

    PaxosError                      anything that kept a call from returning an event
    ├── PaxosUnavailable            no usable answer: timeout, connection error (retry)
    ├── PaxosServerError    5xx     (retry)
    ├── PaxosRateLimited    429     carries `retry_after` (pause the deployment, retry)
    ├── PaxosNotFound       404     (Paxos may lag: retry a few times)
    ├── PaxosUnauthorized   401     after one token refresh and one retry
    ├── PaxosForbidden      403     missing scope: a configuration problem
    ├── PaxosBadRequest     400     (a configuration or client problem)
    └── PaxosProtocolError          a 2xx whose body is not what Paxos documents

Paxos's RFC 7807 bodies are parsed into `title`/`detail` of these errors.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS
from service.domain.paxos_event import Fetched, PaxosEvent
from service.paxos.ratelimit import RateLimiter
from service.settings import Settings
from service.store.paxos_connection import record_get_event, record_token
from service.telemetry import metrics

log = structlog.get_logger(__name__)

# A token is renewed this long before Paxos says it expires, so no call carries a token that
# expires in flight.
TOKEN_MARGIN_S = 60.0
CALL_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_PAGE = 100  # List Events' largest `limit`
# The longest pause a 429's Retry-After may impose. The pause holds every process's calls
# (the rate limit is the deployment's), so one absurd value must not stop fetching for days;
# past this the limit simply tries again and Paxos can say 429 once more.
MAX_RETRY_AFTER_S = 900.0


class PaxosError(Exception):
    """A call to Paxos did not return what we asked for."""

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.detail = detail
        self.retry_after = retry_after


class PaxosUnavailable(PaxosError):
    """No usable answer: a timeout or a connection error."""


class PaxosServerError(PaxosError):
    """Paxos answered 5xx."""


class PaxosRateLimited(PaxosError):
    status = 429


class PaxosNotFound(PaxosError):
    status = 404


class PaxosUnauthorized(PaxosError):
    status = 401


class PaxosForbidden(PaxosError):
    status = 403


class PaxosBadRequest(PaxosError):
    status = 400


class PaxosProtocolError(PaxosError):
    """A 2xx answer whose body is not what Paxos documents."""


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[Fetched]
    next_page_cursor: str | None


@dataclass(frozen=True, slots=True)
class ListFilter:
    """List Events filters (PAXOS.md §2)."""

    # datetimes, or RFC 3339 strings passed through as they are (Paxos's own nanoseconds).
    created_at_gt: datetime | str | None = None
    created_at_gte: datetime | str | None = None
    created_at_eq: datetime | str | None = None
    created_at_lt: datetime | str | None = None
    created_at_lte: datetime | str | None = None
    type: str | None = None
    is_test: bool = False
    limit: int = 100
    order: Literal["ASC", "DESC"] = "ASC"

    def params(self) -> dict[str, str]:
        params = {"limit": str(self.limit), "order": self.order}
        for op in ("gt", "gte", "eq", "lt", "lte"):
            value: datetime | str | None = getattr(self, f"created_at_{op}")
            if value is not None:
                params[f"created_at.{op}"] = value if isinstance(value, str) else _rfc3339(value)
        if self.type:
            params["type"] = self.type
        if self.is_test:
            params["is_test"] = "true"
        return params


class _TokenAnswer(msgspec.Struct):
    access_token: str
    expires_in: float = 3600.0
    token_type: str = "Bearer"  # noqa: S105 - a scheme name


class _EventsAnswer(msgspec.Struct):
    events: list[msgspec.Raw] = msgspec.field(default_factory=list)
    next_page_cursor: str | None = None


class _Problem(msgspec.Struct):
    title: str | None = None
    detail: str | None = None
    # An OAuth2 token endpoint's error answer (RFC 6749 §5.2).
    error: str | None = None
    error_description: str | None = None


_event_decoder = msgspec.json.Decoder(PaxosEvent)
_page_decoder = msgspec.json.Decoder(_EventsAnswer)
_token_decoder = msgspec.json.Decoder(_TokenAnswer)
_problem_decoder = msgspec.json.Decoder(_Problem)


@dataclass(slots=True)
class _Token:
    value: str
    renew_at: float  # time.monotonic()


# A token failure that goes on is logged again this often (every change at once).
TOKEN_FAILURE_LOG_S = 60.0
# A process records its latest successful Get Event at most this often.
GET_EVENT_RECORD_S = 5.0
# How long a shutdown waits for the connection-state writes under way.
CLOSE_WAIT_S = 2.0


class ConnectionReporter:
    """Keeps the deployment's view of the Paxos connection (`store.paxos_connection`) up to
    date from this process's calls, and logs token failures at WARNING with the reason.

    Writes run beside the calls, never in their way (a slow or unreachable database must not
    hold a fetch up), and a failed one is dropped: this is a report, never a reason to fail."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writes: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None
        self._token: tuple[bool, str | None] | None = None
        self._failure_logged_at = 0.0
        self._get_event_recorded_at = -GET_EVENT_RECORD_S

    async def token(self, ok: bool, error: str | None = None) -> None:
        """A token request succeeded, or failed for `error`."""
        now = time.monotonic()
        changed = self._token != (ok, error)
        if not ok and (changed or now - self._failure_logged_at >= TOKEN_FAILURE_LOG_S):
            self._failure_logged_at = now
            log.warning(
                "Paxos refuses us a token: nothing can be fetched; check PAXOS_CLIENT_ID, "
                "PAXOS_CLIENT_SECRET, PAXOS_SCOPE and PAXOS_TOKEN_URL",
                reason=error,
            )
        elif ok and self._token is not None and not self._token[0]:
            log.warning("Paxos gives us tokens again")
        self._token = (ok, error)
        self._write(lambda conn: record_token(conn, ok=ok, error=error))

    async def get_event(self) -> None:
        """A Get Event succeeded."""
        now = time.monotonic()
        if now - self._get_event_recorded_at < GET_EVENT_RECORD_S:
            return
        self._get_event_recorded_at = now
        self._write(record_get_event)

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Let the writes under way finish, for up to `timeout_s`, then cancel the rest: none
        outlives the process's shutdown (or the engine it writes with)."""
        if not self._writes:
            return
        _, late = await asyncio.wait(set(self._writes), timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    def _write(self, statement: Any) -> None:
        # In order: each write waits for the one before it (a token that failed and then
        # succeeded must end as "ok").
        before = self._last

        async def write() -> None:
            if before is not None:
                await asyncio.wait([before])
            try:
                async with self._engine.begin() as conn:
                    await statement(conn)
            except STORE_ERRORS as exc:
                log.debug("Paxos connection state not recorded", error=type(exc).__name__)

        task = asyncio.create_task(write(), name="paxos-connection-state")
        self._last = task
        self._writes.add(task)  # held until done: a task nobody holds may be collected
        task.add_done_callback(self._writes.discard)


@dataclass
class TokenProvider:
    """OAuth2 client-credentials tokens for our calls to Paxos.

    The token is cached until shortly before it expires; one refresh at a time however many
    calls wait for it (single flight); and token requests of the whole deployment go through
    a shared limit of one per second, as Paxos allows.
    """

    http: httpx.AsyncClient
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str
    limiter: RateLimiter
    reporter: ConnectionReporter | None = None
    refreshes: int = 0
    _token: _Token | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def token(self) -> str:
        """A valid access token, from the cache when it has one."""
        current = self._token
        if current is not None and time.monotonic() < current.renew_at:
            return current.value
        async with self._lock:
            current = self._token
            if current is not None and time.monotonic() < current.renew_at:
                return current.value  # another caller refreshed it while we waited
            try:
                self._token = await self._request()
            except PaxosError as exc:
                if self.reporter is not None:
                    await self.reporter.token(False, str(exc))
                raise
            if self.reporter is not None:
                await self.reporter.token(True)
            return self._token.value

    def invalidate(self, value: str) -> None:
        """Forget `value` (Paxos refused it), unless a newer token already replaced it."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def _request(self) -> _Token:
        await self.limiter.acquire()
        self.refreshes += 1
        metrics.TOKEN_REFRESHES.inc()
        try:
            response = await self.http.post(
                self.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "scope": self.scope,
                },
                timeout=CALL_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise PaxosUnavailable(f"token request failed: {_transport_failure(exc)}") from None
        if response.status_code != 200:
            raise _error_from(response, "token request")
        try:
            answer = _token_decoder.decode(response.content)
        except msgspec.DecodeError:
            raise PaxosProtocolError("token response is not the OAuth2 shape") from None
        lifetime = max(
            1.0,
            answer.expires_in - TOKEN_MARGIN_S
            if answer.expires_in > 2 * TOKEN_MARGIN_S
            else answer.expires_in / 2,
        )
        log.info("paxos token refreshed", expires_in=answer.expires_in)
        return _Token(answer.access_token, time.monotonic() + lifetime)


class PaxosClient:
    """Get Event and List Events under the deployment's rate limit."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_url: str,
        tokens: TokenProvider,
        limiter: RateLimiter,
        *,
        timeout: httpx.Timeout = CALL_TIMEOUT,
        connections: int = 8,
        reporter: ConnectionReporter | None = None,
    ) -> None:
        self._http = http
        self._reporter = reporter
        self._api_url = api_url.rstrip("/")
        self.tokens = tokens
        self.limiter = limiter
        self._timeout = timeout
        # A call takes its rate-limit permit only once a connection is free for it. With the
        # permit first, a call could wait in the HTTP pool after its slot and leave late,
        # next to the calls that follow it on time: more calls in one second than the limit.
        self._connections = asyncio.Semaphore(connections)

    async def close(self) -> None:
        """Finish (or cancel) what the client still writes about its calls. The HTTP client is
        the caller's, and stays open."""
        if self._reporter is not None:
            await self._reporter.close()

    async def get_event(self, event_id: uuid.UUID | str, *, is_test: bool = False) -> Fetched:
        """Get Event: the full event with `event_id`."""
        params = {"is_test": "true"} if is_test else {}
        response = await self._call(f"/events/{event_id}", params)
        try:
            fetched = Fetched(_event_decoder.decode(response.content), response.text)
        except msgspec.DecodeError as exc:
            raise PaxosProtocolError(
                f"Get Event answered a body that is not an Event: {exc}"
            ) from None
        if self._reporter is not None:
            await self._reporter.get_event()
        return fetched

    async def list_events(self, filters: ListFilter, page_cursor: str | None = None) -> EventsPage:
        """List Events: one page."""
        params = filters.params()
        if page_cursor:
            params["page_cursor"] = page_cursor
        response = await self._call("/events", params)
        try:
            answer = _page_decoder.decode(response.content)
            events = [
                Fetched(_event_decoder.decode(raw), bytes(raw).decode()) for raw in answer.events
            ]
        except msgspec.DecodeError as exc:
            raise PaxosProtocolError(f"List Events answered an unexpected body: {exc}") from None
        return EventsPage(events, answer.next_page_cursor or None)

    async def iter_events(self, filters: ListFilter) -> AsyncIterator[EventsPage]:
        """Every page of List Events for `filters`, oldest first.

        Follows `next_page_cursor` while Paxos gives one. An API that never gives one (older
        versions) is walked by time instead: each full page ends at some `created_at`; the
        events at exactly that time are read in one `created_at.eq` call (at Paxos's largest
        page), and the walk goes on strictly after it. So events that share a timestamp at a
        page boundary are neither lost nor repeated, whatever the page size.
        """
        if filters.order != "ASC":
            raise ValueError("iter_events pages oldest first (order ASC)")
        cursor: str | None = None
        cursors_seen = False
        current = filters
        while True:
            page = await self.list_events(current, cursor)
            if page.next_page_cursor:
                cursors_seen = True
                cursor = page.next_page_cursor
                yield page
                continue
            if cursors_seen or len(page.events) < current.limit:
                yield page  # the last page
                return
            last = page.events[-1].event.created_at
            yield EventsPage([f for f in page.events if f.event.created_at != last], None)
            tie = await self.list_events(
                _replace(
                    filters,
                    created_at_gt=None,
                    created_at_gte=None,
                    created_at_eq=last,
                    limit=MAX_PAGE,
                )
            )
            if len(tie.events) >= MAX_PAGE:
                log.warning(
                    "List Events without cursors cannot page within one timestamp; "
                    "events beyond the first page at this time may be missed",
                    created_at=last,
                    events=len(tie.events),
                )
            yield EventsPage(tie.events, None)
            current = _replace(current, created_at_gt=last, created_at_gte=None)

    async def _call(self, path: str, params: Mapping[str, str]) -> httpx.Response:
        # One refresh and one retry when Paxos refuses a token it gave us (it may have been
        # revoked or expired early).
        for attempt in (1, 2):
            token = await self.tokens.token()
            try:
                async with self._connections:
                    await self.limiter.acquire()
                    response = await self._http.get(
                        self._api_url + path,
                        params=params,
                        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                        timeout=self._timeout,
                    )
            except httpx.HTTPError as exc:
                raise PaxosUnavailable(f"GET {path}: {_transport_failure(exc)}") from None
            if response.status_code == 401 and attempt == 1:
                self.tokens.invalidate(token)
                continue
            if response.status_code == 429:
                error = _error_from(response, f"GET {path}")
                await self.limiter.pause(error.retry_after or 1.0)
                raise error
            if response.status_code != 200:
                raise _error_from(response, f"GET {path}")
            return response
        raise AssertionError("unreachable")


def _transport_failure(exc: httpx.HTTPError) -> str:
    """What went wrong on the wire, in words: "timed out", or the underlying error's name.

    The aiohttp transport maps every connection error to an httpx timeout class, so the
    cause (aiohttp's own exception) is what tells a timeout from a refused connection.
    """
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    if isinstance(cause, TimeoutError) or cause is exc and isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(cause).__name__


def _replace(f: ListFilter, **changes: Any) -> ListFilter:
    import dataclasses

    return dataclasses.replace(f, **changes)


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _retry_after(response: httpx.Response, what: str) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare; the caller's default applies
    if seconds > MAX_RETRY_AFTER_S:  # inf too; nan became 0.0 above
        log.warning(
            "Paxos asked for a longer pause than we allow; capped",
            call=what,
            retry_after=value[:40],
            capped_to_s=MAX_RETRY_AFTER_S,
        )
        return MAX_RETRY_AFTER_S
    return seconds


def _error_from(response: httpx.Response, what: str) -> PaxosError:
    status = response.status_code
    detail: str | None = None
    try:
        problem = _problem_decoder.decode(response.content)
        oauth = ": ".join(x for x in (problem.error, problem.error_description) if x)
        detail = problem.detail or problem.title or oauth or None
    except msgspec.DecodeError:
        pass
    message = f"{what}: HTTP {status}" + (f" ({detail})" if detail else "")
    kinds: dict[int, type[PaxosError]] = {
        400: PaxosBadRequest,
        401: PaxosUnauthorized,
        403: PaxosForbidden,
        404: PaxosNotFound,
        429: PaxosRateLimited,
    }
    kind = kinds.get(status) or (PaxosServerError if status >= 500 else PaxosBadRequest)
    return kind(message, status=status, detail=detail, retry_after=_retry_after(response, what))


def build_client(settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient) -> PaxosClient:
    """The Paxos client, with the deployment-wide limits on API calls and token requests, and
    its calls' outcomes recorded for /health/ready and the console."""
    reporter = ConnectionReporter(engine)
    tokens = TokenProvider(
        reporter=reporter,
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
        reporter=reporter,
    )
