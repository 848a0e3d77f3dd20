"""Tokens and roles: bearer tokens of the read and admin API (API_READ_TOKENS,
API_ADMIN_TOKENS), the guards that demand them, and constant-time secret comparison.

The console (`service.ui.session`) signs people in with the same tokens and the same
`role_of`; the webhook authenticators (`service.intake.auth`) compare their secrets with
`matches_any`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.settings import Settings
from service.web.problems import Forbidden, Unauthenticated

Role = Literal["read", "admin"]


def matches_any(candidate: str, secrets: Iterable[str]) -> bool:
    """True if `candidate` equals one of `secrets`, in time independent of where they differ.

    Every secret is compared (no early exit), so timing does not tell which one matched.
    """
    given = candidate.encode()
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret.encode())
    return found


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def role_of(settings: Settings, token: str) -> Role | None:
    """The role `token` grants, or None. Both lists are checked in full, in constant time, so
    timing does not say which list a token is in."""
    is_admin = matches_any(token, settings.api_admin_tokens)
    is_reader = matches_any(token, settings.api_read_tokens)
    if is_admin:
        return "admin"
    if is_reader:
        return "read"
    return None


def _role(connection: ASGIConnection[Any, Any, Any, Any]) -> Role:
    # Guards get the connection, not the handler's dependencies: settings come from the state.
    settings: Settings = connection.app.state.settings
    token = bearer_token(connection.headers)
    if token is None:
        raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
    role = role_of(settings, token)
    if role is None:
        raise Unauthenticated("invalid bearer token")
    return role


def require_read(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a read or admin token."""
    _role(connection)


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: an admin token; a read token gets 403."""
    if _role(connection) != "admin":
        raise Forbidden("this route needs an admin token")
