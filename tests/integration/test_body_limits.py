"""Every route that takes a body refuses a large one with 413 before reading it (issue #15,
finding 4): the admin API's JSON with a problem, the console's forms with its error page."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings
from service.web.serving import API_MAX_BODY_BYTES, FORM_MAX_BODY_BYTES
from tests.support.asgi import running
from tests.support.tokens import admin_headers

pytestmark = pytest.mark.server_independent  # routing and limits: the same on any server


@pytest.fixture
async def client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine)
    async with (
        running(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield client


def _backfill(types: int) -> bytes:
    listed = ",".join(['"identity.approved"'] * types)
    return (
        b'{"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z", "types": ['
        + listed.encode()
        + b"]}"
    )


async def test_an_admin_body_over_the_limit_is_a_413_problem(client: httpx.AsyncClient) -> None:
    body = _backfill(2_000)
    assert len(body) > API_MAX_BODY_BYTES
    response = await client.post(
        "/admin/backfill",
        content=body,
        headers={**admin_headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert f"{API_MAX_BODY_BYTES} bytes" in response.json()["detail"]
    # Within the limit, the same request is taken.
    response = await client.post(
        "/admin/backfill",
        content=_backfill(20),
        headers={**admin_headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text


async def test_a_console_form_over_the_limit_gets_the_consoles_413_page(
    client: httpx.AsyncClient,
) -> None:
    body = b"csrf=x&token=" + b"x" * FORM_MAX_BODY_BYTES
    response = await client.post(
        "/ui/login",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/html")
    assert f"{FORM_MAX_BODY_BYTES} bytes" in response.text
    # A form streamed without a Content-Length is cut off as it passes the limit.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * FORM_MAX_BODY_BYTES

    response = await client.post(
        "/ui/login",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413


async def test_every_operation_that_takes_a_body_documents_its_413(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    with_body = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
    ]
    assert len(with_body) >= 3  # the webhook, the token endpoint, the backfill at least
    for path, method, operation in with_body:
        assert "413" in operation["responses"], (method, path)
