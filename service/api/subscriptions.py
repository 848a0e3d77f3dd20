"""Admin routes of push subscriptions: create (the secret is shown once), read, change, pause
and resume, rotate the secret, replay, delete.

Bodies are checked field by field: JSON that is not what the documented schema describes is a
422 problem naming the field; values the schema allows but the service refuses (a URL that is
not http(s) or leads to a private address, a time without an offset) are a 400 naming it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, HttpMethod, Request, Response, delete, get, patch, post, route
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.settings import Settings
from service.store import subscriptions as store
from service.web.auth import require_admin
from service.web.openapi import problem, request_body_operation
from service.web.problems import Problem
from service.web.ssrf import check_url
from service.web.standard_webhooks import format_secret, new_secret
from service.web.subscription_rules import (
    DEFAULT_MAX_IN_FLIGHT,
    MAX_POSITION,
    MAX_TYPES,
    NAME,
    NAME_RULE,
    PRINTABLE_TYPE,
    parse_time,
    type_problem,
)


class SubscriptionOut(msgspec.Struct, frozen=True):
    name: str
    url: str
    types: list[str]
    include_test: bool
    state: str  # active | paused | failing
    max_in_flight: int
    position: int  # the journal position read up to
    lag_events: int
    lag_seconds: float
    pending: int
    in_flight: int
    last_error: str | None
    last_error_at: datetime | None
    deliveries: dict[str, int]  # attempts by outcome
    previous_secret_valid_until: datetime | None
    created_at: datetime
    updated_at: datetime


class CreatedSubscription(SubscriptionOut, frozen=True):
    secret: str  # whsec_...: shown in this answer only


class SubscriptionList(msgspec.Struct, frozen=True):
    items: list[SubscriptionOut]


class RotatedSecret(msgspec.Struct, frozen=True):
    name: str
    secret: str  # the new one: shown in this answer only
    previous_secret_valid_until: datetime  # until then both secrets sign


def _out(view: store.SubscriptionView) -> dict[str, Any]:
    counts = dict.fromkeys(store.OUTCOMES, 0) | view.deliveries
    return {
        "name": view.name,
        "url": view.url,
        "types": view.types,
        "include_test": view.include_test,
        "state": view.state,
        "max_in_flight": view.max_in_flight,
        "position": view.position,
        "lag_events": view.lag_events,
        "lag_seconds": round(view.lag_seconds, 3),
        "pending": view.pending,
        "in_flight": view.in_flight,
        "last_error": view.last_error,
        "last_error_at": view.last_error_at,
        "deliveries": counts,
        "previous_secret_valid_until": view.previous_secret_until,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


# --- bodies: the documented schemas, and their checks ----------------------------------------

_TYPES = Schema(
    type=OpenAPIType.ARRAY,
    max_items=MAX_TYPES,
    items=Schema(type=OpenAPIType.STRING, pattern=r"^[\x21-\x7e]{1,200}$"),
    description="Exact types or prefixes such as `transfer.*`; empty or absent: every type.",
)
_URL = Schema(type=OpenAPIType.STRING, max_length=2048, description="An http(s) URL.")
_MAX_IN_FLIGHT = Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=256)
_CREATE_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["name", "url"],
    properties={
        "name": Schema(type=OpenAPIType.STRING, pattern=f"^{NAME.pattern}$"),
        "url": _URL,
        "types": _TYPES,
        "include_test": Schema(type=OpenAPIType.BOOLEAN),
        "start": Schema(
            type=OpenAPIType.STRING,
            description='"now" (default), "beginning", or an RFC 3339 time.',
        ),
        "max_in_flight": _MAX_IN_FLIGHT,
    },
    additional_properties=False,
)
_PATCH_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "state": Schema(type=OpenAPIType.STRING, enum=["active", "paused"]),
        "url": _URL,
        "types": _TYPES,
        "include_test": Schema(type=OpenAPIType.BOOLEAN),
        "max_in_flight": _MAX_IN_FLIGHT,
    },
    additional_properties=False,
)
_REPLAY_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "after": Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_POSITION),
        "since": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME),
    },
    min_properties=1,
    max_properties=1,
    additional_properties=False,
    description="Exactly one of `after` (a position) or `since` (an RFC 3339 time).",
)


def _invalid(field: str, message: str) -> Problem:
    """JSON that is not what the schema says: 422 naming the field."""
    return Problem(f"{field}: {message}", status_code=422, type_slug="invalid-field", field=field)


def _refused(field: str, message: str) -> Problem:
    """A value the schema allows but the service refuses: 400 naming the field."""
    return Problem(f"{field}: {message}", status_code=400, type_slug="refused-value", field=field)


async def _object(request: Request[Any, Any, State], allowed: set[str]) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(await request.body())
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise Problem("body is not valid JSON", status_code=400, type_slug="invalid-json") from None
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    for key in body:
        if key not in allowed:
            raise _invalid(str(key), "is not a field of this request")
    return body


def _bool(body: dict[str, Any], field: str) -> bool | None:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise _invalid(field, "must be true or false")
    return value


def _types(body: dict[str, Any]) -> list[str] | None:
    value = body.get("types")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_TYPES:
        raise _invalid("types", f"must be a list of at most {MAX_TYPES} strings")
    for item in value:
        if not isinstance(item, str) or not PRINTABLE_TYPE.fullmatch(item):
            raise _invalid("types", "each must be a type of 1 to 200 printable ASCII characters")
        problem_ = type_problem(item)
        if problem_:
            raise _refused("types", problem_)
    return list(dict.fromkeys(value))


def _whole(value: object) -> int | None:
    """A JSON whole number (JSON Schema's `integer` takes 250.0 too), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _max_in_flight(body: dict[str, Any]) -> int | None:
    value = body.get("max_in_flight")
    if value is None:
        return None
    whole = _whole(value)
    if whole is None or not 1 <= whole <= 256:
        raise _invalid("max_in_flight", "must be a whole number from 1 to 256")
    return whole


async def _url(body: dict[str, Any], settings: Settings, *, required: bool) -> str | None:
    value = body.get("url")
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 2048:
        raise _invalid("url", "must be a string of at most 2048 characters")
    problem_ = await check_url(value, allow_private=settings.subscription_allow_private_urls)
    if problem_:
        raise _refused("url", problem_)
    return value


def _time(field: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    when = parse_time(value)
    if isinstance(when, str):
        raise _refused(field, when)
    return when


async def _one(conn: AsyncConnection, name: str) -> dict[str, Any]:
    view = await store.get_subscription(conn, name)
    if view is None:
        raise NotFoundException(f"no subscription named {name!r}")
    return _out(view)


def _allow(methods: str) -> Response[None]:
    return Response(content=None, status_code=204, headers={"Allow": methods})


class SubscriptionController(Controller):
    """The admin routes. Guards are per handler, and the OPTIONS answers are our own, named to
    be registered first (Litestar registers a controller's handlers one at a time, in the order
    of their qualified names, and the OPTIONS handler it would make for a path's first handler
    lists only that handler's method: `Allow: OPTIONS, PATCH` for a path that also takes GET
    and DELETE). A test checks the `Allow` headers."""

    path = "/admin/subscriptions"
    tags = ["subscriptions"]

    @route("/", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
    async def allow_collection(self) -> Response[None]:
        return _allow("GET, OPTIONS, POST")

    @route("/{name:str}", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
    async def allow_one(self) -> Response[None]:
        return _allow("DELETE, GET, OPTIONS, PATCH")

    @post(
        "/",
        guards=[require_admin],
        status_code=201,
        summary="Create a push subscription; the answer holds its signing secret, once",
        responses={
            400: problem("Not JSON, or a value refused (URL, time); `field` names it."),
            409: problem("A subscription of that name exists."),
            422: problem("JSON that is not a subscription; `field` names the field."),
        },
        operation_class=request_body_operation(
            "application/json", _CREATE_SCHEMA, "The subscription to create."
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, State],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
    ) -> CreatedSubscription:
        body = await _object(request, set(_CREATE_SCHEMA.properties or {}))
        name = body.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise _invalid("name", NAME_RULE)
        types = _types(body) or []
        include_test = _bool(body, "include_test") or False
        max_in_flight = _max_in_flight(body) or DEFAULT_MAX_IN_FLIGHT
        start_value = body.get("start", "now")
        start: store.Start = "now"
        since: datetime | None = None
        if start_value in ("now", "beginning"):
            start = start_value
        else:
            since = _time("start", start_value)  # a position, found inside the transaction
        url = await _url(body, settings, required=True)
        assert url is not None
        secret = new_secret()
        async with engine.begin() as conn:
            if since is not None:
                start = await store.position_before(conn, since)
            created = await store.create_subscription(
                conn,
                name=name,
                url=url,
                types=types,
                include_test=include_test,
                max_in_flight=max_in_flight,
                secret=secret,
                start=start,
            )
            if not created:
                raise Problem(
                    f"a subscription named {name!r} exists",
                    status_code=409,
                    type_slug="duplicate-name",
                )
            await store.notify_changed(conn)
        async with engine.connect() as conn:
            out = await _one(conn, name)
        return CreatedSubscription(**out, secret=format_secret(secret))

    @get(
        "/",
        guards=[require_admin],
        summary="Every subscription: state, position, lag, in flight, errors, counts",
    )
    async def list_(self, engine: NamedDependency[AsyncEngine]) -> SubscriptionList:
        async with engine.connect() as conn:
            views = await store.list_subscriptions(conn)
        return SubscriptionList([SubscriptionOut(**_out(v)) for v in views])

    @get(
        "/{name:str}",
        guards=[require_admin],
        summary="One subscription: state, position, lag, in flight, errors",
    )
    async def get_one(
        self, engine: NamedDependency[AsyncEngine], name: FromPath[str]
    ) -> SubscriptionOut:
        async with engine.connect() as conn:
            return SubscriptionOut(**await _one(conn, name))

    @patch(
        "/{name:str}",
        guards=[require_admin],
        summary="Pause or resume (`state`), or change the URL, types, test flag or concurrency",
        responses={
            400: problem("Not JSON, or a value refused (URL); `field` names it."),
            422: problem("JSON that is not a change of subscription; `field` names the field."),
        },
        operation_class=request_body_operation(
            "application/json", _PATCH_SCHEMA, "What to change; absent fields stay."
        ),
    )
    async def change(
        self,
        request: Request[Any, Any, State],
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
        name: FromPath[str],
    ) -> SubscriptionOut:
        body = await _object(request, set(_PATCH_SCHEMA.properties or {}))
        state = body.get("state")
        if state is not None and state not in ("active", "paused"):
            raise _invalid("state", "must be active (resume) or paused")
        types = _types(body)
        include_test = _bool(body, "include_test")
        max_in_flight = _max_in_flight(body)
        url = await _url(body, settings, required=False)
        async with engine.begin() as conn:
            found = await store.update_subscription(
                conn,
                name,
                url=url,
                types=types,
                include_test=include_test,
                max_in_flight=max_in_flight,
                state=state,
            )
            if not found:
                raise NotFoundException(f"no subscription named {name!r}")
            await store.notify_changed(conn)
        async with engine.connect() as conn:
            return SubscriptionOut(**await _one(conn, name))

    @delete(
        "/{name:str}",
        guards=[require_admin],
        status_code=204,
        summary="Delete a subscription and what it had left",
    )
    async def remove(self, engine: NamedDependency[AsyncEngine], name: FromPath[str]) -> None:
        async with engine.begin() as conn:
            if not await store.delete_subscription(conn, name):
                raise NotFoundException(f"no subscription named {name!r}")
            await store.notify_changed(conn)

    @post(
        "/{name:str}/rotate-secret",
        guards=[require_admin],
        status_code=200,
        summary="A new signing secret; the old one also signs for SUBSCRIPTION_SECRET_GRACE_S",
    )
    async def rotate(
        self,
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
        name: FromPath[str],
    ) -> RotatedSecret:
        secret = new_secret()
        async with engine.begin() as conn:
            until = await store.rotate_secret(
                conn, name, secret, settings.subscription_secret_grace_s
            )
            if until is None:
                raise NotFoundException(f"no subscription named {name!r}")
            await store.notify_changed(conn)
        return RotatedSecret(name, format_secret(secret), until)

    @post(
        "/{name:str}/replay",
        guards=[require_admin],
        status_code=200,
        summary="Deliver again every matching event after a position or since a time",
        responses={
            400: problem("Not JSON, or a time without an offset; `field` names it."),
            422: problem("Neither or both of `after` and `since`; `field` names the field."),
        },
        operation_class=request_body_operation(
            "application/json", _REPLAY_SCHEMA, "Where to deliver from."
        ),
    )
    async def replay(
        self,
        request: Request[Any, Any, State],
        engine: NamedDependency[AsyncEngine],
        name: FromPath[str],
    ) -> Response[SubscriptionOut]:
        body = await _object(request, {"after", "since"})
        if len(body) != 1:
            raise _invalid("after", "give exactly one of after (a position) or since (a time)")
        async with engine.begin() as conn:
            if "after" in body:
                after = _whole(body["after"])
                if after is None:
                    raise _invalid("after", "must be a whole number")
                if not 0 <= after <= MAX_POSITION:
                    raise _invalid("after", f"must be from 0 to {MAX_POSITION}")
            else:
                after = await store.position_before(conn, _time("since", body["since"]))
            if not await store.replay(conn, name, after):
                raise NotFoundException(f"no subscription named {name!r}")
            await store.notify_changed(conn)
        async with engine.connect() as conn:
            return Response(SubscriptionOut(**await _one(conn, name)), status_code=200)
