"""Bearer tokens for the read and admin API (API_READ_TOKENS, API_ADMIN_TOKENS)."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.intake.auth import bearer_token, matches_any
from service.settings import Settings
from service.web.problems import Forbidden, Unauthenticated


def _role(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    settings: Settings = connection.app.state.settings
    token = bearer_token(connection.headers)
    if token is None:
        raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
    # Check both lists in full either way, so timing does not say which list a token is in.
    is_admin = matches_any(token, settings.api_admin_tokens)
    is_reader = matches_any(token, settings.api_read_tokens)
    if is_admin:
        return "admin"
    if is_reader:
        return "read"
    raise Unauthenticated("invalid bearer token")


def require_read(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a read or admin token."""
    _role(connection)


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: an admin token; a read token gets 403."""
    if _role(connection) != "admin":
        raise Forbidden("this route needs an admin token")
