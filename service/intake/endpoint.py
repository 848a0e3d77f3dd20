"""POST /webhooks/paxos as a plain ASGI endpoint, answered before Litestar routes anything.

The intake is the one route whose rate matters (Paxos's deliveries), and the framework's
per-request machinery (routing, middleware, signature parsing, the Request and Response
objects, exception middleware, before-send hooks) cost more CPU than the work itself:
profiled under wrk, Litestar's layers took a quarter of the server's time (bench/README.md,
2026-12-05). `IntakeApp` hands POST /webhooks/paxos straight to `IntakeEndpoint`, which does
everything those layers did for this route, in the same order, with the same answers:

1. the failed-authentication throttle (`service.web.throttle`): a 401 counts against the
   client's address, and while the address is over its limit a 401 becomes a 429;
2. the sender's authentication (`Authenticator`, constant-time comparisons);
3. `Content-Type` must be JSON (415);
4. the body: refused from `Content-Length` when over WEBHOOK_MAX_BODY_BYTES, or as soon as the
   streamed bytes pass it (413), never read in full; a client gone mid-body stores nothing;
5. `decode_notification` (400 not JSON, 422 not a notification, naming the field);
6. the group commit, 200 only after it (503 with Retry-After when it fails or times out);
7. RFC 7807 problems as `service.web.problems` writes them, HSTS over HTTPS, the metrics.

Every other method and path goes through Litestar as before; the Litestar route of the intake
(`service.intake.controller`) documents it in OpenAPI and serves, through this same endpoint,
any request the exact-path check here does not take.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.types import Receive, Scope, Send

from service.domain.notification import NotANotification, Notification, NotJSON, decode_notification
from service.intake.auth import Authenticator
from service.intake.committer import CommitFailed
from service.telemetry import metrics
from service.web.problems import (
    PROBLEM_JSON,
    Problem,
    StoreUnavailable,
    Unauthenticated,
    problem_body,
)
from service.web.serving import hsts_headers
from service.web.throttle import FailureThrottle, client_address

log = structlog.get_logger(__name__)

INTAKE_PATH = "/webhooks/paxos"

# How long a delivery may wait for its commit before we give up and answer 503. Paxos retries
# a 503, and a retry of something that did commit after all is answered "duplicate".
COMMIT_TIMEOUT_S = 10.0


class WebhookAnswer(msgspec.Struct, frozen=True):
    id: str
    status: str  # "accepted" | "duplicate"


class Committer(Protocol):
    """What the endpoint stores through (`GroupCommitter`; the ceiling benchmark's null one)."""

    async def submit(self, notification: Notification, body: str) -> bool:
        """True if new, False if known; `CommitFailed` if not stored."""


_encoder = msgspec.json.Encoder()
_JSON = [(b"content-type", b"application/json")]
_PROBLEM = [(b"content-type", PROBLEM_JSON.encode())]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class _ClientGone(Exception):
    """The client disconnected before its body was complete: nobody is left to answer."""


class IntakeEndpoint:
    """The webhook intake as an ASGI app; `state` is the app's (the lifespan fills in
    `authenticator` and `committer`), `throttle` the app's failed-authentication throttle."""

    def __init__(self, state: State, throttle: FailureThrottle, max_body_bytes: int) -> None:
        self._state = state
        self._throttle = throttle
        self._max_body_bytes = max_body_bytes
        # prometheus_client's `labels()` looks the child up under a lock on every call.
        self._accepted: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole intake, throttle and HSTS included (called before Litestar)."""
        await self.serve(scope, receive, send, guarded=True)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The intake behind Litestar's router, whose middleware (the throttle) and
        before-send hook (HSTS) already wrap it."""
        await self.serve(scope, receive, send, guarded=False)

    async def serve(self, scope: Scope, receive: Receive, send: Send, *, guarded: bool) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            # Latin-1, as Litestar decodes them: bytes that are not text stay comparable
            # (and never match a key). The first of repeated headers counts.
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        try:
            notification, new = await self._receive(headers, receive)
        except Problem as problem:
            metrics.WEBHOOK_REJECTIONS.labels(reason=problem.type_slug).inc()
            if guarded and isinstance(problem, Unauthenticated):
                client = client_address(scope)
                wait = self._throttle.retry_after(client)
                if wait is not None:
                    metrics.AUTH_THROTTLED.inc()
                    problem = Problem(
                        "too many failed authentications from this address; retry later",
                        status_code=429,
                        type_slug="too-many-failed-authentications",
                        headers={"Retry-After": str(wait)},
                    )
                else:
                    self._throttle.failed(client)
            await self._problem(scope, send, problem, guarded=guarded)
            return
        except _ClientGone:
            return
        except Exception:
            # As service.web.problems.handle_unexpected: the trace to the log, a bare 500 out.
            log.exception("unhandled error", path=scope["path"], method="POST")
            body = problem_body(500, "internal error; it has been logged", instance=scope["path"])
            await _answer(scope, send, 500, _PROBLEM, body, guarded=guarded)
            return
        outcome = "accepted" if new else "duplicate"
        key = (outcome, notification.type)
        counter = self._accepted.get(key)
        if counter is None:
            counter = metrics.WEBHOOKS.labels(
                outcome=outcome, type=metrics.type_label(notification.type)
            )
            if len(self._accepted) < 1000:  # unknown types share "other": bound the cache
                self._accepted[key] = counter
        counter.inc()
        body = _encoder.encode(WebhookAnswer(str(notification.id), outcome))
        await _answer(scope, send, 200, _JSON, body, guarded=guarded)

    async def _receive(
        self, headers: dict[str, str], receive: Receive
    ) -> tuple[Notification, bool]:
        state = self._state
        authenticator: Authenticator = state.authenticator
        await authenticator.authenticate(headers)
        if not _is_json(headers.get("content-type", "")):
            raise Problem(
                "Content-Type must be application/json",
                status_code=415,
                type_slug="unsupported-media-type",
            )
        body = await self._body(headers, receive)
        committer: Committer = state.committer
        try:
            notification = decode_notification(body)
        except NotJSON as exc:
            raise Problem(str(exc), status_code=400, type_slug="invalid-json") from None
        except NotANotification as exc:
            raise Problem(str(exc), status_code=422, type_slug="invalid-notification") from None
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own.
            async with asyncio.timeout(COMMIT_TIMEOUT_S):
                new = await committer.submit(notification, body.decode())
        except (CommitFailed, TimeoutError) as exc:
            log.warning(
                "webhook not stored", event_id=str(notification.id), reason=str(exc) or "timeout"
            )
            raise StoreUnavailable() from None
        return notification, new

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        """The body, refused (413) from Content-Length or as soon as it passes the limit."""
        limit = self._max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise self._too_large()
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> Problem:
        return Problem(
            f"body is larger than WEBHOOK_MAX_BODY_BYTES ({self._max_body_bytes} bytes)",
            status_code=413,
            type_slug="body-too-large",
        )

    @staticmethod
    async def _problem(scope: Scope, send: Send, problem: Problem, *, guarded: bool) -> None:
        body = problem_body(
            problem.status_code,
            problem.detail,
            type_slug=problem.type_slug,
            instance=scope["path"],
            **problem.extensions,
        )
        extra = [(k.lower().encode(), v.encode()) for k, v in (problem.headers or {}).items()]
        await _answer(scope, send, problem.status_code, _PROBLEM + extra, body, guarded=guarded)


async def _answer(
    scope: Scope,
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    guarded: bool,
) -> None:
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    if guarded:
        all_headers += hsts_headers(scope)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class IntakeApp(Litestar):
    """Litestar, with POST /webhooks/paxos handed to `intake` before any routing."""

    __slots__ = ("intake",)

    def __init__(self, *args: Any, intake: Callable[[State], IntakeEndpoint], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.intake = intake(self.state)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in (INTAKE_PATH, INTAKE_PATH + "/")
        ):
            await self.intake(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
