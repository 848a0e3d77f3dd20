"""A stand-in Paxos: its OAuth2 token endpoint, Get Event and List Events, with faults on request.

It behaves as PAXOS.md says Paxos does, including the parts that hurt: tokens expire, the token
endpoint allows one request per second, the API answers 429 above its rate, test events are
only found with `is_test=true`, events may share a `created_at`, and an event may not be found
yet when its webhook arrives. Faults (errors, latency, hangs, 429 bursts, outages, lag) are
switched on and off at run time through `SimulatorState`, or over HTTP at `/_simulator/*`.

Mounted so that `PAXOS_API_URL=http://host:port/v2` and
`PAXOS_TOKEN_URL=http://host:port/oauth2/token` work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import random
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec
from litestar import Litestar, Request, Response, get, patch, post
from litestar.params import FromPath

from service.simulator.universe import SimEvent, Universe, generate_universe, parse_rfc3339_ns

EVENTS_SCOPE = "events:read_event"
DEFAULT_ALLOWED_SCOPES = frozenset(
    {EVENTS_SCOPE, "identity:read_identity", "transfer:read_transfer", "funding:read_profile"}
)
PROBLEM_JSON = "application/problem+json"
MAX_LIMIT = 100

_encoder = msgspec.json.Encoder()
# Keys that sort after / before every real (created_at, id) key with the same time.
_ID_MAX = "\U0010ffff"
_ID_MIN = ""


@dataclass
class Faults:
    """Failures to inject. Change any field while the simulator runs; it reads them per call."""

    error_rate: float = 0.0  # share of API calls answered 500, 502 or 503
    latency_s: float = 0.0  # added before every call, token endpoint included
    timeout_rate: float = 0.0  # share of API calls that hang `timeout_s`, then answer 504
    timeout_s: float = 30.0
    lag_calls: int = 0  # each event answers 404 to its first `lag_calls` Get Event calls
    # Set through `SimulatorState.burst_429` and `.outage`, which know the clock.
    burst_429_calls: int = 0
    burst_429_until: float = 0.0
    outage_until: float = 0.0


@dataclass
class SimulatorConfig:
    """What the simulated Paxos account holds and how strict it is."""

    universe: Universe = field(default_factory=lambda: generate_universe(200))
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"  # noqa: S105 - a well-known demo credential
    allowed_scopes: frozenset[str] = DEFAULT_ALLOWED_SCOPES
    # Scopes granted when the token request names none; Paxos documents none, so none.
    default_scopes: frozenset[str] = frozenset()
    token_ttl_s: float = 3600.0
    token_rps: float = 1.0
    api_rps: float = 50.0
    # Paxos throttles an IP for 5 minutes once it goes over; 0 refuses only the excess calls.
    throttle_s: float = 0.0
    # False emulates the older API: no `next_page_cursor`, paging walks `created_at.gt`.
    cursors: bool = True
    # The last page's cursor: absent (False) or an empty string (True); Paxos allows both.
    empty_cursor_on_last_page: bool = False
    faults: Faults = field(default_factory=Faults)
    seed: int = 0  # the dice of the random faults
    clock: Callable[[], float] = time.monotonic
    # The newest calls kept in `SimulatorState.calls`; counts are kept for all of them.
    call_log_size: int = 100_000


@dataclass(frozen=True)
class Call:
    """One request the simulator answered: when (on the config's clock), what, and how."""

    at: float
    endpoint: str  # "token", "get_event" or "list_events"
    path: str
    status: int


@dataclass(frozen=True)
class _Token:
    scopes: frozenset[str]
    expires_at: float


class _Window:
    """At most `rate` admissions per second in any sliding second (longer for rates below 1)."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self.blocked_until = 0.0

    def admit(self, now: float, rate: float, throttle_s: float) -> float | None:
        """None when admitted, else the seconds to wait."""
        if now < self.blocked_until:
            return self.blocked_until - now
        capacity, period = (int(rate), 1.0) if rate >= 1 else (1, 1.0 / rate)
        while self._times and self._times[0] <= now - period:
            self._times.popleft()
        if len(self._times) >= capacity:
            if throttle_s > 0:
                self.blocked_until = now + throttle_s
                return throttle_s
            return self._times[0] + period - now
        self._times.append(now)
        return None

    def reset(self) -> None:
        self._times.clear()
        self.blocked_until = 0.0


class SimulatorState:
    """The running simulator: config (mutable), issued tokens, and a log of every call."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.calls: deque[Call] = deque(maxlen=config.call_log_size)
        self.counts: Counter[str] = Counter()  # "endpoint status" -> calls, never trimmed
        self.tokens: dict[str, _Token] = {}
        self.get_event_calls: Counter[str] = Counter()
        # Seeded so a failing run can be replayed; not used for anything secret.
        self.dice = random.Random(config.seed)  # noqa: S311
        self._token_window = _Window()
        self._api_window = _Window()

    @property
    def universe(self) -> Universe:
        """The events this account holds."""
        return self.config.universe

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self.config.faults

    @property
    def token_requests(self) -> int:
        """How many requests reached the token endpoint, refused ones included."""
        return sum(n for key, n in self.counts.items() if key.startswith("token "))

    @property
    def api_calls(self) -> list[Call]:
        """Get Event and List Events calls (the newest `call_log_size`), in arrival order."""
        return [c for c in self.calls if c.endpoint != "token"]

    def burst_429(self, *, calls: int = 0, seconds: float = 0.0) -> None:
        """Answer 429 to the next `calls` API calls, and/or to every API call for `seconds`."""
        self.faults.burst_429_calls = calls
        self.faults.burst_429_until = self.config.clock() + seconds if seconds else 0.0

    def outage(self, seconds: float) -> None:
        """Answer 503 to every call, token endpoint included, for `seconds` from now."""
        self.faults.outage_until = self.config.clock() + seconds

    def clear_faults(self) -> None:
        """Back to a healthy Paxos."""
        self.config.faults = Faults()

    def reset(self) -> None:
        """Forget calls, tokens, lag counters and rate-limit windows (not the config)."""
        self.calls.clear()
        self.counts.clear()
        self.tokens.clear()
        self.get_event_calls.clear()
        self._token_window.reset()
        self._api_window.reset()

    def stats(self) -> dict[str, Any]:
        """Counts for a person or a benchmark watching the simulator."""
        return {
            "events": len(self.universe),
            "test_events": sum(1 for e in self.universe if e.is_test),
            "token_requests": self.token_requests,
            "api_calls": sum(self.counts.values()) - self.token_requests,
            "by_status": dict(sorted(self.counts.items())),
            "faults": asdict(self.faults),
        }

    # -- the endpoints ---------------------------------------------------------------------

    async def token(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`POST /oauth2/token`: the client-credentials grant, at most `token_rps` a second."""
        config = self.config
        if config.faults.latency_s > 0:
            await asyncio.sleep(config.faults.latency_s)
        now = config.clock()
        response = self._down(now)
        if response is None:
            wait = self._token_window.admit(now, config.token_rps, config.throttle_s)
            if wait is not None:
                response = _oauth_error(
                    429, "rate_limited", "too many token requests", {"Retry-After": _ceil(wait)}
                )
        if response is None:
            response = self._grant(request, await request.body(), now)
        self._record(now, "token", request, response.status_code or 200)
        return response

    def _grant(self, request: Request[Any, Any, Any], body: bytes, now: float) -> Response[bytes]:
        config = self.config
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "expected a form-urlencoded body")
        try:
            form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        except UnicodeDecodeError:
            return _oauth_error(400, "invalid_request", "the body is not UTF-8")
        grant_type = form.get("grant_type")
        if grant_type is None:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant_type!r}")
        basic = _basic_credentials(request.headers.get("authorization", ""))
        client_id = form.get("client_id") or (basic[0] if basic else None)
        client_secret = form.get("client_secret") or (basic[1] if basic else None)
        # Credentials sent both ways (as Paxos itself does as a webhook client) must agree.
        if basic and (basic[0] != client_id or basic[1] != client_secret):
            return _oauth_error(400, "invalid_request", "Basic and form credentials differ")
        if not (
            client_id
            and client_secret
            and secrets.compare_digest(client_id.encode(), config.client_id.encode())
            and secrets.compare_digest(client_secret.encode(), config.client_secret.encode())
        ):
            return _oauth_error(
                401,
                "invalid_client",
                "client authentication failed",
                {"WWW-Authenticate": 'Basic realm="paxos"'},
            )
        requested = frozenset(form.get("scope", "").split())
        unknown = requested - config.allowed_scopes
        if unknown:
            return _oauth_error(400, "invalid_scope", f"unknown scope {sorted(unknown)[0]!r}")
        scopes = requested or config.default_scopes
        token = secrets.token_urlsafe(32)
        self.tokens[token] = _Token(scopes, now + config.token_ttl_s)
        answer = {
            "access_token": token,
            # Whole seconds on the wire, rounded up: a sub-second test TTL still says 1.
            "expires_in": max(1, math.ceil(config.token_ttl_s)),
            "scope": " ".join(sorted(scopes)),
            "token_type": "bearer",
        }
        return Response(
            _encoder.encode(answer),
            media_type="application/json",
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def api(
        self,
        request: Request[Any, Any, Any],
        endpoint: str,
        answer: Callable[[], Response[bytes]],
    ) -> Response[bytes]:
        """One API call through the gate: latency, outage, rate limit, 429 burst, auth, faults."""
        config = self.config
        faults = config.faults
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
        now = config.clock()
        hang = 0.0
        response = self._down(now)
        if response is None:
            wait = self._api_window.admit(now, config.api_rps, config.throttle_s)
            if wait is not None:
                response = _too_many(wait)
        if response is None and faults.burst_429_calls > 0:
            faults.burst_429_calls -= 1
            response = _too_many(1.0)
        if response is None and now < faults.burst_429_until:
            response = _too_many(faults.burst_429_until - now)
        if response is None:
            response = self._authorize(request, now)
        if (
            response is None
            and faults.timeout_rate > 0
            and self.dice.random() < faults.timeout_rate
        ):
            hang = faults.timeout_s
            response = _problem(504, "upstream request timed out")
        if response is None and faults.error_rate > 0 and self.dice.random() < faults.error_rate:
            status = self.dice.choice((500, 502, 503))
            response = _problem(status, "simulated server error")
        if response is None:
            response = answer()
        # Recorded before a hang: a client that gives up still left its call in the log.
        self._record(now, endpoint, request, response.status_code or 200)
        if hang:
            await asyncio.sleep(hang)
        return response

    def _down(self, now: float) -> Response[bytes] | None:
        until = self.config.faults.outage_until
        if now < until:
            return _problem(
                503, "service unavailable (simulated outage)", {"Retry-After": _ceil(until - now)}
            )
        return None

    def _authorize(self, request: Request[Any, Any, Any], now: float) -> Response[bytes] | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _problem(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        token = self.tokens.get(value.strip())
        if token is None:
            return _problem(401, "invalid token", {"WWW-Authenticate": "Bearer"})
        if now >= token.expires_at:
            return _problem(
                401, "token expired", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        if EVENTS_SCOPE not in token.scopes:
            found = " ".join(sorted(token.scopes))
            return _problem(
                403, f"insufficient scopes: found '{found}', required one of '[{EVENTS_SCOPE}]'"
            )
        return None

    def _record(
        self, now: float, endpoint: str, request: Request[Any, Any, Any], status: int
    ) -> None:
        self.calls.append(Call(now, endpoint, request.url.path, status))
        self.counts[f"{endpoint} {status}"] += 1

    def get_event(self, event_id: str, query: dict[str, list[str]]) -> Response[bytes]:
        """Get Event's answer once the call is through the gate."""
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            return _problem(400, "error parsing event id")
        try:
            is_test = _bool(query, "is_test")
        except ValueError as exc:
            return _problem(400, str(exc))
        key = str(parsed)
        self.get_event_calls[key] += 1
        # Paxos may lag behind its own webhooks: the first calls do not find the event yet.
        if self.get_event_calls[key] <= self.config.faults.lag_calls:
            return _problem(404, "event not found")
        event = self.universe.get(key)
        if event is None or event.is_test != is_test:
            return _problem(404, "event not found")
        return Response(_encoder.encode(event.event_body()), media_type="application/json")

    def list_events(self, query: dict[str, list[str]]) -> Response[bytes]:
        """List Events' answer once the call is through the gate."""
        try:
            page, cursor = self._page(query)
        except ValueError as exc:
            return _problem(400, str(exc))
        body: dict[str, Any] = {"events": [e.event_body() for e in page]}
        if self.config.cursors:
            if cursor:
                body["next_page_cursor"] = cursor
            elif self.config.empty_cursor_on_last_page:
                body["next_page_cursor"] = ""
        return Response(_encoder.encode(body), media_type="application/json")

    def _page(self, query: dict[str, list[str]]) -> tuple[list[SimEvent], str | None]:
        limit_text = _one(query, "limit")
        try:
            limit = MAX_LIMIT if limit_text is None else int(limit_text)
        except ValueError:
            raise ValueError("error parsing limit") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        order = (_one(query, "order") or "ASC").upper()
        if order not in ("ASC", "DESC"):
            raise ValueError("order must be ASC or DESC")
        descending = order == "DESC"
        is_test = _bool(query, "is_test")
        event_type = _one(query, "type")
        lo: tuple[int, str] | None = None  # exclusive bounds on (created_at, id)
        hi: tuple[int, str] | None = None
        for op in ("gt", "gte", "eq", "lte", "lt"):
            text = _one(query, f"created_at.{op}")
            if text is None:
                continue
            try:
                ns = parse_rfc3339_ns(text)
            except ValueError:
                raise ValueError(f"error parsing created_at.{op}: not an RFC 3339 time") from None
            if op in ("gt", "gte", "eq"):
                lo = _max(lo, (ns, _ID_MAX if op == "gt" else _ID_MIN))
            if op in ("lt", "lte", "eq"):
                hi = _min(hi, (ns, _ID_MIN if op == "lt" else _ID_MAX))
        cursor_text = _one(query, "page_cursor") if self.config.cursors else None
        if cursor_text:
            position = _decode_cursor(cursor_text, order)
            if descending:
                hi = _min(hi, position)
            else:
                lo = _max(lo, position)
        page: list[SimEvent] = []
        more = False
        for event in self.universe.between(lo, hi, descending=descending):
            if event.is_test != is_test or (event_type and event.type != event_type):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(event)
        cursor = _encode_cursor(page[-1], order) if more else None
        return page, cursor


# -- the app ---------------------------------------------------------------------------------


def create_simulator(config: SimulatorConfig | None = None) -> Litestar:
    """The simulator as an ASGI app; its `SimulatorState` is `simulator_state(app)`."""
    state = SimulatorState(config or SimulatorConfig())

    @post("/oauth2/token", status_code=200)
    async def token(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await state.token(request)

    @get("/v2/events/{event_id:str}")
    async def get_event(
        request: Request[Any, Any, Any], event_id: FromPath[str]
    ) -> Response[bytes]:
        query = _query(request)
        return await state.api(request, "get_event", lambda: state.get_event(event_id, query))

    @get("/v2/events")
    async def list_events(request: Request[Any, Any, Any]) -> Response[bytes]:
        query = _query(request)
        return await state.api(request, "list_events", lambda: state.list_events(query))

    @get("/_simulator/stats")
    async def stats() -> dict[str, Any]:
        return state.stats()

    @get("/_simulator/calls")
    async def calls() -> list[dict[str, Any]]:
        """The call log (newest `call_log_size` calls): for tests and benchmarks that check
        rates from Paxos's side."""
        return [asdict(c) for c in state.calls]

    @patch("/_simulator/faults")
    async def set_faults(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Change faults over HTTP: Faults' fields, plus `burst_429_seconds`, `outage_seconds`."""
        try:
            data = msgspec.json.decode(await request.body(), type=dict[str, Any])
        except msgspec.DecodeError:
            return _problem(400, "expected a JSON object")
        return _set_faults(state, data)

    app = Litestar(
        route_handlers=[token, get_event, list_events, stats, calls, set_faults],
        openapi_config=None,
        # Logging belongs to the process (service.telemetry.logs), not to this app.
        logging_config=None,
    )
    app.state.simulator = state
    return app


def simulator_state(app: Litestar) -> SimulatorState:
    """The state of an app made by `create_simulator`."""
    state = app.state.simulator
    if not isinstance(state, SimulatorState):
        raise TypeError("not a simulator app")
    return state


def _set_faults(state: SimulatorState, data: dict[str, Any]) -> Response[bytes]:
    names = {f.name: f.type for f in fields(Faults)}
    extra = {"burst_429_seconds", "outage_seconds"}
    for key, value in data.items():
        if key not in names and key not in extra:
            return _problem(400, f"unknown fault {key!r}")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            return _problem(400, f"{key} must be a number >= 0")
    for key, value in data.items():
        if key == "burst_429_seconds":
            state.faults.burst_429_until = state.config.clock() + value
        elif key == "outage_seconds":
            state.outage(value)
        elif key in ("lag_calls", "burst_429_calls"):
            setattr(state.faults, key, int(value))
        else:
            setattr(state.faults, key, float(value))
    return Response(_encoder.encode(asdict(state.faults)), media_type="application/json")


# -- helpers ---------------------------------------------------------------------------------


def _problem(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Response[bytes]:
    """An RFC 7807 problem, shaped like Paxos's."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if meta:
        body["meta"] = meta
    return Response(
        _encoder.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _too_many(wait: float) -> Response[bytes]:
    return _problem(
        429,
        "Too many requests",
        {"Retry-After": _ceil(wait)},
        meta={"retry_after_seconds": float(_ceil(wait))},
    )


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """An RFC 6749 §5.2 error, as an OAuth server answers."""
    body = {"error": error, "error_description": description}
    return Response(
        _encoder.encode(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _ceil(seconds: float) -> str:
    # Retry-After is whole seconds; never 0, which would invite an immediate retry.
    return str(max(1, math.ceil(seconds - 1e-9)))


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))


def _query(request: Request[Any, Any, Any]) -> dict[str, list[str]]:
    return {
        k: list(v) for k, v in parse_qs(request.scope.get("query_string", b"").decode()).items()
    }


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


# Go's strconv.ParseBool, which Paxos's gateway uses for boolean query parameters.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _bool(query: dict[str, list[str]], name: str) -> bool:
    text = _one(query, name)
    if text is None or text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise ValueError(f"error parsing {name}: not a boolean")


def _max(a: tuple[int, str] | None, b: tuple[int, str]) -> tuple[int, str]:
    return b if a is None or b > a else a


def _min(a: tuple[int, str] | None, b: tuple[int, str]) -> tuple[int, str]:
    return b if a is None or b < a else a


def _encode_cursor(last: SimEvent, order: str) -> str:
    raw = _encoder.encode([last.created_at_ns, last.id, order])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str, order: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ns, event_id, cursor_order = msgspec.json.decode(raw, type=tuple[int, str, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValueError("error parsing page_cursor") from None
    if cursor_order != order:
        raise ValueError("page_cursor was issued for another order")
    return ns, event_id


__all__ = [
    "EVENTS_SCOPE",
    "Call",
    "Faults",
    "SimulatorConfig",
    "SimulatorState",
    "create_simulator",
    "simulator_state",
]
