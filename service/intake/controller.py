"""POST /webhooks/paxos: authenticate, bound the body, validate, commit, and only then answer."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec

from service.domain.notification import (
    NotANotification,
    Notification,
    NotJSON,
    decode_notification,
)
from service.intake.auth import Authenticator
from service.intake.committer import CommitFailed, GroupCommitter
from service.telemetry import metrics
from service.web.openapi import (
    NOTIFICATION_SCHEMA,
    WEBHOOK_AUTH_OPT,
    problem,
    request_body_operation,
)
from service.web.problems import Problem, StoreUnavailable

log = structlog.get_logger(__name__)

# How long a delivery may wait for its commit before we give up and answer 503. Paxos retries
# a 503, and a retry of something that did commit after all is answered "duplicate".
COMMIT_TIMEOUT_S = 10.0

_encoder = msgspec.json.Encoder()


class WebhookAnswer(msgspec.Struct, frozen=True):
    id: str
    status: str  # "accepted" | "duplicate"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def webhook_handler(max_body_bytes: int) -> HTTPRouteHandler:
    """The intake route, with the body limit from the settings."""

    @post(
        "/webhooks/paxos",
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
    async def receive_webhook(request: Request[Any, Any, State]) -> Response[bytes]:
        try:
            notification, new = await _receive(request)
        except Problem as problem:
            metrics.WEBHOOK_REJECTIONS.labels(reason=problem.type_slug).inc()
            raise
        outcome = "accepted" if new else "duplicate"
        metrics.WEBHOOKS.labels(outcome=outcome, type=metrics.type_label(notification.type)).inc()
        answer = WebhookAnswer(str(notification.id), outcome)
        return Response(_encoder.encode(answer), media_type="application/json", status_code=200)

    async def _receive(request: Request[Any, Any, State]) -> tuple[Notification, bool]:
        state = request.app.state
        authenticator: Authenticator = state.authenticator
        committer: GroupCommitter = state.committer

        await authenticator.authenticate(request.headers)
        content_type = request.headers.get("content-type", "")
        if not _is_json(content_type):
            raise Problem(
                "Content-Type must be application/json",
                status_code=415,
                type_slug="unsupported-media-type",
            )
        try:
            body = await request.body()
        except RequestEntityTooLarge:
            # Refused from Content-Length, or as soon as the streamed bytes pass the limit:
            # an oversized body is never read in full.
            raise Problem(
                f"body is larger than WEBHOOK_MAX_BODY_BYTES ({max_body_bytes} bytes)",
                status_code=413,
                type_slug="body-too-large",
            ) from None
        except InternalServerException:
            # The client went away mid-body: nobody is left to answer, nothing was stored.
            raise Problem(
                "request body was cut short", status_code=400, type_slug="truncated-body"
            ) from None
        try:
            notification = decode_notification(body)
        except NotJSON as exc:
            raise Problem(str(exc), status_code=400, type_slug="invalid-json") from None
        except NotANotification as exc:
            raise Problem(str(exc), status_code=422, type_slug="invalid-notification") from None

        try:
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own,
            # a measurable cost on the hot path.
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                new = await committer.submit(notification, body.decode())
        except (CommitFailed, TimeoutError) as exc:
            log.warning(
                "webhook not stored", event_id=str(notification.id), reason=str(exc) or "timeout"
            )
            raise StoreUnavailable() from None
        return notification, new

    return receive_webhook
