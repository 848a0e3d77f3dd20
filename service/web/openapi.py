"""What the OpenAPI document says beyond each handler's own decorator: auth and error answers.

Answers that come from layers rather than handlers are declared here, once, for every route
(including routes added later): a guarded route may answer 401 (and 403 for a read token on
an admin route), any route but health and the docs may answer 429 (`service.web.throttle`), a
route with a path parameter may answer 404, a route that reads the store may answer 503. The
security schemes say which credentials each route takes, so clients and contract tests
(test_openapi_contract.py, test_security.py) can read them from the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OAuthFlow,
    OAuthFlows,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.response import Response
from litestar.router import Router
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router

from service.domain.stored import EVENT_STATUSES
from service.settings import Settings, WebhookAuth
from service.web.auth import require_admin, require_read
from service.web.problems import PROBLEM_JSON
from service.web.query import DEFAULT_LIMIT, MAX_LIMIT, MAX_TYPES
from service.web.throttle import UNTHROTTLED_PREFIXES

# Names of security schemes, not secrets.
READ_TOKEN = "readToken"  # noqa: S105
ADMIN_TOKEN = "adminToken"  # noqa: S105
WEBHOOK = "paxosWebhook"
# `opt` key a handler sets to take the webhook credentials (WEBHOOK_AUTH) rather than a token.
WEBHOOK_AUTH_OPT = "webhook_auth"


class ProblemDetails(msgspec.Struct, frozen=True):
    """An RFC 7807 problem (`application/problem+json`); extension members may follow."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | msgspec.UnsetType = msgspec.UNSET
    # Names the bad query or path parameter of a 400.
    parameter: str | msgspec.UnsetType = msgspec.UNSET


def problem(description: str) -> ResponseSpec:
    """A documented problem answer."""
    return ResponseSpec(
        data_container=ProblemDetails,
        description=description,
        media_type=PROBLEM_JSON,
        generate_examples=False,
    )


UNAUTHENTICATED = problem("No credentials, or wrong ones (`WWW-Authenticate` says which).")
FORBIDDEN = problem("The token is valid but may not use this route (a read token on /admin).")
THROTTLED = problem(
    "Too many failed authentications from this address; `Retry-After` says when to retry."
)
NOT_FOUND = problem("No such resource.")
BAD_PARAMETER = problem("A bad parameter; the problem's `parameter` member names it.")
STORE_UNAVAILABLE = problem("The database is unreachable; nothing was changed, retry.")
BODY_TOO_LARGE = problem("The body is larger than this route reads (16 KiB unless it says).")


def security_components(settings: Settings) -> Components:
    """The security schemes: bearer tokens of the read API, and what Paxos delivers with."""
    schemes: dict[str, SecurityScheme | Any] = {
        READ_TOKEN: SecurityScheme(
            type="http", scheme="bearer", description="A token from API_READ_TOKENS."
        ),
        ADMIN_TOKEN: SecurityScheme(
            type="http", scheme="bearer", description="A token from API_ADMIN_TOKENS."
        ),
    }
    match settings.webhook_auth:
        case WebhookAuth.API_KEY:
            schemes[WEBHOOK] = SecurityScheme(
                type="apiKey",
                name=settings.webhook_api_key_header,
                security_scheme_in="header",
                description="One of WEBHOOK_API_KEYS.",
            )
        case WebhookAuth.OAUTH:
            schemes[WEBHOOK] = SecurityScheme(
                type="oauth2",
                flows=OAuthFlows(
                    client_credentials=OAuthFlow(token_url="/oauth/token", scopes={})  # noqa: S106
                ),
                description="A token from POST /oauth/token (WEBHOOK_OAUTH_CLIENT_ID/SECRET).",
            )
        case WebhookAuth.JWT:
            schemes[WEBHOOK] = SecurityScheme(
                type="http",
                scheme="bearer",
                bearer_format="JWT",
                description="A JWT from the identity provider of WEBHOOK_JWT_JWKS_URL.",
            )
        case WebhookAuth.NONE:
            pass
    return Components(security_schemes=schemes)


def _layers_have(handler: HTTPRouteHandler, guard: object) -> bool:
    return any(guard in (layer.guards or ()) for layer in handler.ownership_layers)


def document_responses(app: Litestar, settings: Settings) -> None:
    """Declare the layered answers and the security of every route on its handler.

    Runs once, after the app is assembled and before the document is first built; a handler's
    own `responses` and `security` win over what is filled in here.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path_format or "/"
        for handler in route.route_handlers:
            if "OPTIONS" in handler.http_methods and len(handler.http_methods) == 1:
                continue
            extra: dict[int, ResponseSpec] = {}
            security: list[dict[str, list[str]]] | None = None
            # Every guarded route reads its parameters strictly (a 400 problem names the bad one).
            if _layers_have(handler, require_admin):
                extra |= {400: BAD_PARAMETER, 401: UNAUTHENTICATED, 403: FORBIDDEN}
                extra[503] = STORE_UNAVAILABLE
                security = [{ADMIN_TOKEN: []}]
            elif _layers_have(handler, require_read):
                extra |= {400: BAD_PARAMETER, 401: UNAUTHENTICATED, 503: STORE_UNAVAILABLE}
                security = [{READ_TOKEN: []}, {ADMIN_TOKEN: []}]
            elif (
                handler.opt.get(WEBHOOK_AUTH_OPT) and settings.webhook_auth is not WebhookAuth.NONE
            ):
                extra[401] = UNAUTHENTICATED
                security = [{WEBHOOK: []}]
            if security is not None and "{" in path:
                extra[404] = NOT_FOUND
            if not path.startswith(UNTHROTTLED_PREFIXES):
                extra[429] = THROTTLED
            # Every body has a limit (the app's request_max_body_size, or the route's own).
            if getattr(handler.operation_class, "reads_body", False):
                extra[413] = BODY_TOO_LARGE
            handler.responses = {**extra, **(handler.responses or {})}
            if security is not None and handler.security is None:
                handler.security = security


def request_body_operation(media_type: str, schema: Schema, description: str) -> type[Operation]:
    """An Operation that documents a body the handler reads itself (`await request.body()`)."""
    body = RequestBody(
        content={media_type: OpenAPIMediaType(schema=schema)},
        description=description,
        required=True,
    )

    @dataclass
    class BodyOperation(Operation):
        # `document_responses` adds the 413 of a body over the limit.
        reads_body: ClassVar[bool] = True

        def __post_init__(self) -> None:
            self.request_body = body

    return BodyOperation


NOTIFICATION_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["id", "type", "source", "time", "object"],
    properties={
        "id": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.UUID),
        "type": Schema(type=OpenAPIType.STRING, pattern=r"^[\x21-\x7e]{1,200}$"),
        "source": Schema(type=OpenAPIType.STRING, enum=["com.paxos"]),
        "time": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME),
        "object": Schema(type=OpenAPIType.STRING, enum=["event"]),
        "is_test": Schema(type=OpenAPIType.BOOLEAN),
    },
    description="A Paxos webhook notification; unknown members are kept.",
)


# --- listings: parameters their handlers parse by hand ---------------------------------------


def _query_parameter(name: str, schema: Schema, description: str) -> Parameter:
    return Parameter(name=name, param_in="query", schema=schema, description=description)


def _limit_and_cursor(cursor: str) -> list[Parameter]:
    return [
        _query_parameter(
            "limit",
            Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT),
            "Items per page.",
        ),
        _query_parameter("cursor", Schema(type=OpenAPIType.STRING), cursor),
    ]


def _event_query_parameters(*, with_identity_id: bool) -> list[Parameter]:
    string = Schema(type=OpenAPIType.STRING)
    time = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME)
    docs = [
        Parameter(
            name="type",
            param_in="query",
            schema=Schema(type=OpenAPIType.ARRAY, items=string, max_items=MAX_TYPES),
            explode=True,
            style="form",
            description=(
                "Event type, exact (`identity.approved`) or a prefix ending in `.*` "
                "(`identity.*` matches `identity.approved` and "
                "`identity.kyc_refresh.started`). Repeat for several: any may match."
            ),
        ),
        _query_parameter(
            "since", time, "Events at or after this time (RFC 3339 with offset, e.g. `...Z`)."
        ),
        _query_parameter(
            "until", time, "Events before this time (exclusive; RFC 3339 with offset)."
        ),
        _query_parameter(
            "is_test",
            Schema(type=OpenAPIType.BOOLEAN),
            "`true`: sandbox test events only; `false`: real events only; absent: both.",
        ),
        _query_parameter("identity_id", string, "Events about this Paxos identity."),
        _query_parameter(
            "status",
            Schema(type=OpenAPIType.STRING, enum=list(EVENT_STATUSES)),
            "Fetch state of the full event.",
        ),
        _query_parameter(
            "order",
            Schema(type=OpenAPIType.STRING, enum=["desc", "asc"], default="desc"),
            "By event time, then id.",
        ),
        *_limit_and_cursor("`next_cursor` of the previous page, with the same filters and order."),
    ]
    return [d for d in docs if with_identity_id or d.name != "identity_id"]


_EVENT_LIST_BAD_PARAMETER = OpenAPIResponse(
    description="A bad query parameter; the problem's `parameter` member names it.",
    content={PROBLEM_JSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
)


def event_list_operation(*, with_identity_id: bool = True) -> type[Operation]:
    """An Operation that documents the /events query parameters (`parse_query`) and their 400."""
    docs = _event_query_parameters(with_identity_id=with_identity_id)

    @dataclass
    class EventListOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *docs]
            self.responses = {**(self.responses or {}), "400": _EVENT_LIST_BAD_PARAMETER}

    return EventListOperation


def list_operation(filters: dict[str, str]) -> type[Operation]:
    """An Operation that documents a listing's string `filters` (name: description), its
    `limit` and its `cursor`."""
    string = Schema(type=OpenAPIType.STRING)
    docs = [
        *(_query_parameter(n, string, d) for n, d in filters.items()),
        *_limit_and_cursor("`next_cursor` of the previous page, with the same filters."),
    ]

    @dataclass
    class ListOperation(Operation):
        def __post_init__(self) -> None:
            self.parameters = [*(self.parameters or []), *docs]

    return ListOperation


# Swagger UI for /schema, served by the service itself: from a CDN it would be blank without
# internet, and a third party's scripts would run on the origin of the console (/ui). The files
# are the npm package swagger-ui-dist, vendored unchanged (Apache-2.0: static/swagger-ui/LICENSE
# and NOTICE; what the bundle bundles: the *.LICENSE.txt beside it). No PyPI package fits:
# `swagger-ui-bundle` ships Swagger UI 4, which cannot render the OpenAPI 3.1 Litestar writes,
# and `swagger-ui-py` adds ~20 MB of Swagger Editor and PyYAML to the image.
SWAGGER_UI_VERSION = "5.35.0"
SCHEMA_ASSETS_PATH = "/schema/static"
_SWAGGER_UI_FILES = Path(__file__).resolve().parent / "static" / "swagger-ui"


def swagger_ui() -> SwaggerRenderPlugin:
    """Litestar's Swagger UI page, its scripts, style sheet and icon from this service."""
    return SwaggerRenderPlugin(
        js_url=f"{SCHEMA_ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{SCHEMA_ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{SCHEMA_ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{SCHEMA_ASSETS_PATH}/favicon-32x32.png'>",
    )


async def _nosniff(response: Response[Any]) -> Response[Any]:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def schema_assets() -> Router:
    """The Swagger UI files under `SCHEMA_ASSETS_PATH` (no credentials, like /schema)."""
    return create_static_files_router(
        path=SCHEMA_ASSETS_PATH,
        directories=[_SWAGGER_UI_FILES],
        name="schema-static",
        include_in_schema=False,
        after_request=_nosniff,
    )
