"""POST /webhooks/paxos as Litestar sees it: its OpenAPI description, and a route to the
intake endpoint (`service.intake.endpoint`) for what `IntakeApp` does not take first."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ASGIApp

from service.intake.endpoint import INTAKE_PATH, IntakeApp, WebhookAnswer
from service.web.openapi import (
    NOTIFICATION_SCHEMA,
    WEBHOOK_AUTH_OPT,
    problem,
    request_body_operation,
)


def webhook_handler(max_body_bytes: int) -> HTTPRouteHandler:
    """The intake route, with the body limit from the settings."""

    @post(
        INTAKE_PATH,
        request_max_body_size=max_body_bytes,
        summary="Receive a Paxos webhook notification",
        description=(
            "Answers 200 only after the notification is committed. A known id answers "
            "`duplicate` and only counts the delivery."
        ),
        tags=["paxos"],
        status_code=200,
        responses={
            200: ResponseSpec(
                WebhookAnswer, description="Stored (or already known).", generate_examples=False
            ),
            400: problem("The body is not JSON, or was cut short."),
            413: problem("The body is larger than WEBHOOK_MAX_BODY_BYTES."),
            415: problem("Content-Type is not JSON."),
            422: problem("JSON that is not a notification; `detail` names the field."),
            503: problem("The store is unavailable; nothing was stored, retry."),
        },
        opt={WEBHOOK_AUTH_OPT: True},
        operation_class=request_body_operation(
            "application/json", NOTIFICATION_SCHEMA, "A Paxos webhook notification."
        ),
    )
    async def receive_webhook(request: Request[Any, Any, State]) -> ASGIApp:
        # `IntakeApp` answers POST /webhooks/paxos before routing; a request it did not take
        # (a spelling of the path that only the router folds into this one) is answered by the
        # same endpoint here, behind the router's throttle middleware and HSTS hook.
        app = request.app
        if not isinstance(app, IntakeApp):
            raise TypeError("the intake route needs an IntakeApp")
        return app.intake.routed

    return receive_webhook
