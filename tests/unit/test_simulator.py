"""The Paxos simulator and its universe, driven in-process over ASGI (it is ours: no mocks)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from service.domain.notification import decode_notification
from service.simulator.server import (
    EVENTS_SCOPE,
    SimulatorConfig,
    SimulatorState,
    create_simulator,
    simulator_state,
)
from service.simulator.universe import (
    ALL_TYPES,
    TRANSFER_TYPES,
    SimEvent,
    Universe,
    format_rfc3339_ns,
    generate_universe,
    parse_rfc3339_ns,
    sort_key,
    to_ns,
)

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

CLIENT = {"client_id": "sim-client", "client_secret": "sim-secret"}
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 2, tzinfo=UTC)
# Paxos's gateway writes 0, 3, 6 or 9 fractional digits.
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.(\d{3}|\d{6}|\d{9}))?Z$")


class ManualClock:
    """The simulator's clock, moved by hand: expiry and rate windows without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Paxos:
    client: httpx.AsyncClient
    state: SimulatorState
    clock: ManualClock

    async def token(self, scope: str = EVENTS_SCOPE) -> str:
        """A fresh token; moves the clock past the token endpoint's 1 request/s first."""
        self.clock.advance(1.0)
        response = await self.client.post(
            "/oauth2/token", data={"grant_type": "client_credentials", "scope": scope, **CLIENT}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def list_all(self, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
        """Every event by following `next_page_cursor`."""
        events: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {**params, **({"page_cursor": cursor} if cursor else {})}
            # A polite client: well under Paxos's 50 calls a second.
            self.clock.advance(0.05)
            response = await self.client.get("/v2/events", params=query, headers=headers)
            assert response.status_code == 200, response.text
            body = response.json()
            events += body["events"]
            cursor = body.get("next_page_cursor")
            if not cursor:
                return events


UNIVERSE = generate_universe(400, start=START, end=END, test_ratio=0.1, tie_ratio=0.2, seed=11)


@pytest.fixture
async def paxos() -> AsyncIterator[Paxos]:
    clock = ManualClock()
    app = create_simulator(SimulatorConfig(universe=UNIVERSE, clock=clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://paxos.test") as client:
        yield Paxos(client, simulator_state(app), clock)


def only_real_events(universe: Universe = UNIVERSE) -> list[SimEvent]:
    return [e for e in universe if not e.is_test]


def only_test_events(universe: Universe = UNIVERSE) -> list[SimEvent]:
    return [e for e in universe if e.is_test]


# -- tokens ----------------------------------------------------------------------------------


async def test_a_token_is_issued_for_the_right_credentials(paxos: Paxos) -> None:
    response = await paxos.client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": f"{EVENTS_SCOPE} other:bad", **CLIENT},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"

    paxos.clock.advance(1)
    response = await paxos.client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": EVENTS_SCOPE, **CLIENT},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["expires_in"] == 3600
    assert body["scope"] == EVENTS_SCOPE
    assert body["token_type"].lower() == "bearer"
    assert response.headers["cache-control"] == "no-store"
    assert paxos.state.token_requests == 2


async def test_the_token_endpoint_takes_basic_and_refuses_wrong_credentials(paxos: Paxos) -> None:
    async def post(data: dict[str, str], **kwargs: Any) -> httpx.Response:
        paxos.clock.advance(1)
        return await paxos.client.post("/oauth2/token", data=data, **kwargs)

    grant = {"grant_type": "client_credentials", "scope": EVENTS_SCOPE}
    basic = await post(grant, auth=("sim-client", "sim-secret"))
    assert basic.status_code == 200
    both = await post({**grant, **CLIENT}, auth=("sim-client", "sim-secret"))
    assert both.status_code == 200

    wrong = await post({**grant, "client_id": "sim-client", "client_secret": "nope"})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    nothing = await post(grant)
    assert nothing.status_code == 401
    disagree = await post({**grant, **CLIENT}, auth=("sim-client", "other"))
    assert (disagree.status_code, disagree.json()["error"]) == (400, "invalid_request")
    grant_type = await post({**CLIENT, "grant_type": "password"})
    assert (grant_type.status_code, grant_type.json()["error"]) == (400, "unsupported_grant_type")
    assert paxos.state.token_requests == 6


async def test_the_token_endpoint_allows_one_request_per_second(paxos: Paxos) -> None:
    form = {"grant_type": "client_credentials", "scope": EVENTS_SCOPE, **CLIENT}
    first = await paxos.client.post("/oauth2/token", data=form)
    second = await paxos.client.post("/oauth2/token", data=form)
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    paxos.clock.advance(0.5)
    assert (await paxos.client.post("/oauth2/token", data=form)).status_code == 429
    paxos.clock.advance(0.5)
    assert (await paxos.client.post("/oauth2/token", data=form)).status_code == 200
    assert paxos.state.token_requests == 4


async def test_an_expired_token_is_refused(paxos: Paxos) -> None:
    paxos.state.config.token_ttl_s = 60
    headers = await paxos.headers()
    event = only_real_events()[0]
    assert (await paxos.client.get(f"/v2/events/{event.id}", headers=headers)).status_code == 200
    paxos.clock.advance(60)
    response = await paxos.client.get(f"/v2/events/{event.id}", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] == "token expired"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_the_api_needs_a_bearer_token_with_the_events_scope(paxos: Paxos) -> None:
    path = f"/v2/events/{only_real_events()[0].id}"
    missing = await paxos.client.get(path)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert set(missing.json()) >= {"type", "title", "status", "detail"}
    invalid = await paxos.client.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert invalid.status_code == 401

    other = await paxos.token(scope="identity:read_identity")
    forbidden = await paxos.client.get(path, headers={"Authorization": f"Bearer {other}"})
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == (
        "insufficient scopes: found 'identity:read_identity', required one of '[events:read_event]'"
    )
    # Paxos documents no default scope: a token asked for without one reads no events.
    bare = await paxos.token(scope="")
    response = await paxos.client.get(path, headers={"Authorization": f"Bearer {bare}"})
    assert response.status_code == 403
    assert (await paxos.client.get("/v2/events")).status_code == 401


# -- Get Event ---------------------------------------------------------------------------------


async def test_get_event_finds_a_real_event_only_without_is_test(paxos: Paxos) -> None:
    headers = await paxos.headers()
    event = only_real_events()[5]
    response = await paxos.client.get(f"/v2/events/{event.id}", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body == event.event_body()
    assert list(body) == [
        "id",
        "type",
        "object_type",
        "object",
        "created_at",
        "undelivered_webhooks",
    ]
    for flag in ("false", "0", "False"):
        found = await paxos.client.get(
            f"/v2/events/{event.id}", params={"is_test": flag}, headers=headers
        )
        assert found.status_code == 200
    hidden = await paxos.client.get(
        f"/v2/events/{event.id}", params={"is_test": "true"}, headers=headers
    )
    assert hidden.status_code == 404


async def test_get_event_finds_a_test_event_only_with_is_test_true(paxos: Paxos) -> None:
    headers = await paxos.headers()
    event = only_test_events()[0]
    assert (await paxos.client.get(f"/v2/events/{event.id}", headers=headers)).status_code == 404
    found = await paxos.client.get(
        f"/v2/events/{event.id}", params={"is_test": "true"}, headers=headers
    )
    assert found.status_code == 200
    assert found.json()["id"] == event.id
    assert "is_test" not in found.json()


async def test_get_event_answers_400_for_a_bad_id_and_404_for_an_unknown_one(
    paxos: Paxos,
) -> None:
    headers = await paxos.headers()
    bad = await paxos.client.get("/v2/events/not-a-uuid", headers=headers)
    assert bad.status_code == 400
    assert bad.json() == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "error parsing event id",
    }
    unknown = await paxos.client.get(f"/v2/events/{uuid.uuid4()}", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["title"] == "Not Found"
    flag = await paxos.client.get(
        f"/v2/events/{only_real_events()[0].id}", params={"is_test": "maybe"}, headers=headers
    )
    assert flag.status_code == 400


# -- List Events -------------------------------------------------------------------------------


async def test_list_events_defaults_to_100_real_events_oldest_first(paxos: Paxos) -> None:
    headers = await paxos.headers()
    body = (await paxos.client.get("/v2/events", headers=headers)).json()
    assert [e["id"] for e in body["events"]] == [e.id for e in only_real_events()[:100]]
    assert body["next_page_cursor"]


async def test_list_events_filters_by_type_and_created_at(paxos: Paxos) -> None:
    headers = await paxos.headers()
    events = only_real_events()
    # A time that several events share, so that the inclusive and exclusive bounds differ.
    shared = Counter(e.created_at_ns for e in events)
    pivot_ns = next(ns for ns, n in shared.items() if n > 1)
    pivot = format_rfc3339_ns(pivot_ns)
    expected = {
        "gt": [e for e in events if e.created_at_ns > pivot_ns],
        "gte": [e for e in events if e.created_at_ns >= pivot_ns],
        "eq": [e for e in events if e.created_at_ns == pivot_ns],
        "lte": [e for e in events if e.created_at_ns <= pivot_ns],
        "lt": [e for e in events if e.created_at_ns < pivot_ns],
    }
    assert len(expected["eq"]) > 1
    for op, wanted in expected.items():
        got = await paxos.list_all(headers, **{f"created_at.{op}": pivot})
        assert [e["id"] for e in got] == [e.id for e in wanted], op

    window = await paxos.list_all(
        headers,
        **{"created_at.gte": "2025-01-01T06:00:00Z", "created_at.lt": "2025-01-01T12:00:00+00:00"},
    )
    low, high = to_ns(START + timedelta(hours=6)), to_ns(START + timedelta(hours=12))
    assert [e["id"] for e in window] == [e.id for e in events if low <= e.created_at_ns < high]

    kind = "identity.approved"
    typed = await paxos.list_all(headers, type=kind, limit=10)
    assert [e["id"] for e in typed] == [e.id for e in events if e.type == kind]
    tests = await paxos.list_all(headers, is_test="true")
    assert [e["id"] for e in tests] == [e.id for e in only_test_events()]


async def test_list_events_orders_descending_on_request(paxos: Paxos) -> None:
    headers = await paxos.headers()
    body = (
        await paxos.client.get("/v2/events", params={"order": "DESC", "limit": 5}, headers=headers)
    ).json()
    assert [e["id"] for e in body["events"]] == [e.id for e in reversed(only_real_events())][:5]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": "0"}, "limit must be between 1 and 100"),
        ({"limit": "101"}, "limit must be between 1 and 100"),
        ({"limit": "ten"}, "error parsing limit"),
        ({"order": "SIDEWAYS"}, "order must be ASC or DESC"),
        ({"created_at.gt": "yesterday"}, "error parsing created_at.gt: not an RFC 3339 time"),
        ({"is_test": "yes"}, "error parsing is_test: not a boolean"),
        ({"page_cursor": "!!!"}, "error parsing page_cursor"),
    ],
)
async def test_list_events_refuses_bad_parameters(
    paxos: Paxos, params: dict[str, str], detail: str
) -> None:
    response = await paxos.client.get("/v2/events", params=params, headers=await paxos.headers())
    assert response.status_code == 400
    assert response.json()["detail"] == detail


@pytest.mark.parametrize("order", ["ASC", "DESC"])
@pytest.mark.parametrize("is_test", [False, True])
async def test_cursor_paging_walks_every_event_exactly_once(
    paxos: Paxos, order: str, is_test: bool
) -> None:
    headers = await paxos.headers()
    wanted = only_test_events() if is_test else only_real_events()
    if order == "DESC":
        wanted = wanted[::-1]
    limit = 7
    # The walk must cross timestamps shared by several events, at page boundaries too.
    boundaries = [(wanted[i - 1], wanted[i]) for i in range(limit, len(wanted), limit)]
    if not is_test:
        assert any(a.created_at_ns == b.created_at_ns for a, b in boundaries)
    got = await paxos.list_all(headers, order=order, limit=limit, is_test=str(is_test).lower())
    assert [e["id"] for e in got] == [e.id for e in wanted]


async def test_a_cursor_belongs_to_its_order(paxos: Paxos) -> None:
    headers = await paxos.headers()
    page = (await paxos.client.get("/v2/events", params={"limit": 3}, headers=headers)).json()
    response = await paxos.client.get(
        "/v2/events",
        params={"limit": 3, "order": "DESC", "page_cursor": page["next_page_cursor"]},
        headers=headers,
    )
    assert response.status_code == 400


async def test_the_last_page_has_no_cursor_or_an_empty_one(paxos: Paxos) -> None:
    headers = await paxos.headers()
    last = {"order": "DESC", "created_at.lt": only_real_events()[2].created_at}
    body = (await paxos.client.get("/v2/events", params=last, headers=headers)).json()
    assert len(body["events"]) == 2
    assert "next_page_cursor" not in body
    paxos.state.config.empty_cursor_on_last_page = True
    body = (await paxos.client.get("/v2/events", params=last, headers=headers)).json()
    assert body["next_page_cursor"] == ""


async def test_the_old_api_without_cursors_is_walked_by_created_at(paxos: Paxos) -> None:
    paxos.state.config.cursors = False
    headers = await paxos.headers()
    seen: dict[str, dict[str, Any]] = {}
    since: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if since:
            # gte, not gt: events sharing the last time may not all have fit on the page.
            params["created_at.gte"] = since
        body = (await paxos.client.get("/v2/events", params=params, headers=headers)).json()
        assert "next_page_cursor" not in body
        new = [e for e in body["events"] if e["id"] not in seen]
        if not new:
            break
        seen.update((e["id"], e) for e in new)
        since = body["events"][-1]["created_at"]
    assert list(seen) == [e.id for e in only_real_events()]


async def test_paging_by_created_at_gt_loses_events_that_share_a_time() -> None:
    """Why the old API's paging needs care: three events at one instant, two per page."""
    at = to_ns(START)
    same = [_event(f"00000000-0000-4000-8000-00000000000{i}", at) for i in range(3)]
    clock = ManualClock()
    app = create_simulator(SimulatorConfig(universe=Universe(same), cursors=False, clock=clock))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://paxos.test"
    ) as client:
        paxos = Paxos(client, simulator_state(app), clock)
        headers = await paxos.headers()
        first = (await client.get("/v2/events", params={"limit": 2}, headers=headers)).json()
        after = {"limit": 2, "created_at.gt": first["events"][-1]["created_at"]}
        second = (await client.get("/v2/events", params=after, headers=headers)).json()
    assert len(first["events"]) == 2
    assert second["events"] == []


def _event(event_id: str, at: int, *, is_test: bool = False) -> SimEvent:
    return SimEvent(
        id=event_id,
        type="identity.approved",
        object_type="identity_summary_status_change",
        object={"id": event_id, "identity_id": event_id},
        created_at=format_rfc3339_ns(at),
        undelivered_webhooks=0,
        is_test=is_test,
        created_at_ns=at,
        subject_id=event_id,
    )


async def test_an_event_added_at_run_time_is_served(paxos: Paxos) -> None:
    # A copy: the module's universe is shared by its tests.
    paxos.state.config.universe = Universe(UNIVERSE)
    headers = await paxos.headers()
    added = _event(str(uuid.uuid4()), to_ns(START) - 1)
    paxos.state.universe.add(added)
    found = await paxos.client.get(f"/v2/events/{added.id}", headers=headers)
    assert found.status_code == 200
    first = (await paxos.client.get("/v2/events", params={"limit": 1}, headers=headers)).json()
    assert first["events"][0]["id"] == added.id
    with pytest.raises(ValueError):
        paxos.state.universe.add(added)
    assert len(UNIVERSE) == 400


# -- rate limit and faults -----------------------------------------------------------------------


async def test_the_api_rate_limit_answers_429_and_every_call_is_recorded(paxos: Paxos) -> None:
    paxos.state.config.api_rps = 5
    headers = await paxos.headers()
    path = f"/v2/events/{only_real_events()[0].id}"
    statuses = [(await paxos.client.get(path, headers=headers)).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    refused = await paxos.client.get(path, headers=headers)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["title"] == "Too Many Requests"
    paxos.clock.advance(1)
    assert (await paxos.client.get(path, headers=headers)).status_code == 200

    calls = paxos.state.api_calls
    assert [c.status for c in calls] == [200] * 5 + [429, 429, 200]
    assert all(c.endpoint == "get_event" and c.path == path for c in calls)
    admitted = [c.at for c in calls if c.status != 429]
    assert all(sum(1 for t in admitted if s <= t < s + 1) <= 5 for s in admitted)


async def test_going_over_the_rate_can_throttle_for_a_while(paxos: Paxos) -> None:
    config = paxos.state.config
    config.api_rps, config.throttle_s = 2, 300
    headers = await paxos.headers()
    for _ in range(2):
        await paxos.client.get("/v2/events", params={"limit": 1}, headers=headers)
    assert (await paxos.client.get("/v2/events", headers=headers)).status_code == 429
    paxos.clock.advance(10)
    throttled = await paxos.client.get("/v2/events", headers=headers)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "290"
    paxos.clock.advance(290)
    assert (await paxos.client.get("/v2/events", headers=headers)).status_code == 200


async def test_error_rate_answers_server_errors(paxos: Paxos) -> None:
    headers = await paxos.headers()
    paxos.state.faults.error_rate = 1.0
    statuses = {
        (await paxos.client.get("/v2/events", headers=headers)).status_code for _ in range(20)
    }
    assert statuses <= {500, 502, 503}
    paxos.state.faults.error_rate = 0.0
    assert (await paxos.client.get("/v2/events", headers=headers)).status_code == 200


async def test_latency_is_added_to_every_call(paxos: Paxos) -> None:
    paxos.state.faults.latency_s = 0.15
    started = time.monotonic()
    headers = await paxos.headers()
    await paxos.client.get("/v2/events", params={"limit": 1}, headers=headers)
    assert time.monotonic() - started >= 0.3


async def test_a_timeout_hangs_past_the_clients_patience(paxos: Paxos) -> None:
    headers = await paxos.headers()
    faults = paxos.state.faults
    faults.timeout_rate, faults.timeout_s = 1.0, 0.3
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await paxos.client.get("/v2/events", headers=headers)
    assert paxos.state.api_calls[-1].status == 504
    started = time.monotonic()
    patient = await paxos.client.get("/v2/events", headers=headers)
    assert patient.status_code == 504
    assert time.monotonic() - started >= 0.3


async def test_a_429_burst_by_calls_and_by_time(paxos: Paxos) -> None:
    headers = await paxos.headers()

    async def status() -> int:
        return (await paxos.client.get("/v2/events", headers=headers)).status_code

    paxos.state.burst_429(calls=2)
    assert [await status() for _ in range(3)] == [429, 429, 200]
    paxos.state.burst_429(seconds=5)
    assert await status() == 429
    paxos.clock.advance(4)
    assert await status() == 429
    paxos.clock.advance(1)
    assert await status() == 200


async def test_an_outage_answers_503_everywhere_until_it_ends(paxos: Paxos) -> None:
    headers = await paxos.headers()
    paxos.state.outage(30)
    down = await paxos.client.get("/v2/events", headers=headers)
    assert down.status_code == 503
    assert down.headers["retry-after"] == "30"
    paxos.clock.advance(1)
    token = await paxos.client.post(
        "/oauth2/token", data={"grant_type": "client_credentials", **CLIENT}
    )
    assert token.status_code == 503
    paxos.clock.advance(29)
    assert (await paxos.client.get("/v2/events", headers=headers)).status_code == 200


async def test_lag_hides_each_event_for_its_first_get_event_calls(paxos: Paxos) -> None:
    headers = await paxos.headers()
    paxos.state.faults.lag_calls = 2
    first, second = only_real_events()[:2]

    async def status(event: SimEvent) -> int:
        return (await paxos.client.get(f"/v2/events/{event.id}", headers=headers)).status_code

    assert [await status(first) for _ in range(3)] == [404, 404, 200]
    assert [await status(second) for _ in range(3)] == [404, 404, 200]
    # List Events is not held back.
    listed = await paxos.client.get("/v2/events", params={"limit": 1}, headers=headers)
    assert listed.json()["events"][0]["id"] == first.id


async def test_faults_can_be_changed_over_http(paxos: Paxos) -> None:
    response = await paxos.client.patch(
        "/_simulator/faults", json={"error_rate": 0.25, "lag_calls": 1, "outage_seconds": 0}
    )
    assert response.status_code == 200
    assert paxos.state.faults.error_rate == 0.25
    assert paxos.state.faults.lag_calls == 1
    bad = await paxos.client.patch("/_simulator/faults", json={"meteor_strike": 1})
    assert bad.status_code == 400
    stats = (await paxos.client.get("/_simulator/stats")).json()
    assert stats["events"] == 400
    assert stats["test_events"] == 40


# -- the universe --------------------------------------------------------------------------------


def test_the_universe_is_determined_by_its_seed() -> None:
    def encoded(seed: int) -> bytes:
        universe = generate_universe(300, test_ratio=0.1, seed=seed)
        return msgspec.json.encode([msgspec.structs.asdict(e) for e in universe])

    assert encoded(3) == encoded(3)
    assert encoded(3) != encoded(4)


def test_the_universe_has_the_size_window_and_test_share_asked_for() -> None:
    universe = generate_universe(1000, start=START, end=END, test_ratio=0.2, seed=2)
    assert len(universe) == 1000
    assert len(only_test_events(universe)) == 200
    assert len({e.id for e in universe}) == 1000
    events = universe.events
    assert events == sorted(events, key=sort_key)
    for event in events:
        assert to_ns(START) <= event.created_at_ns < to_ns(END)
        assert CREATED_AT.match(event.created_at), event.created_at
        assert parse_rfc3339_ns(event.created_at) == event.created_at_ns
        uuid.UUID(event.id)
    # Some events share their exact creation time with another: paging must cope.
    assert sum(n > 1 for n in Counter(e.created_at_ns for e in events).values()) >= 10


def test_a_big_universe_has_every_type_paxos_documents() -> None:
    universe = generate_universe(5000, seed=1)
    types = {e.type for e in universe}
    assert set(ALL_TYPES) <= types
    assert len(TRANSFER_TYPES) == 15 * 3 + 2
    object_types = {e.object_type for e in universe}
    assert {"identity_documents_required", "identity_required_documents"} <= object_types


def test_notifications_are_what_the_consumer_accepts() -> None:
    for event in UNIVERSE:
        body = event.notification()
        decoded = decode_notification(msgspec.json.encode(body))
        assert str(decoded.id) == event.id
        assert decoded.is_test == event.is_test
        assert body["time"] == event.created_at
        assert set(body) == {"id", "type", "source", "time", "object", "is_test"}


def test_stories_are_consistent() -> None:
    universe = generate_universe(4000, test_ratio=0.05, seed=8)
    stories: dict[str, list[SimEvent]] = defaultdict(list)
    for event in only_real_events(universe):
        stories[event.subject_id].append(event)
    checked = Counter[str]()
    for subject, events in stories.items():
        times = [e.created_at_ns for e in events]
        # A subject's own events never share a time: their order is certain.
        assert times == sorted(set(times))
        family = events[0].type.split(".")[0]
        assert all(e.type.split(".")[0] == family for e in events)
        checked[family] += 1
        if family == "identity":
            _check_identity(subject, events)
        elif family == "transfer":
            _check_transfer(subject, events)
        else:
            _check_orchestration(subject, events)
    assert min(checked.values()) > 100


def _check_identity(identity_id: str, events: list[SimEvent]) -> None:
    status: str | None = None
    kyc: str | None = None
    controls: set[str] = set()
    for event in events:
        body = event.object
        assert body["identity_id"] == identity_id
        kind = event.type.removeprefix("identity.")
        if kind in ("approved", "denied", "disabled"):
            assert event.object_type == "identity_summary_status_change"
            assert body["new_summary_status"] == kind.upper()
            assert body["old_summary_status"] == (status or body["old_summary_status"])
            if status is None:
                assert body["old_summary_status"] in ("PENDING", "ERROR")
            assert body["old_summary_status"] != body["new_summary_status"]
            status = body["new_summary_status"]
        elif kind == "documents_required":
            assert status in (None, "DENIED")
            assert body["required_documents"]
        elif kind.startswith("kyc_refresh."):
            step = kind.removeprefix("kyc_refresh.")
            assert status == "APPROVED"
            if step == "started":
                assert kyc in (None, "completed", "expired")
            else:
                assert kyc == "started"
            kyc = step
        else:
            assert status == "APPROVED"
            if kind == "control.created":
                assert body["control_id"] not in controls
                controls.add(body["control_id"])
            else:
                controls.remove(body["control_id"])


def _check_transfer(transfer_id: str, events: list[SimEvent]) -> None:
    steps = [e.type.rsplit(".", 1)[1] for e in events]
    kind = events[0].type.split(".")[1]
    assert steps in (["pending"], ["pending", "completed"], ["pending", "failed"], ["completed"])
    assert (steps == ["completed"]) == kind.startswith("internal_transfer")
    for event in events:
        body = event.object
        assert body["id"] == transfer_id
        assert body["status"] == event.type.rsplit(".", 1)[1].upper()
        assert body["type"] == kind.upper()
        assert body["profile_id"] == events[0].object["profile_id"]
        assert ("crypto_network" in body) == kind.startswith("crypto_")
        if event.type.endswith("crypto_deposit.completed"):
            assert body["crypto_tx_hash"]


def _check_orchestration(orchestration_id: str, events: list[SimEvent]) -> None:
    steps = [e.type.split(".")[1] for e in events]
    assert steps in (["processing"], ["processing", "completed"], ["processing", "failed"])
    for event in events:
        assert event.object["id"] == orchestration_id
        assert event.object["status"] == event.type.split(".")[1].upper()
        assert event.object["ref_id"] == events[0].object["ref_id"]


def test_rfc3339_parsing_keeps_nanoseconds_and_offsets() -> None:
    assert parse_rfc3339_ns("2023-08-25T14:25:41.648489333Z") % 1_000_000_000 == 648489333
    assert parse_rfc3339_ns("2025-01-01T01:00:00+01:00") == to_ns(START)
    assert format_rfc3339_ns(to_ns(START)) == "2025-01-01T00:00:00Z"
    assert format_rfc3339_ns(to_ns(START) + 5_000_000) == "2025-01-01T00:00:00.005Z"
    with pytest.raises(ValueError):
        parse_rfc3339_ns("2025-02-30T00:00:00Z")
    with pytest.raises(ValueError):
        parse_rfc3339_ns("2025-01-01 00:00:00")
