"""What every console page shares: who is signed in, forms checked before they act, the page.

Handlers take the person's session as a parameter: `session` (signed in, or the sign-in page
instead) or `signed_in` (None when nobody is), both provided by the console's router.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import MultiDict, State
from litestar.di import NamedDependency, Provide
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.ui.errors import ConsoleError, SignInRequired
from service.ui.session import SESSION_COOKIE, Session, csrf_ok, session_key
from service.ui.session import read as read_session

PAGE_SIZE = 50

NOTICES = {
    "refetch": "A new Get Event is scheduled; the fetcher takes it up within seconds.",
    "bulk": "The selected events are scheduled for a new Get Event.",
    "none": "Nothing was selected.",
}


async def current_session(
    request: Request[Any, Any, State],
    engine: NamedDependency[AsyncEngine],
    settings: NamedDependency[Settings],
) -> Session | None:
    """The session the request's cookie stands for, or None."""
    key = await session_key(request, engine)
    return read_session(key, settings, request.cookies.get(SESSION_COOKIE))


async def required_session(
    request: Request[Any, Any, State],
    engine: NamedDependency[AsyncEngine],
    settings: NamedDependency[Settings],
) -> Session:
    """The session the request's cookie stands for; without one, the sign-in page instead."""
    session = await current_session(request, engine, settings)
    if session is None:
        raise SignInRequired()
    return session


DEPENDENCIES = {
    "session": Provide(required_session),
    "signed_in": Provide(current_session),
}


async def read_form(request: Request[Any, Any, State]) -> MultiDict[Any]:
    """The request's form fields, every value of each."""
    return MultiDict((await request.form()).multi_items())


async def checked_form(
    request: Request[Any, Any, State], session: Session, *, admin: bool
) -> MultiDict[Any]:
    """The form of a POST that changes something: its CSRF field checked, then the role."""
    form = await read_form(request)
    if not csrf_ok(session.csrf, form.get("csrf")):
        raise ConsoleError(
            status_code=403,
            detail="This form has expired or did not come from this console. Reload the page "
            "and try again.",
        )
    if admin and not session.is_admin:
        raise ConsoleError(status_code=403, detail="This action needs an admin token.")
    return form


def page(name: str, session: Session | None, status_code: int = 200, **context: Any) -> Template:
    """Template `name` rendered for `session` (the header shows who is signed in)."""
    return Template(name, context={"session": session, **context}, status_code=status_code)
