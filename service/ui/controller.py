"""The operator console under /ui: server-rendered pages, htmx only for live parts.

Every page works without JavaScript: filters are GET forms, actions are POST forms that
redirect (303) to the page showing their effect. htmx, when present, refreshes the events
list and polls job progress. Reads go through the same store functions as the API; actions
through the same ones as the admin API (`make_due`, `create_job`).

This module assembles the console: its pages (one module per area), what they share (the
session dependencies, error pages, security headers), its static files and its templates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Router
from litestar.plugins.htmx import HTMXRequest
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from service.ui import filters, labels
from service.ui.activity import ActivityPages
from service.ui.errors import EXCEPTION_HANDLERS, security_headers, static_headers
from service.ui.events import EventPages
from service.ui.identities import IdentityPages
from service.ui.pages import DEPENDENCIES, PAGE_SIZE
from service.ui.pipeline import PipelinePages
from service.ui.signin import SignInPages
from service.ui.subscriptions import SubscriptionPages
from service.ui.transfers import TransferPages
from service.web.serving import FORM_MAX_BODY_BYTES

HERE = Path(__file__).resolve().parent


def console_handlers() -> list[Any]:
    """The console's routes and its static files (htmx, CSS, a few lines of JS)."""
    return [
        Router(
            "/ui",
            route_handlers=[
                SignInPages,
                EventPages,
                IdentityPages,
                TransferPages,
                PipelinePages,
                ActivityPages,
                SubscriptionPages,
            ],
            dependencies=DEPENDENCIES,
            exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
            after_request=security_headers,
            request_class=HTMXRequest,
            # Forms only, and small: anyone may post the sign-in form.
            request_max_body_size=FORM_MAX_BODY_BYTES,
            include_in_schema=False,
        ),
        create_static_files_router(
            path="/ui/static",
            directories=[HERE / "static"],
            name="ui-static",
            include_in_schema=False,
            after_request=static_headers,
        ),
    ]


def _configure(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.filters["utc"] = filters.utc
    env.filters["age"] = filters.age
    env.filters["job_label"] = labels.job_label
    env.filters["job_value"] = labels.job_value
    env.globals["page_size"] = PAGE_SIZE


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja templates of the console (autoescaped)."""
    return TemplateConfig(
        directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_configure
    )
