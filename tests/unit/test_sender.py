"""The webhook sender against a consumer written here, both in-process over ASGI."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import httpx
import msgspec
import pytest
from click.testing import CliRunner
from litestar import Litestar, Request, Response, post

from service.domain.notification import decode_notification
from service.simulator.commands import build_universe, simulate
from service.simulator.sender import ApiKeyAuth, OAuthAuth, RetryPolicy, SendReport, send
from service.simulator.server import SimulatorConfig, create_simulator
from service.simulator.universe import Universe, generate_universe, parse_rfc3339_ns

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

TARGET = "http://consumer.test/webhooks/paxos"
TOKEN_URL = "http://consumer.test/oauth/token"
# Real Paxos timing divided by 1000: first retry after 5 ms, horizon 86 s.
FAST = RetryPolicy().scaled(0.001)


@dataclass
class Consumer:
    """A webhook consumer that misbehaves as told, and remembers what it was sent."""

    fail_first: int = 0  # answer 503 to the first N deliveries
    fail_ids: dict[str, int] = field(default_factory=dict)  # id -> deliveries to refuse
    hang_first: int = 0  # never answer the first N deliveries
    always_fail: bool = False
    api_key: tuple[str, str] | None = None
    oauth: tuple[str, str] | None = None
    revoke_after: int | None = None  # stop taking the first token after N deliveries
    deliveries: int = 0
    received: list[tuple[float, str]] = field(default_factory=list)  # 2xx only
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # every attempt
    authorizations: list[str] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def app(self) -> Litestar:
        @post("/webhooks/paxos", status_code=200)
        async def webhook(request: Request[Any, Any, Any]) -> Response[bytes]:
            body = await request.body()
            notification = decode_notification(body)
            event_id = str(notification.id)
            now = time.monotonic()
            self.arrivals.setdefault(event_id, []).append(now)
            if not self._authorized(request):
                return Response(b"", status_code=401)
            self.deliveries += 1
            if self.deliveries <= self.hang_first:
                await asyncio.sleep(3600)
            if self.always_fail or self.deliveries <= self.fail_first:
                return Response(b"", status_code=503)
            if self.fail_ids.get(event_id, 0) > 0:
                self.fail_ids[event_id] -= 1
                return Response(b"", status_code=500)
            self.received.append((now, event_id))
            return Response(msgspec.json.encode({"id": event_id, "status": "accepted"}))

        @post("/oauth/token", status_code=200)
        async def token(request: Request[Any, Any, Any]) -> Response[bytes]:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            basic = base64.b64decode(value).decode() if scheme == "Basic" else ""
            self.token_requests.append({**form, "basic": basic})
            basic_id, _, basic_secret = basic.partition(":")
            # Paxos sends the credentials both ways at once; insist on both.
            if (
                form.get("grant_type") != "client_credentials"
                or (form.get("client_id"), form.get("client_secret")) != self.oauth
                or (unquote_plus(basic_id), unquote_plus(basic_secret)) != self.oauth
            ):
                return Response(msgspec.json.encode({"error": "invalid_client"}), status_code=401)
            issued = f"token-{len(self.tokens) + 1}"
            self.tokens.append(issued)
            answer = {"access_token": issued, "token_type": "Bearer", "expires_in": 3600}
            return Response(msgspec.json.encode(answer))

        return Litestar(route_handlers=[webhook, token], openapi_config=None, logging_config=None)

    def _authorized(self, request: Request[Any, Any, Any]) -> bool:
        if self.api_key is not None:
            header, value = self.api_key
            return request.headers.get(header) == value
        if self.oauth is not None:
            authorization = request.headers.get("authorization", "")
            self.authorizations.append(authorization)
            valid = set(self.tokens)
            if self.revoke_after is not None and self.deliveries >= self.revoke_after:
                valid.discard("token-1")
            return authorization.removeprefix("Bearer ") in valid
        return True

    def count(self) -> Counter[str]:
        return Counter(event_id for _, event_id in self.received)


@pytest.fixture
def universe() -> Universe:
    return generate_universe(40, test_ratio=0.1, seed=21)


async def deliver(
    consumer: Consumer, universe: Universe, **options: Any
) -> tuple[SendReport, float]:
    options.setdefault("retry", FAST)
    options.setdefault("rate", None)
    options.setdefault("seed", 1)
    transport = httpx.ASGITransport(app=consumer.app())
    started = time.monotonic()
    async with httpx.AsyncClient(transport=transport) as client:
        report = await send(universe.notifications(), TARGET, client=client, **options)
    return report, time.monotonic() - started


def ids(universe: Universe) -> list[str]:
    return [e.id for e in universe]


async def test_failed_deliveries_are_retried_until_every_event_is_delivered(
    universe: Universe,
) -> None:
    consumer = Consumer(fail_first=15)
    report, _ = await deliver(consumer, universe)
    assert report.delivered == dict.fromkeys(ids(universe), 1)
    assert consumer.count() == Counter(ids(universe))
    assert report.attempts == 40 + 15
    assert report.retries == 15
    assert report.statuses == {"503": 15, "200": 40}
    assert report.given_up == [] and report.dropped == []
    assert report.test_notifications == 4


def test_retry_delays_double_within_their_jitter() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    for retry in range(1, 12):
        base = min(policy.max_delay_s, policy.first_retry_s * 2 ** (retry - 1))
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(set(delays)) == 200  # jittered, not one fixed value
    assert policy.delay(40, rng) <= 1.2 * policy.max_delay_s


async def test_retries_wait_their_backoff_between_deliveries(universe: Universe) -> None:
    stubborn = ids(universe)[3]
    consumer = Consumer(fail_ids={stubborn: 4})
    # Real timing divided by 100: 50 ms, 100 ms, 200 ms, 400 ms, each +-20%. Sleeps never
    # end early, so each gap is at least its delay's lower bound, however busy the machine
    # (upper bounds would measure the machine, not the sender: the test above checks them
    # on the policy itself).
    report, _ = await deliver(consumer, universe, retry=RetryPolicy().scaled(0.01))
    assert report.delivered[stubborn] == 1
    times = consumer.arrivals[stubborn]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    for retry, gap in enumerate(gaps, start=1):
        assert gap >= 0.8 * 0.05 * 2 ** (retry - 1)


async def test_no_answer_counts_as_a_failure_and_is_retried(universe: Universe) -> None:
    consumer = Consumer(hang_first=2)
    report, _ = await deliver(consumer, universe, timeout_s=0.1)
    assert report.statuses["no answer"] == 2
    assert set(report.delivered) == set(ids(universe))


async def test_the_sender_gives_up_after_the_horizon(universe: Universe) -> None:
    consumer = Consumer(always_fail=True)
    policy = RetryPolicy(first_retry_s=0.01, max_delay_s=0.05, horizon_s=0.2)
    report, elapsed = await deliver(consumer, universe, retry=policy, duplicates=0.5)
    assert report.delivered == {}
    assert sorted(report.given_up) == sorted(ids(universe))
    # 10, 20, 40 ms then 50 ms steps (+-20%) within 200 ms: up to 6 attempts per copy, at
    # least 2 (a retry 10 ms after the first, however slow the machine makes the rest).
    copies = 40 + len(report.duplicated)
    assert 2 * copies <= report.attempts <= 7 * copies
    assert elapsed < 1.0


async def test_duplicates_and_drops_are_reported_as_they_happened() -> None:
    universe = generate_universe(300, test_ratio=0.1, seed=5)
    consumer = Consumer(fail_first=20)
    report, _ = await deliver(consumer, universe, duplicates=0.3, drop=0.2, shuffle=True)
    everything = set(ids(universe))
    dropped = set(report.dropped)
    assert 30 < len(dropped) < 90
    assert 50 < len(report.duplicated) < 130
    assert dropped.isdisjoint(report.duplicated)
    # What the consumer saw is what the report says, to the delivery.
    assert consumer.count() == Counter(report.delivered)
    assert set(report.delivered) == everything - dropped
    assert dropped.isdisjoint(consumer.arrivals)
    for event_id, times in report.delivered.items():
        assert times == (2 if event_id in report.duplicated else 1)
    assert report.attempts == (300 - len(dropped)) + len(report.duplicated) + 20

    # Dropped events are still at Paxos: List Events finds every one of them.
    paxos = create_simulator(SimulatorConfig(universe=universe))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=paxos), base_url="http://paxos.test"
    ) as client:
        token = await client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "sim-client",
                "client_secret": "sim-secret",
                "scope": "events:read_event",
            },
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        listed: set[str] = set()
        for is_test in ("false", "true"):
            response = await client.get(
                "/v2/events", params={"is_test": is_test, "limit": 100}, headers=headers
            )
            body = response.json()
            while True:
                listed |= {e["id"] for e in body["events"]}
                if not body.get("next_page_cursor"):
                    break
                params = {"is_test": is_test, "page_cursor": body["next_page_cursor"]}
                body = (await client.get("/v2/events", params=params, headers=headers)).json()
    assert dropped <= listed


async def test_order_is_kept_unless_shuffled(universe: Universe) -> None:
    kept = Consumer()
    await deliver(kept, universe, rate=500)
    assert [event_id for _, event_id in kept.received] == ids(universe)
    shuffled = Consumer()
    await deliver(shuffled, universe, rate=500, shuffle=True)
    order = [event_id for _, event_id in shuffled.received]
    assert order != ids(universe)
    assert sorted(order) == sorted(ids(universe))


async def test_the_rate_caps_attempts_per_second(universe: Universe) -> None:
    consumer = Consumer(fail_first=5)
    report, elapsed = await deliver(consumer, universe, rate=100)
    assert report.attempts == 45
    assert elapsed >= 44 / 100
    arrivals = sorted(t for times in consumer.arrivals.values() for t in times)
    # Any 11 consecutive attempts span at least 10 intervals (a little slack for scheduling).
    assert all(arrivals[i + 10] - arrivals[i] >= 0.09 for i in range(len(arrivals) - 10))


async def test_the_api_key_header_is_sent_on_every_delivery(universe: Universe) -> None:
    consumer = Consumer(api_key=("X-Paxos-Key", "s3cret"))
    report, _ = await deliver(consumer, universe, auth=ApiKeyAuth("X-Paxos-Key", "s3cret"))
    assert len(report.delivered) == 40
    assert report.statuses == {"200": 40}

    refused = Consumer(api_key=("X-Paxos-Key", "s3cret"))
    policy = RetryPolicy(first_retry_s=0.01, horizon_s=0.05)
    report, _ = await deliver(
        refused, universe, auth=ApiKeyAuth("X-Paxos-Key", "wrong"), retry=policy
    )
    # A 4xx is retried like any other failure, until Paxos gives up.
    assert report.delivered == {}
    assert set(report.statuses) == {"401"}
    assert report.attempts > 40
    assert len(report.given_up) == 40


async def test_oauth_fetches_one_token_and_sends_it_as_bearer(universe: Universe) -> None:
    consumer = Consumer(oauth=("paxos", "p@ss word"))
    auth = OAuthAuth(TOKEN_URL, "paxos", "p@ss word")
    report, _ = await deliver(consumer, universe, auth=auth, concurrency=20)
    assert len(report.delivered) == 40
    assert report.token_requests == 1
    assert len(consumer.token_requests) == 1
    # Basic (form-urlencoded first, as RFC 6749 asks) and form fields in one request.
    sent = consumer.token_requests[0]
    assert sent["client_id"] == "paxos" and sent["client_secret"] == "p@ss word"
    assert sent["basic"] == "paxos:p%40ss+word"
    assert set(consumer.authorizations) == {"Bearer token-1"}


async def test_oauth_gets_a_new_token_when_the_consumer_refuses_the_old_one(
    universe: Universe,
) -> None:
    consumer = Consumer(oauth=("paxos", "secret"), revoke_after=10)
    auth = OAuthAuth(TOKEN_URL, "paxos", "secret")
    report, _ = await deliver(consumer, universe, auth=auth, rate=200)
    assert set(report.delivered) == set(ids(universe))
    assert report.token_requests == 2
    assert "401" in report.statuses
    assert consumer.authorizations[-1] == "Bearer token-2"


async def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        await send([], TARGET, duplicates=2.0)
    with pytest.raises(ValueError, match="rate"):
        await send([], TARGET, rate=0)
    report = await send([], TARGET, rate=None)
    assert (report.notifications, report.attempts) == (0, 0)


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "ftp://x"], "'ftp://x' is not an http(s) URL with a host"),
        (["--target", TARGET, "--duplicates", "1.5"], "1.5 is not in the range 0.0<=x<=1.0"),
        (["--target", TARGET, "--rate", "0"], "0.0 is not in the range x>0.0"),
        (["--target", TARGET, "--count", "0"], "0 is not in the range x>=1"),
        (["--target", TARGET, "--auth", "api_key"], "--auth api_key needs --api-key"),
        (
            ["--target", TARGET, "--auth", "oauth", "--client-id", "a"],
            "--auth oauth needs --token-url, --client-secret",
        ),
        (
            ["--target", TARGET, "--api-key", "k", "--token-url", TOKEN_URL],
            "--token-url applies only to --auth oauth",
        ),
        (["--target", TARGET, "--auth", "none", "--api-key", "k"], "given with --auth none"),
        (["--target", TARGET, "--api-key", " "], "must not be empty"),
        (["--target", TARGET, "--until", "noon"], "'noon' is not an RFC 3339 time"),
    ],
)
def test_simulate_send_refuses_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(simulate, ["send", *args], env={"SIMULATE_API_KEY": None})
    assert result.exit_code == 2
    assert message in result.output


def test_simulate_send_reports_and_fails_when_it_gives_up() -> None:
    # A port just freed: nothing listens, every attempt fails fast; the horizon is ~0.4 s.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = f"http://127.0.0.1:{port}/webhooks/paxos"
    args = ["send", "--target", target, "--count", "2", "--seed", "3"]
    result = CliRunner().invoke(simulate, [*args, "--time-scale", "0.000005", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["seed"] == 3
    assert report["notifications"] == 2
    assert len(report["given_up"]) == 2
    assert set(report["statuses"]) == {"no answer"}


def test_simulate_api_refuses_bad_options() -> None:
    result = CliRunner().invoke(simulate, ["api", "--error-rate", "2"])
    assert result.exit_code == 2
    assert "'--error-rate'" in result.output
    result = CliRunner().invoke(simulate, ["api", "--client-id", ""])
    assert result.exit_code == 2
    assert "must not be empty" in result.output


def test_api_and_send_build_the_same_universe() -> None:
    until = datetime(2025, 1, 7, 14, tzinfo=UTC)
    first = build_universe(50, 0.1, 7, until)
    second = build_universe(50, 0.1, 7, until)
    assert first.events == second.events
    assert all(until - timedelta(hours=24) <= _time(e.created_at) < until for e in first)


def _time(text: str) -> datetime:
    return datetime.fromtimestamp(parse_rfc3339_ns(text) / 1e9, UTC)
