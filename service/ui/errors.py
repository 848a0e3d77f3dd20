"""How the console fails and what every console response carries: error pages (never problem
documents), the sign-in redirect, and the security headers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import structlog
from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.plugins.htmx import HTMXDetails
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from service.db.outages import is_store_outage
from service.ui.session import SESSION_COOKIE, Session
from service.ui.session import read as read_session
from service.web.problems import EXCEPTION_HANDLERS as PROBLEM_HANDLERS

log = structlog.get_logger(__name__)


class SignInRequired(HTTPException):
    status_code = 401


class ConsoleError(HTTPException):
    """An error shown as a console page (not a problem document): status and a plain message."""


def error_page(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """The console's answer to any exception: the sign-in page, or an error page."""
    if isinstance(exc, SignInRequired):
        target = "/ui/login"
        if request.method == "GET" and request.url.path != "/ui/login":
            target += "?" + urlencode({"next": _path_and_query(request)})
        if HTMXDetails(request):
            # htmx does not swap a 401; this tells it to load the sign-in page instead. Not
            # htmx's ClientRedirect: that answers 200 with a JSON `null` body, and a 401 with an
            # empty body is what any other client should see.
            return Response(b"", status_code=401, headers={"HX-Redirect": target})
        return Redirect(target, status_code=303)
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.route_handler.resolve_request_max_body_size()
        status, message = exc.status_code, f"The form is larger than {limit} bytes."
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, exc.detail
    elif is_store_outage(exc):
        log.warning("console: store unavailable", error=type(exc).__name__)
        status, message = 503, "The database cannot be reached just now; try again shortly."
    else:
        log.exception("console: unexpected error", path=request.url.path)
        status, message = HTTP_500_INTERNAL_SERVER_ERROR, "Something went wrong on our side."
    return Template(
        "error.html",
        context={"status": status, "message": message, "session": _session(request)},
        status_code=status,
        headers=dict(SECURITY_HEADERS),
    )


# The same keys as the app's handlers (problem documents), so these win on /ui: Litestar
# picks the handler of the nearest class in the exception's MRO before the nearest layer.
EXCEPTION_HANDLERS = dict.fromkeys(PROBLEM_HANDLERS, error_page)


def _session(request: Request[Any, Any, State]) -> Session | None:
    """Who is signed in, for the error page's navigation: read from the cookie with the key
    this process has already loaded (a handler cannot await here); None if it has not."""
    state = request.app.state
    key, settings = state.get("ui_session_key"), state.get("settings")
    if key is None or settings is None:
        return None
    try:
        return read_session(key, settings, request.cookies.get(SESSION_COOKIE))
    except Exception:  # noqa: BLE001 - an error page must render whatever the cookie holds
        return None


def _path_and_query(request: Request[Any, Any, State]) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


SECURITY_HEADERS = {
    # Everything the console loads comes from the service itself: no CDN, no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


async def security_headers(response: Response[Any]) -> Response[Any]:
    """Every page's security headers (a handler's own value for one of them wins)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def static_headers(response: Response[Any]) -> Response[Any]:
    """The static files' one security header (they are not pages: no CSP, cacheable)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
