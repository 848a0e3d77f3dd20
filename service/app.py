"""The HTTP composition root: `create_app(settings)` assembles routes, resources and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

import httpx
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
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
        # GET /feed's horizon and wake-up, shared by every reader of this process.
        feed = Follower(app_engine, settings.database_url)
        try:
            authenticator: Authenticator = await build_authenticator(settings, app_engine, client)
            app.state.update(
                settings=settings,
                engine=app_engine,
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

    def provide_settings() -> Settings:
        return settings

    fetching = fetching_mode(settings, background=background)

    def provide_fetching() -> str:
        return fetching

    app = Litestar(
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
            "settings": Provide(provide_settings, sync_to_thread=False),
            # `on`, `workers` or `off` (no Paxos credentials): /health/ready reports it.
            "fetching": Provide(provide_fetching, sync_to_thread=False),
            "feed": Provide(provide_feed, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="Paxos Event Store",
            version=__version__,
            description="Durable intake of Paxos webhooks, the full events, and their history.",
            path="/schema",
            render_plugins=[swagger_ui()],
            components=security_components(settings),
        ),
        # Outermost: a throttled address is refused before any credential is looked at.
        middleware=[
            throttle_middleware(
                FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_s)
            )
        ],
        # Every route that takes a body reads at most this much unless it says otherwise (the
        # webhook: WEBHOOK_MAX_BODY_BYTES; the console's forms less).
        request_max_body_size=API_MAX_BODY_BYTES,
        # HSTS on every answer over HTTPS, errors and 429s included.
        before_send=[strict_transport_security],
        debug=False,
        # Logging is configured once by the CLI (service.telemetry.logs), not by the framework.
        logging_config=None,
    )
    document_responses(app, settings)
    return app


def provide_engine(state: State) -> AsyncEngine:
    """The app's engine, which the lifespan creates (or was given) and puts in `state`."""
    return cast(AsyncEngine, state.engine)


def provide_feed(state: State) -> Follower:
    """The process's feed follower, which the lifespan creates and closes."""
    return cast(Follower, state.feed)
