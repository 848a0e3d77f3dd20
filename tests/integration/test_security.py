"""Security: failed-authentication throttling in the app, auth on every route of the OpenAPI
document, and no secret in a log line or an error body on the failure paths that
test_observability.py does not already drive (OAuth Basic, JWT, admin tokens, throttled
answers, Paxos refusing our credentials). The throttle on its own is in
tests/unit/test_security.py; a real server, in tests/process/test_security.py."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.fetching.fetcher import Fetcher
from service.paxos.client import build_client
from service.settings import Settings, WebhookAuth
from service.store.tables import events
from tests.support.asgi import running
from tests.support.factories import encode, notification
from tests.support.fetching import FAST, Paxos, paxos_settings
from tests.support.secrets import SECRETS, assert_no_secret
from tests.support.tokens import ADMIN_TOKEN, API_KEY, READ_TOKEN, bearer

# The same on every PostgreSQL: CI runs these on one server only.
pytestmark = pytest.mark.server_independent

ATTACKER = ("203.0.113.7", 40000)
BYSTANDER = ("198.51.100.9", 40000)
OAUTH_ID = "paxos"
OAUTH_SECRET = "oauth-client-secret"


Connect = Callable[[tuple[str, int]], httpx.AsyncClient]


@asynccontextmanager
async def serving(
    settings: Settings, engine: AsyncEngine, http_client: httpx.AsyncClient | None = None
) -> AsyncIterator[Connect]:
    """The app, lifespan entered, and a way to reach it from any client address."""
    app = create_app(settings, engine=engine, http_client=http_client)
    clients: list[httpx.AsyncClient] = []

    def connect(address: tuple[str, int]) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=address), base_url="http://testserver"
        )
        clients.append(client)
        return client

    async with running(app):
        try:
            yield connect
        finally:
            for client in clients:
                await client.aclose()


# --- the throttle in the app: every route that authenticates --------------------------------


Attempt = Callable[[httpx.AsyncClient, bool], Awaitable[httpx.Response]]


async def _webhook(client: httpx.AsyncClient, good: bool) -> httpx.Response:
    key = API_KEY if good else "wrong-key"
    return await client.post(
        "/webhooks/paxos",
        content=encode(notification()),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
    )


async def _oauth(client: httpx.AsyncClient, good: bool) -> httpx.Response:
    secret = OAUTH_SECRET if good else "wrong-secret"
    return await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": OAUTH_ID, "client_secret": secret},
    )


async def _read(client: httpx.AsyncClient, good: bool) -> httpx.Response:
    token = READ_TOKEN if good else "wrong-token"
    return await client.get("/events", headers={"Authorization": f"Bearer {token}"})


async def _admin(client: httpx.AsyncClient, good: bool) -> httpx.Response:
    token = ADMIN_TOKEN if good else READ_TOKEN + "x"
    return await client.get("/admin/reconciliation", headers={"Authorization": f"Bearer {token}"})


SURFACES: dict[str, Attempt] = {
    "webhook": _webhook,
    "oauth": _oauth,
    "read": _read,
    "admin": _admin,
}


def _throttled(settings: Settings, surface: str, limit: int = 3, window_s: int = 600) -> Settings:
    changes: dict[str, Any] = {"auth_failure_limit": limit, "auth_failure_window_s": window_s}
    if surface == "oauth":
        changes |= {
            "webhook_auth": WebhookAuth.OAUTH,
            "webhook_oauth_client_id": OAUTH_ID,
            "webhook_oauth_client_secret": OAUTH_SECRET,
        }
    return settings.replace(**changes)


@pytest.mark.parametrize("surface", list(SURFACES))
async def test_repeated_failures_from_one_address_get_429_but_right_credentials_pass(
    settings: Settings, engine: AsyncEngine, surface: str
) -> None:
    attempt = SURFACES[surface]
    async with serving(_throttled(settings, surface), engine) as connect:
        attacker, bystander = connect(ATTACKER), connect(BYSTANDER)
        for _ in range(3):
            assert (await attempt(attacker, False)).status_code == 401
        refused = await attempt(attacker, False)
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("/too-many-failed-authentications")
        assert 1 <= int(refused.headers["retry-after"]) <= 600
        # The credentials are checked first: the right ones pass from that address too.
        assert (await attempt(attacker, True)).status_code in (200, 202)
        assert (await attempt(attacker, False)).status_code == 429
        # Another address is unaffected, right or wrong.
        assert (await attempt(bystander, True)).status_code in (200, 202)
        assert (await attempt(bystander, False)).status_code == 401
        # Health and the docs stay open to the throttled address.
        assert (await attacker.get("/health/live")).status_code == 200
        assert (await attacker.get("/schema/openapi.json")).status_code == 200
    if surface == "webhook":
        async with engine.connect() as conn:  # the two good deliveries, nothing else
            assert await conn.scalar(select(func.count()).select_from(events)) == 2


async def test_a_success_resets_no_count(settings: Settings, engine: AsyncEngine) -> None:
    async with serving(_throttled(settings, "read"), engine) as connect:
        attacker, bystander = connect(ATTACKER), connect(BYSTANDER)
        for _ in range(2):
            assert (await _read(attacker, False)).status_code == 401
        assert (await _read(bystander, True)).status_code == 200
        assert (await _read(attacker, True)).status_code == 200
        assert (await _read(attacker, False)).status_code == 401
        assert (await _read(attacker, False)).status_code == 429
        assert (await _read(attacker, True)).status_code == 200


async def test_the_throttle_lets_go_once_failures_have_leaked_away(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with serving(_throttled(settings, "read", limit=2, window_s=1), engine) as connect:
        attacker = connect(ATTACKER)
        for _ in range(2):
            assert (await _read(attacker, False)).status_code == 401
        refused = await _read(attacker, False)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        await asyncio.sleep(0.6)  # two failures a second leak away
        assert (await _read(attacker, False)).status_code == 401


async def test_throttled_requests_are_counted_in_the_metrics(
    settings: Settings, engine: AsyncEngine
) -> None:
    async with serving(_throttled(settings, "read", limit=1), engine) as connect:
        attacker, bystander = connect(ATTACKER), connect(BYSTANDER)

        async def throttled_total() -> float:
            text = (await bystander.get("/metrics", headers=bearer(READ_TOKEN))).text
            line = next(x for x in text.splitlines() if x.startswith("paxos_auth_throttled_total"))
            return float(line.split()[-1])

        before = await throttled_total()
        await _read(attacker, False)
        for _ in range(3):
            assert (await _read(attacker, False)).status_code == 429
        assert await throttled_total() == before + 3


async def test_a_valid_credential_is_never_refused_by_the_throttle(
    settings: Settings, engine: AsyncEngine
) -> None:
    # Everyone behind one address (a NAT, or a proxy without TRUSTED_PROXIES): a stranger's
    # wrong keys must not lock Paxos or an operator out. The default limit: 20 a minute.
    assert settings.auth_failure_limit == 20
    async with serving(settings, engine) as connect:
        shared = connect(ATTACKER)
        answers = [(await _webhook(shared, False)).status_code for _ in range(25)]
        assert answers == [401] * 20 + [429] * 5
        assert (await _webhook(shared, True)).status_code == 200
        assert (await _admin(shared, True)).status_code == 200
        assert (await _webhook(shared, False)).status_code == 429
        assert (await _admin(shared, False)).status_code == 429


# --- every route of the OpenAPI document refuses the wrong credentials ----------------------


def _fill(path: str, operation: dict[str, Any]) -> str:
    """`path` with valid-looking values for its parameters (by their schema)."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "path":
            continue
        schema = parameter.get("schema", {})
        if schema.get("format") == "uuid":
            value = str(uuid.uuid4())
        elif schema.get("type") == "integer":
            value = "1"
        else:
            value = "some-id"
        path = path.replace("{" + parameter["name"] + "}", value)
    return path


# Routes that take no credentials by design (DESIGN.md §3).
PUBLIC = {("GET", "/health/live"), ("GET", "/health/ready"), ("POST", "/oauth/token")}


async def test_every_route_in_the_openapi_document_refuses_missing_and_wrong_credentials(
    settings: Settings, engine: AsyncEngine
) -> None:
    # The walk makes many failed attempts from one address: keep the throttle out of it.
    async with serving(settings.replace(auth_failure_limit=100_000), engine) as connect:
        client = connect(BYSTANDER)
        document = (await client.get("/schema/openapi.json")).json()
        walked: dict[str, set[str]] = {"read": set(), "admin": set(), "webhook": set()}
        for template, item in document["paths"].items():
            for method, operation in item.items():
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                route = (method.upper(), template)
                schemes = {name for r in operation.get("security") or [] for name in r}
                if template.startswith("/admin"):
                    assert schemes == {"adminToken"}, route
                if not schemes:
                    assert route in PUBLIC, f"{route} takes no credentials"
                    continue
                path = _fill(template, operation)

                async def call(
                    headers: dict[str, str], path: str = path, method: str = method
                ) -> httpx.Response:
                    return await client.request(
                        method.upper(),
                        path,
                        headers={"Content-Type": "application/json", **headers},
                    )

                if schemes == {"paxosWebhook"}:
                    kind, wrong = "webhook", {"X-Api-Key": "wrong-key"}
                else:
                    kind = "admin" if schemes == {"adminToken"} else "read"
                    wrong = bearer("wrong-token")
                for headers in ({}, wrong, {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}):
                    response = await call(headers)
                    assert response.status_code == 401, (route, headers, response.text)
                    assert response.headers["content-type"].startswith("application/problem+json")
                    assert response.headers["www-authenticate"]
                    assert response.json()["status"] == 401
                if kind == "admin":
                    response = await call(bearer(READ_TOKEN))
                    assert response.status_code == 403, (route, response.text)
                    assert response.json()["type"].endswith("/forbidden")
                    assert (await call(bearer(ADMIN_TOKEN))).status_code not in (401, 403)
                elif kind == "read":
                    for token in (READ_TOKEN, ADMIN_TOKEN):
                        assert (await call(bearer(token))).status_code not in (401, 403), route
                walked[kind].add(template)
    # The walk covered the API as it is today (and covers new routes by itself).
    assert {"/events", "/events/{event_id}", "/identities", "/metrics"} <= walked["read"]
    assert {"/admin/backfill", "/admin/jobs/{job_id}"} <= walked["admin"]
    assert walked["webhook"] == {"/webhooks/paxos"}


# --- no secret in a log line or an error body -----------------------------------------------


async def test_no_secret_on_the_authentication_failure_paths(
    settings: Settings, engine: AsyncEngine, json_logs: io.StringIO
) -> None:
    guess = SECRETS["guessed secret"]
    cfg = settings.replace(
        webhook_auth=WebhookAuth.OAUTH,
        webhook_oauth_client_id="paxos",
        webhook_oauth_client_secret=SECRETS["oauth client secret"],
        api_read_tokens=(SECRETS["read token"],),
        api_admin_tokens=(SECRETS["admin token"],),
        auth_failure_limit=10,
    )
    bodies: list[str] = []
    async with serving(cfg, engine) as connect:
        client = connect(ATTACKER)

        def basic(user: str, password: str) -> dict[str, str]:
            raw = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}

        form = {"grant_type": "client_credentials"}
        token_requests = [
            {"headers": basic("paxos", guess), "data": form},
            {"headers": basic("paxos", guess), "data": {**form, "client_secret": guess + "x"}},
            {"headers": basic(guess, SECRETS["oauth client secret"] + "x"), "data": form},
            {"headers": {"Authorization": f"Basic {guess}"}, "data": form},
        ]
        for request in token_requests:
            response = await client.post("/oauth/token", **request)
            assert response.status_code in (400, 401)
            bodies.append(response.text)
        ok = await client.post(
            "/oauth/token",
            data={**form, "client_id": "paxos", "client_secret": SECRETS["oauth client secret"]},
        )
        issued = ok.json()["access_token"]
        for headers in (
            bearer(guess),
            bearer(issued + "x"),
            bearer(issued[:-5]),
            {"Authorization": guess},
        ):
            response = await client.post(
                "/webhooks/paxos",
                content=encode(notification()),
                headers={"Content-Type": "application/json", **headers},
            )
            assert response.status_code == 401
            bodies.append(response.text)
        for path in ("/admin/reconciliation", "/events"):
            response = await client.get(path, headers=bearer(SECRETS["admin token"] + "x"))
            assert response.status_code == 401
            bodies.append(response.text)
        # Over the limit now: the throttled answer must not echo what was sent either.
        response = await client.get("/events", headers=bearer(SECRETS["admin token"] + "x"))
        assert response.status_code == 429
        bodies.append(response.text)
    assert_no_secret(json_logs.getvalue(), bodies, {"issued token": issued})


async def test_no_secret_when_a_jwt_is_refused(
    settings: Settings, engine: AsyncEngine, json_logs: io.StringIO
) -> None:
    jwks_calls = 0

    def identity_provider(request: httpx.Request) -> httpx.Response:
        nonlocal jwks_calls
        jwks_calls += 1
        if jwks_calls > 1:
            return httpx.Response(503, text="identity provider down")
        return httpx.Response(200, json={"keys": []})

    guess = SECRETS["guessed secret"]
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"k1"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(f'{{"sub":"{guess}"}}'.encode()).rstrip(b"=").decode()
    tokens = [guess, f"{header}.{payload}.c2ln", f"{header}.{payload}.{guess}"]
    cfg = settings.replace(
        webhook_auth=WebhookAuth.JWT,
        webhook_jwt_jwks_url="https://idp.example.test/jwks.json",
        webhook_jwt_issuer="https://idp.example.test/",
        webhook_jwt_audience="paxos",
    )
    bodies: list[str] = []
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(identity_provider)) as idp,
        serving(cfg, engine, idp) as connect,
    ):
        client = connect(ATTACKER)
        for token in tokens:
            response = await client.post(
                "/webhooks/paxos",
                content=encode(notification()),
                headers={"Content-Type": "application/json", **bearer(token)},
            )
            assert response.status_code in (401, 503)
            bodies.append(response.text)
    assert jwks_calls >= 1
    assert_no_secret(json_logs.getvalue(), bodies, {"token": tokens[1]})


async def test_no_secret_when_paxos_refuses_our_credentials_or_fails(
    settings: Settings, engine: AsyncEngine, paxos: Paxos, json_logs: io.StringIO
) -> None:
    cfg = paxos_settings(settings).replace(paxos_client_secret=SECRETS["paxos client secret"])
    sim = next(e for e in paxos.universe if not e.is_test)
    async with serving(cfg, engine, paxos.http) as connect:
        client = connect(BYSTANDER)
        response = await client.post(
            "/webhooks/paxos",
            content=encode(sim.notification()),
            headers={"Content-Type": "application/json", "X-Api-Key": API_KEY},
        )
        assert response.status_code == 200
    paxos_client = build_client(cfg, engine, paxos.http)
    # The simulator knows another secret: every token request is refused (401).
    fetcher = Fetcher(engine, paxos_client, policy=FAST, poll_s=0.05)
    task = asyncio.create_task(fetcher.run())
    deadline = time.monotonic() + 10
    while paxos.state.token_requests < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # Then the token endpoint itself fails.
    paxos.state.outage(2.0)
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert paxos.state.token_requests >= 2
    logged = json_logs.getvalue()
    assert "token" in logged  # the refusals were logged, and what follows checks how
    assert_no_secret(logged, [])
