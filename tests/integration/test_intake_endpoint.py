"""POST /webhooks/paxos is answered before Litestar routes anything (service.intake.endpoint):
what the router's layers did for it is still done (HSTS over HTTPS, the failed-authentication
throttle shared with every other route, problems), and a spelling of the path that only the
router takes is answered by the same endpoint behind the router's own layers. The answers
themselves are in test_webhook_intake.py; the throttle per route in test_security.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.intake.endpoint import IntakeApp
from service.settings import Settings
from service.store.tables import events
from service.web.serving import STRICT_TRANSPORT_SECURITY
from tests.support.asgi import running
from tests.support.factories import encode, notification
from tests.support.tokens import API_KEY
from tests.support.webhooks import HEADERS

pytestmark = pytest.mark.server_independent  # HTTP: the same on any server

WRONG_KEY = {"Content-Type": "application/json", "X-Api-Key": "a-wrong-key-0000000"}


async def _stored(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events)) or 0)


def test_the_app_answers_the_intake_before_routing(settings: Settings) -> None:
    assert isinstance(create_app(settings), IntakeApp)


@pytest.mark.parametrize("path", ["/webhooks/paxos", "/webhooks/paxos/"])
async def test_webhook_answers_carry_hsts_over_https_only(
    client: httpx.AsyncClient, path: str
) -> None:
    body = encode(notification())
    for answer in (
        await client.post(f"https://testserver{path}", content=body, headers=HEADERS),
        await client.post(f"https://testserver{path}", content=body, headers=WRONG_KEY),
        await client.post(f"https://testserver{path}", content=b"[", headers=HEADERS),
    ):
        assert answer.status_code in (200, 401, 400), answer.text
        # Once: the endpoint adds it where no before-send hook runs, and only there.
        assert answer.headers.get_list("strict-transport-security") == [STRICT_TRANSPORT_SECURITY]
    plain = await client.post(f"http://testserver{path}", content=body, headers=HEADERS)
    assert plain.status_code == 200
    assert "strict-transport-security" not in plain.headers


@pytest.mark.parametrize("path", ["/webhooks/paxos", "/webhooks/paxos/"])
async def test_both_ways_in_give_the_same_answers(
    client: httpx.AsyncClient, engine: AsyncEngine, path: str
) -> None:
    body = notification()
    first = await client.post(path, content=encode(body), headers=HEADERS)
    again = await client.post(path, content=encode(body), headers=HEADERS)
    assert (first.status_code, first.json()) == (200, {"id": body["id"], "status": "accepted"})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert first.headers["content-type"] == "application/json"

    def problem(answer: httpx.Response, status: int, slug: str) -> dict[str, Any]:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        found: dict[str, Any] = answer.json()
        assert found["type"].endswith("/" + slug)
        assert found["instance"] == path
        return found

    refused = await client.post(path, content=encode(body), headers=WRONG_KEY)
    problem(refused, 401, "unauthenticated")
    assert refused.headers["www-authenticate"] == "ApiKey"
    problem(
        await client.post(
            path, content=encode(body), headers={"X-Api-Key": API_KEY, "Content-Type": "text/plain"}
        ),
        415,
        "unsupported-media-type",
    )
    problem(await client.post(path, content=b"{", headers=HEADERS), 400, "invalid-json")
    named = problem(
        await client.post(path, content=encode({**body, "source": "x"}), headers=HEADERS),
        422,
        "invalid-notification",
    )
    assert named["detail"].startswith("source:")
    too_large = problem(
        await client.post(path, content=b"x" * 70_000, headers=HEADERS), 413, "body-too-large"
    )
    assert "WEBHOOK_MAX_BODY_BYTES" in too_large["detail"]
    assert await _stored(engine) == 1


async def test_a_streamed_body_is_refused_once_it_passes_the_limit(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent: list[int] = []

    async def chunks() -> Any:  # no Content-Length: the limit must hold on the stream
        for _ in range(100):
            sent.append(1)
            yield b"x" * 10_000

    answer = await client.post("/webhooks/paxos", content=chunks(), headers=HEADERS)
    assert answer.status_code == 413
    assert answer.json()["type"].endswith("/body-too-large")
    assert len(sent) < 100  # refused on the way, not after reading it all
    assert await _stored(engine) == 0


async def test_a_client_gone_mid_body_stores_nothing_and_is_not_answered(
    settings: Settings, engine: AsyncEngine
) -> None:
    app = create_app(settings, engine=engine)
    body = encode(notification())
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/paxos",
        "raw_path": b"/webhooks/paxos",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-api-key", API_KEY.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    async with running(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []
    assert await _stored(engine) == 0


async def test_webhook_and_read_api_failures_count_in_one_throttle(
    settings: Settings, engine: AsyncEngine
) -> None:
    app = create_app(settings.replace(auth_failure_limit=3), engine=engine)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with (
        running(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as attacker,
    ):
        body = encode(notification())
        assert (
            await attacker.post("/webhooks/paxos", content=body, headers=WRONG_KEY)
        ).status_code == 401
        assert (
            await attacker.post("/webhooks/paxos/", content=body, headers=WRONG_KEY)
        ).status_code == 401
        bad_token = {"Authorization": "Bearer a-wrong-token-000000"}
        assert (await attacker.get("/events", headers=bad_token)).status_code == 401
        # Three failures in all, whichever way they came in: the fourth is refused on either.
        throttled = await attacker.post("/webhooks/paxos", content=body, headers=WRONG_KEY)
        assert throttled.status_code == 429
        assert throttled.json()["type"].endswith("/too-many-failed-authentications")
        assert int(throttled.headers["retry-after"]) >= 1
        assert (await attacker.get("/events", headers=bad_token)).status_code == 429
        # The right key still passes.
        assert (
            await attacker.post("/webhooks/paxos", content=body, headers=HEADERS)
        ).status_code == 200
