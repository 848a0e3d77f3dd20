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
from litestar.openapi.plugins import SwaggerRenderPlugin
from sqlalchemy.ext.asyncio import AsyncEngine

from service import __version__
from service.api.admin import AdminController
from service.api.audit import AuditController
from service.api.events import EventController
from service.api.health import HealthController
from service.api.metrics import MetricsController
from service.api.projections import (
    IdentityController,
    OrchestrationController,
    ProjectionAdminController,
    TransferController,
)
from service.api.reconciliation import ReconciliationController
from service.background import running_background
from service.db.engine import create_engine
from service.intake.auth import Authenticator, build_authenticator
from service.intake.committer import GroupCommitter
from service.intake.controller import webhook_handler
from service.intake.oauth import OAuthTokenController
from service.settings import Settings
from service.ui.controller import console_handlers
from service.ui.controller import template_config as console_template_config
from service.web.client import new_http_client
from service.web.openapi import document_responses, security_components
from service.web.problems import EXCEPTION_HANDLERS
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
        try:
            authenticator: Authenticator = await build_authenticator(settings, app_engine, client)
            app.state.update(
                settings=settings,
                engine=app_engine,
                http_client=client,
                committer=committer,
                authenticator=authenticator,
            )
            committer.start()
            async with AsyncExitStack() as stack:
                if background:
                    app.state.background = await stack.enter_async_context(
                        running_background(settings, app_engine, client)
                    )
                yield
        finally:
            await committer.stop()
            if own_client:
                await client.aclose()
            if own_engine:
                await app_engine.dispose()

    def provide_settings() -> Settings:
        return settings

    app = Litestar(
        route_handlers=[
            webhook_handler(settings.webhook_max_body_bytes),
            EventController,
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
            *console_handlers(),
        ],
        template_config=console_template_config(),
        # Handlers take `engine` and `settings` as parameters instead of reading app.state.
        dependencies={
            "engine": Provide(provide_engine, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="Paxos Event Store",
            version=__version__,
            description="Durable intake of Paxos webhooks, the full events, and their history.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=security_components(settings),
        ),
        # Outermost: a throttled address is refused before any credential is looked at.
        middleware=[
            throttle_middleware(
                FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_s)
            )
        ],
        debug=False,
        # Logging is configured once by the CLI (service.telemetry.logs), not by the framework.
        logging_config=None,
    )
    document_responses(app, settings)
    return app


def provide_engine(state: State) -> AsyncEngine:
    """The app's engine, which the lifespan creates (or was given) and puts in `state`."""
    return cast(AsyncEngine, state.engine)
