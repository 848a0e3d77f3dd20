"""Signing in to the console with a read or admin token, and signing out."""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.ui.errors import ConsoleError
from service.ui.pages import checked_form, page, read_form
from service.ui.session import (
    LOGIN_CSRF_COOKIE,
    LOGIN_FORM_TTL_S,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Session,
    cookie,
    csrf_ok,
    expire,
    issue,
    session_key,
)
from service.web.auth import role_of


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/events"


class SignInPages(Controller):
    path = "/"

    @get("/", name="ui-home")
    async def home(self) -> Redirect:
        return Redirect("/ui/events", status_code=303)

    @get("/login")
    async def login_form(
        self, request: Request[Any, Any, State], signed_in: NamedDependency[Session | None]
    ) -> Template:
        csrf = secrets.token_urlsafe(24)
        template = page(
            "login.html",
            signed_in,
            csrf=csrf,
            next=safe_next(request.query_params.get("next")),
            problem=None,
        )
        template.cookies.append(cookie(request, LOGIN_CSRF_COOKIE, csrf, LOGIN_FORM_TTL_S))
        return template

    @post("/login", status_code=303)
    async def login(
        self,
        request: Request[Any, Any, State],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await read_form(request)
        if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
            raise ConsoleError(
                status_code=403,
                detail="The sign-in form has expired or did not come from this console. "
                "Open the sign-in page again.",
            )
        token = str(form.get("token") or "").strip()
        role = role_of(settings, token) if token else None
        if role is None:
            csrf = secrets.token_urlsafe(24)
            template = page(
                "login.html",
                None,
                status_code=401,
                csrf=csrf,
                next=safe_next(form.get("next")),
                problem="That is not a valid read or admin token.",
            )
            template.cookies.append(cookie(request, LOGIN_CSRF_COOKIE, csrf, LOGIN_FORM_TTL_S))
            return template
        value, _ = issue(await session_key(request, engine), role, token)
        response = Redirect(safe_next(form.get("next")), status_code=303)
        response.set_cookie(cookie(request, SESSION_COOKIE, value, SESSION_TTL_S))
        expire(response, request, LOGIN_CSRF_COOKIE)
        return response

    @post("/logout", status_code=303)
    async def logout(
        self, request: Request[Any, Any, State], session: NamedDependency[Session]
    ) -> Redirect:
        await checked_form(request, session, admin=False)
        response = Redirect("/ui/login", status_code=303)
        expire(response, request, SESSION_COOKIE)
        return response
