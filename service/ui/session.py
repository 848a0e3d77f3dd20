"""Console sessions: a signed cookie that says who signed in, and the CSRF token of its forms.

A person signs in once with a read or admin token (the same `API_READ_TOKENS` and
`API_ADMIN_TOKENS` as the API). The cookie then holds the role, an expiry, a random CSRF
token, and a keyed digest of the token (never the token itself), all signed with HMAC-SHA256
under a key kept in the database (`service_keys`, created on first use), so every process of
a deployment accepts every other's sessions, and sessions survive restarts. Each request
checks the digest against the tokens configured *now*: removing a token from the settings
ends the sessions opened with it.

The cookie is HttpOnly, SameSite=Strict, and Secure when the request came over HTTPS (to the
service itself, or as the X-Forwarded-Proto of a proxy in TRUSTED_PROXIES says; from anyone
else that header is ignored: `service.web.serving`).
Every form that changes something carries the session's CSRF token in a hidden field, checked
in constant time; the sign-in form, which has no session yet, is checked the same way against
a short-lived cookie set with the form (double submit).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import Cookie
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.store.keys import load_service_key
from service.web.auth import Role

SESSION_COOKIE = "pes_session"
LOGIN_CSRF_COOKIE = "pes_login_csrf"
SESSION_TTL_S = 12 * 3600
LOGIN_FORM_TTL_S = 3600
KEY_NAME = "ui_session_signing"


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in: their role and the CSRF token their forms must carry."""

    role: Role
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class _Payload(msgspec.Struct, array_like=True, frozen=True):
    role: str
    token_digest: str
    csrf: str
    expires: int


async def load_session_key(engine: AsyncEngine) -> bytes:
    """The HMAC key of console sessions, shared by every process."""
    return await load_service_key(engine, KEY_NAME)


async def session_key(request: Request[Any, Any, Any], engine: AsyncEngine) -> bytes:
    """This process's copy of the session key (read from the database once, then kept in the
    app's state)."""
    state = request.app.state
    key: bytes | None = state.get("ui_session_key")
    if key is None:
        key = await load_session_key(engine)
        state.ui_session_key = key
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, b"session\x00" + body, hashlib.sha256).digest()


def token_digest(key: bytes, token: str) -> str:
    """A keyed digest of a token: lets a cookie name its token without holding it."""
    return hmac.new(key, b"token\x00" + token.encode(), hashlib.sha256).hexdigest()


def issue(key: bytes, role: Role, token: str, *, now: float | None = None) -> tuple[str, Session]:
    """A new session cookie value for a person who signed in with `token`."""
    csrf = secrets.token_urlsafe(24)
    expires = int(now if now is not None else time.time()) + SESSION_TTL_S
    body = msgspec.json.encode(_Payload(role, token_digest(key, token), csrf, expires))
    return f"{_b64(body)}.{_b64(_sign(key, body))}", Session(role, csrf)


def read(key: bytes, settings: Settings, value: str | None) -> Session | None:
    """The session a cookie value stands for, or None if it is absent, forged, expired, or its
    token is no longer configured for its role."""
    if not value or value.count(".") != 1 or len(value) > 1000:
        return None
    body_text, signature_text = value.split(".")
    try:
        body, signature = _unb64(body_text), _unb64(signature_text)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(signature, _sign(key, body)):
        return None
    try:
        payload = msgspec.json.decode(body, type=_Payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if payload.expires < time.time() or payload.role not in ("read", "admin"):
        return None
    tokens = settings.api_admin_tokens if payload.role == "admin" else settings.api_read_tokens
    # Every configured token is compared (no early exit).
    found = False
    for token in tokens:
        found |= hmac.compare_digest(payload.token_digest, token_digest(key, token))
    if not found:
        return None
    role: Role = "admin" if payload.role == "admin" else "read"
    return Session(role, payload.csrf)


def is_https(request: Request[Any, Any, Any]) -> bool:
    """Whether the request came over HTTPS (behind a proxy in TRUSTED_PROXIES: as its
    X-Forwarded-Proto says, which uvicorn has already applied to the scheme)."""
    return request.url.scheme == "https"


def cookie(request: Request[Any, Any, Any], name: str, value: str, max_age: int) -> Cookie:
    """A console cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, scoped to /ui."""
    return Cookie(
        key=name,
        value=value,
        path="/ui",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def expire(response: Response[Any], request: Request[Any, Any, Any], name: str) -> None:
    """Remove cookie `name` from the browser."""
    response.set_cookie(cookie(request, name, "", 0))


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Whether a form's CSRF field matches, compared in constant time."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
