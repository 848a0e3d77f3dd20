"""The HTTP composition root: `create_app(settings)` assembles routes, resources and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import httpx
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import BeforeMessageSendHookHandler, Message, Scope
from sqlalchemy.ext.asyncio import AsyncEngine

from service import __version__
from service.api.admin import AdminController
from service.api.audit import AuditController
from service.api.events import EventController
from service.api.feed import FeedController
from service.api.health import HealthController
from service.api.metrics import MetricsController
from service.api.projections import (
    IdentityController,
    OrchestrationController,
    ProjectionAdminController,
    TransferController,
)
from service.api.reconciliation import ReconciliationController
from service.api.subscriptions import SubscriptionController
from service.background import fetching_mode, running_background
from service.db.engine import create_engine
from service.intake.auth import Authenticator, build_authenticator
from service.intake.committer import GroupCommitter
from service.intake.controller import webhook_handler
from service.intake.endpoint import IntakeApp, IntakeEndpoint
from service.intake.oauth import OAuthTokenController
from service.settings import Settings
from service.store.following import Follower
from service.ui.controller import console_handlers
from service.ui.controller import template_config as console_template_config
from service.web.client import new_http_client
from service.web.openapi import (
    document_responses,
    schema_assets,
    security_components,
    swagger_ui,
)
from service.web.problems import EXCEPTION_HANDLERS
from service.web.serving import API_MAX_BODY_BYTES, strict_transport_security
from service.web.throttle import FailureThrottle, throttle_middleware


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    http_client: httpx.AsyncClient | None = None,
    background: bool = False,
) -> Litestar:
    """The service's ASGI app.

    `engine` and `http_client` may be passed in (tests, `serve` sharing them with background
    work); otherwise the lifespan creates them from `settings` and closes them on shutdown.
    With `background`, the lifespan also runs the fetcher and its NOTIFY listener.
    """
    if settings.database_url is None and engine is None:
        raise ValueError("create_app needs settings.database_url or an engine")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own_engine = engine is None
        own_client = http_client is None
        app_engine = engine or create_engine(settings.database_url or "")
        client = http_client or new_http_client(settings.paxos_max_connections)
        committer = GroupCommitter(app_engine)
        # The read API, console pages, exports and the feed read here (DATABASE_READ_URL).
        read_engine = (
            create_engine(settings.database_read_url) if settings.database_read_url else None
        )
        # GET /feed's horizon and wake-up, shared by every reader of this process. The horizon
        # is always the primary's; with a replica, reads wait for it to replay that far.
        feed = Follower(app_engine, settings.database_url, replica=read_engine is not None)
        try:
            authenticator: Authenticator = await build_authenticator(settings, app_engine, client)
            app.state.update(
                settings=settings,
                engine=app_engine,
                reader=read_engine or app_engine,
                http_client=client,
                committer=committer,
                authenticator=authenticator,
                feed=feed,
            )
            committer.start()
            async with AsyncExitStack() as stack:
                if background:
                    app.state.background = await stack.enter_async_context(
                        running_background(settings, app_engine, client)
                    )
                yield
        finally:
            await feed.close()
            await committer.stop()
            if own_client:
                await client.aclose()
            if own_engine:
                await app_engine.dispose()
            if read_engine is not None:
                await read_engine.dispose()

    def provide_settings() -> Settings:
        return settings

    fetching = fetching_mode(settings, background=background)

    def provide_fetching() -> str:
        return fetching

    # One throttle for every route: the intake's endpoint (which answers before the router) and
    # the middleware in front of every other route count against the same addresses.
    throttle = FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_s)

    def intake(state: State) -> IntakeEndpoint:
        return IntakeEndpoint(state, throttle, settings.webhook_max_body_bytes)

    app = IntakeApp(
        intake=intake,
        route_handlers=[
            webhook_handler(settings.webhook_max_body_bytes),
            EventController,
            FeedController,
            HealthController,
            OAuthTokenController,
            MetricsController,
            AdminController,
            ReconciliationController,
            AuditController,
            IdentityController,
            TransferController,
            OrchestrationController,
            ProjectionAdminController,
            SubscriptionController,
            *console_handlers(),
            schema_assets(),
        ],
        template_config=console_template_config(),
        # Handlers take `engine` and `settings` as parameters instead of reading app.state.
        dependencies={
            "engine": Provide(provide_engine, sync_to_thread=False),
            # Read-only handlers take `reader`: the replica when one is configured.
            "reader": Provide(provide_reader, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            # `on`, `workers` or `off` (no Paxos credentials): /health/ready reports it.
            "fetching": Provide(provide_fetching, sync_to_thread=False),
            "feed": Provide(provide_feed, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Paxos Event Store",
            version=__version__,
            description="Durable intake of Paxos webhooks, the full events, and their history.",
            path="/schema",
            render_plugins=[swagger_ui()],
            components=security_components(settings),
        ),
        # Outermost: a throttled address is refused before any credential is looked at.
        middleware=[throttle_middleware(throttle)],
        # Every route that takes a body reads at most this much unless it says otherwise (the
        # webhook: WEBHOOK_MAX_BODY_BYTES; the console's forms less).
        request_max_body_size=API_MAX_BODY_BYTES,
        # HSTS on every answer over HTTPS, errors and 429s included.
        before_send=[strict_transport_security, read_primary_after_writes(settings)],
        debug=False,
        # Logging is configured once by the CLI (service.telemetry.logs), not by the framework.
        logging_config=None,
    )
    document_responses(app, settings)
    return app


def provide_engine(state: State) -> AsyncEngine:
    """The app's engine, which the lifespan creates (or was given) and puts in `state`."""
    return cast(AsyncEngine, state.engine)


# A browser that just changed something (a console POST, then the page it is sent to) reads
# the primary for this long, so it sees its own change whatever the replica's lag.
READ_PRIMARY_COOKIE = "paxos-read-primary"
READ_PRIMARY_S = 5
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def provide_reader(request: Request[Any, Any, State]) -> AsyncEngine:
    """The engine reads go to: the replica's (DATABASE_READ_URL) or, without one or right
    after this client's own write, the primary's."""
    state = request.app.state
    if request.cookies.get(READ_PRIMARY_COOKIE):
        return cast(AsyncEngine, state.engine)
    return cast(AsyncEngine, state.reader)


def read_primary_after_writes(settings: Settings) -> BeforeMessageSendHookHandler:
    """Litestar `before_send` hook: with a replica, a successful write answers with a short
    cookie that sends the same browser's next reads to the primary."""
    cookie = f"{READ_PRIMARY_COOKIE}=1; Max-Age={READ_PRIMARY_S}; Path=/; HttpOnly; SameSite=Lax"

    async def hook(message: Message, scope: Scope) -> None:
        if (
            settings.database_read_url is None
            or message["type"] != "http.response.start"
            or scope.get("method") in _SAFE_METHODS
            or message["status"] >= 400
        ):
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        header = (b"set-cookie", (cookie + secure).encode())
        message["headers"] = [*message.get("headers", ()), header]

    return hook


def provide_feed(state: State) -> Follower:
    """The process's feed follower, which the lifespan creates and closes."""
    return cast(Follower, state.feed)
