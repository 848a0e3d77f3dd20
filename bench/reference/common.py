"""What both reference consumers share: their table, their checks, and their Litestar app.

A reference consumer is the least an honest webhook consumer on the service's stack does:
Litestar + msgspec + asyncpg, the API key compared in constant time (`matches_any`, as the
service), a bounded body, the notification decoded and validated exactly as the service does
(`decode_notification`), one table idempotent by event id, and a 200 only after the commit.
What it leaves out is what the service adds: the journal, the fetch queue, receipt times, the
failed-authentication throttle, metrics, problem details, OpenAPI, the other routes.

Each reads the webhook settings of the service from the environment (WEBHOOK_API_KEYS,
WEBHOOK_API_KEY_HEADER, WEBHOOK_MAX_BODY_BYTES) and DATABASE_URL; `bench.reference.serving`
serves it with the ASGI server of `paxos-events serve`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, post
from litestar.exceptions import HTTPException

from service.db.engine import plain_url
from service.domain.notification import NotANotification, Notification, NotJSON, decode_notification
from service.settings import Settings
from service.web.auth import matches_any

# One table, idempotent by event id: the notification's fields and its body as received.
TABLE = """
    CREATE TABLE IF NOT EXISTS webhooks (
        event_id uuid PRIMARY KEY,
        type text NOT NULL,
        time timestamptz NOT NULL,
        is_test bool NOT NULL,
        body json NOT NULL,
        received_at timestamptz NOT NULL DEFAULT statement_timestamp()
    )
"""

# Store(notification, body as text) -> True if new, False if the id was known.
Store = Callable[[Notification, str], Awaitable[bool]]


class Answer(msgspec.Struct, frozen=True):
    id: str
    status: str


_encoder = msgspec.json.Encoder()


def settings_from_env() -> Settings:
    settings = Settings.from_env(os.environ)
    if not settings.database_url:
        raise SystemExit("a reference consumer needs DATABASE_URL")
    return settings


def database_dsn(settings: Settings) -> str:
    """asyncpg's DSN for the settings' DATABASE_URL."""
    return plain_url(settings.database_url or "")


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def create_reference_app(
    settings: Settings,
    open_store: Callable[[Settings], AbstractAsyncContextManager[Store]],
) -> Litestar:
    """The reference's app: one route, `open_store` its lifespan-owned store."""
    header = settings.webhook_api_key_header.lower()
    keys = tuple(settings.webhook_api_keys)
    stores: list[Store] = []

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        async with open_store(settings) as store:
            stores.append(store)
            yield

    @post("/webhooks/paxos", request_max_body_size=settings.webhook_max_body_bytes)
    async def receive(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = request.headers.get(header)
        if key is None or not matches_any(key, keys):
            raise HTTPException(status_code=401, detail="invalid API key")
        if not is_json(request.headers.get("content-type", "")):
            raise HTTPException(status_code=415, detail="Content-Type must be application/json")
        body = await request.body()
        try:
            notification = decode_notification(body)
        except NotJSON as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except NotANotification as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        new = await stores[0](notification, body.decode())
        answer = Answer(str(notification.id), "accepted" if new else "duplicate")
        return Response(_encoder.encode(answer), media_type="application/json")

    return Litestar(route_handlers=[receive], lifespan=[lifespan], logging_config=None)


def row(notification: Notification) -> tuple[uuid.UUID, str, Any, bool]:
    return notification.id, notification.type, notification.time, notification.is_test
