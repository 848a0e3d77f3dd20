"""RFC 7807 problem responses: every error the service answers, in one shape.

The error tree, in one place:

    Problem (HTTPException)                 an answer we chose, with a precise detail
    ├── InvalidParameter        400         names the query/path parameter
    ├── Unauthenticated         401
    ├── Forbidden               403
    └── StoreUnavailable        503         nothing was committed; the sender should retry

Database errors that mean "unreachable" (connection refused or lost, pool exhausted: as
`service.db.outages.is_store_outage` tells) become 503 on every route; other database errors
are bugs and become a bare 500.

Litestar's own HTTP exceptions and any unexpected error are converted here too; an unexpected
error becomes a bare 500 problem and its trace goes to the log only, never to the client.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from service.db.outages import STORE_ERRORS, is_store_outage

# Not Litestar's problem_details plugin: its bodies differ (no about:blank, detail as title).
PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://paxos-event-store.dev/problems/"

log = structlog.get_logger(__name__)


class Problem(HTTPException):
    """An HTTP error with a problem `type` slug and optional extension members."""

    type_slug = "error"

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        type_slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail=detail, status_code=status_code, headers=headers)
        if type_slug:
            self.type_slug = type_slug
        self.extensions = extensions


class InvalidParameter(Problem):
    status_code = 400
    type_slug = "invalid-parameter"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}", parameter=parameter)


class Unauthenticated(Problem):
    status_code = 401
    type_slug = "unauthenticated"

    def __init__(self, detail: str, *, scheme: str = "Bearer") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": scheme})


class Forbidden(Problem):
    status_code = 403
    type_slug = "forbidden"


class StoreUnavailable(Problem):
    status_code = 503
    type_slug = "store-unavailable"

    def __init__(
        self, detail: str = "the event store is unavailable; nothing was stored, retry"
    ) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


_encoder = msgspec.json.Encoder()


def problem_body(
    status: int,
    detail: str,
    *,
    type_slug: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> bytes:
    """The JSON of a problem."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + type_slug if type_slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return _encoder.encode(body)


def problem_response(
    status: int,
    detail: str,
    *,
    type_slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> Response[bytes]:
    """A problem+json response."""
    return Response(
        content=problem_body(
            status, detail, type_slug=type_slug, title=title, instance=instance, **extensions
        ),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Our problems, and Litestar's own HTTP exceptions (404, 405, 413, validation)."""
    if isinstance(exc, Problem):
        return problem_response(
            exc.status_code,
            exc.detail,
            type_slug=exc.type_slug,
            headers=exc.headers,
            instance=request.url.path,
            **exc.extensions,
        )
    if isinstance(exc, RequestEntityTooLarge):
        # Litestar's, from the route's `request_max_body_size`: say what the limit is.
        limit = request.route_handler.resolve_request_max_body_size()
        return problem_response(
            exc.status_code,
            f"body is larger than {limit} bytes",
            type_slug="body-too-large",
            instance=request.url.path,
        )
    extensions: dict[str, Any] = {}
    detail = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        # Litestar names the parameter it could not parse; pass that on, nothing else.
        first = exc.extra[0]
        if isinstance(first, dict) and "key" in first:
            extensions["parameter"] = first["key"]
            detail = f"{first['key']}: {first.get('message', 'invalid value')}"
    return problem_response(
        exc.status_code, detail, headers=exc.headers, instance=request.url.path, **extensions
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything else: log it with its trace, answer a bare 500 that reveals nothing."""
    log.exception("unhandled error", path=request.url.path, method=request.method)
    return problem_response(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal error; it has been logged",
        instance=request.url.path,
    )


def handle_store_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The database could not be reached: 503, so clients (and Paxos) retry."""
    if not is_store_outage(exc):
        return handle_unexpected(request, exc)  # a bug in a statement, not an outage
    log.warning("store unavailable", path=request.url.path, error=type(exc).__name__)
    problem = StoreUnavailable("the event store is unavailable; retry shortly")
    return handle_http_exception(request, problem)


EXCEPTION_HANDLERS = {
    HTTPException: handle_http_exception,
    **dict.fromkeys(STORE_ERRORS, handle_store_error),
    Exception: handle_unexpected,
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "Forbidden",
    "InvalidParameter",
    "Problem",
    "StoreUnavailable",
    "Unauthenticated",
    "problem_body",
    "problem_response",
]
