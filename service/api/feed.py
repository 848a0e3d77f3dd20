"""GET /feed: full events in journal-position order, gap-safe, as JSON pages (long-polled with
`wait`) or as Server-Sent Events (`Accept: text/event-stream`).

The store reads only below the horizon (`service.store.feed`); the process's `Follower`
(`service.store.following`) keeps it fresh and wakes waiting readers. An SSE stream holds one
page at a time: it reads a page, writes it item by item, awaiting each write (uvicorn pauses
a write while the client's socket is full), and only then reads the next. A slow reader
costs a page of memory and no database connection.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import structlog
from litestar import Controller, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
)
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.schemas import FeedPage
from service.db.outages import STORE_ERRORS
from service.store.feed import FeedEvent, FeedFilter, FeedSlice
from service.store.following import Follower, next_page
from service.web.auth import require_read
from service.web.problems import PROBLEM_JSON, InvalidParameter
from service.web.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_TYPES,
    parse_is_test,
    parse_limit,
    parse_types,
    single_value,
    unknown_parameter,
)

log = structlog.get_logger(__name__)

FEED_PARAMETERS = ("after", "limit", "type", "is_test", "wait")
MAX_WAIT_S = 60.0
MAX_POSITION = 2**63 - 1
KEEP_ALIVE_S = 15.0
EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"


@dataclass(frozen=True, slots=True)
class FeedQuery:
    """A feed request, validated."""

    after: int
    limit: int
    where: FeedFilter
    wait_s: float


def parse_position(name: str, value: str | None) -> int | None:
    """A journal position (0 to 2^63-1), or None when absent."""
    if value is None:
        return None
    if not re.fullmatch(r"\d{1,19}", value) or int(value) > MAX_POSITION:
        raise InvalidParameter(name, f"{value[:40]!r}: must be an integer from 0 to {MAX_POSITION}")
    return int(value)


def parse_wait(value: str | None) -> float:
    """Seconds to long-poll, 0 to 60; 0 when absent."""
    if value is None:
        return 0.0
    if re.fullmatch(r"\d{1,20}(\.\d{0,20})?([eE][-+]?\d{1,3})?", value):
        seconds = float(value)
        if math.isfinite(seconds) and 0 <= seconds <= MAX_WAIT_S:
            return seconds
    raise InvalidParameter("wait", f"{value[:40]!r}: must be a number of seconds from 0 to 60")


def parse_feed_query(request: Request[Any, Any, State]) -> FeedQuery:
    """The feed the request asks for; an `InvalidParameter` naming the first bad parameter.

    `Last-Event-ID` (what an SSE client sends when it reconnects) wins over `after`.
    """
    params = request.query_params
    for name in dict.fromkeys(params.keys()):
        if name not in FEED_PARAMETERS:
            raise unknown_parameter(name, FEED_PARAMETERS)

    def single(name: str) -> str | None:
        return single_value(params, name, "; only type may repeat")

    types, prefixes = parse_types(params.getall("type", []))
    after = parse_position("after", single("after")) or 0
    resume = parse_position(LAST_EVENT_ID, request.headers.get(LAST_EVENT_ID))
    return FeedQuery(
        after=resume if resume is not None else after,
        limit=parse_limit(single("limit")),
        where=FeedFilter(
            types=types, type_prefixes=prefixes, is_test=parse_is_test(single("is_test"))
        ),
        wait_s=parse_wait(single("wait")),
    )


class WireItem(msgspec.Struct, frozen=True):
    """A `FeedItem` as it is encoded: the event's detail passed through as stored."""

    position: int
    event: FeedEvent


class WirePage(msgspec.Struct, frozen=True):
    """A `FeedPage` as it is encoded."""

    items: list[WireItem]
    next_after: int


def encode_page(page: FeedSlice) -> bytes:
    """The store's slice as the JSON of a `FeedPage`."""
    items = [WireItem(position=p, event=e) for p, e in page.items]
    return msgspec.json.encode(WirePage(items=items, next_after=page.next_after))


def sse_message(position: int, event: FeedEvent) -> bytes:
    """One item as an SSE message. JSON escapes line breaks (and the stored detail's text
    has none), so `data` is one line."""
    data = msgspec.json.encode(WireItem(position=position, event=event))
    # An event type is any text Paxos sent: keep it to one line of the field.
    kind = event.type.replace("\r", " ").replace("\n", " ")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (position, kind.encode(), data)


async def event_stream(
    follower: Follower, engine: AsyncEngine, query: FeedQuery
) -> AsyncIterator[bytes]:
    """The feed from `query.after` on, for ever: items as they pass the horizon, and a
    `: keep-alive` comment after each `KEEP_ALIVE_S` without one."""
    after = query.after
    # At once, so a client (or a proxy) sees the stream open before the first event.
    yield b": feed after %d\n\n" % after
    written = time.monotonic()
    while True:
        wait_s = max(0.0, written + KEEP_ALIVE_S - time.monotonic())
        try:
            page = await next_page(
                follower, engine, after=after, limit=query.limit, where=query.where, wait_s=wait_s
            )
        except STORE_ERRORS as exc:
            # The headers are gone: end the stream; the client reconnects with Last-Event-ID.
            log.warning("feed stream ended: store unavailable", error=type(exc).__name__)
            return
        for position, event in page.items:
            yield sse_message(position, event)
            written = time.monotonic()
        if time.monotonic() - written >= KEEP_ALIVE_S:
            yield b": keep-alive\n\n"
            written = time.monotonic()
        after = page.next_after


@dataclass
class FeedOperation(Operation):
    """The feed's parameters (parsed by hand), its 400, and its second media type (SSE)."""

    def __post_init__(self) -> None:
        position = Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_POSITION)
        self.parameters = [
            *(self.parameters or []),
            Parameter(
                name="after",
                param_in="query",
                schema=Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_POSITION, default=0),
                description="Items after this journal position: `next_after` of the last answer.",
            ),
            Parameter(
                name="limit",
                param_in="query",
                schema=Schema(
                    type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT
                ),
                description="Items per answer (per page read, for SSE).",
            ),
            Parameter(
                name="type",
                param_in="query",
                schema=Schema(
                    type=OpenAPIType.ARRAY,
                    items=Schema(type=OpenAPIType.STRING),
                    max_items=MAX_TYPES,
                ),
                explode=True,
                style="form",
                description="Event type, exact or a prefix ending in `.*`; repeat for several.",
            ),
            Parameter(
                name="is_test",
                param_in="query",
                schema=Schema(type=OpenAPIType.BOOLEAN),
                description="`true`: test events only; `false`: real events only; absent: both.",
            ),
            Parameter(
                name="wait",
                param_in="query",
                schema=Schema(type=OpenAPIType.NUMBER, minimum=0, maximum=MAX_WAIT_S, default=0),
                description="Seconds to wait for at least one item (JSON; SSE streams anyway).",
            ),
            Parameter(
                name=LAST_EVENT_ID,
                param_in="header",
                schema=position,
                description="Resume after this position (an SSE client's reconnect); wins "
                "over `after`.",
            ),
        ]
        responses = dict(self.responses or {})
        ok = responses.get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                EVENT_STREAM: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
            }
        responses["400"] = OpenAPIResponse(
            description="A bad parameter; the problem's `parameter` member names it.",
            content={PROBLEM_JSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
        )
        self.responses = responses


class FeedController(Controller):
    path = "/feed"
    tags = ["feed"]
    guards = [require_read]

    @get(
        "/",
        summary="Full events in journal order, gap-safe (JSON pages, long-poll, or SSE)",
        description=(
            "Items are journal rows of full events in increasing position, handed out only "
            "once no transaction that could still commit a lower position is running: pass "
            "`next_after` back as `after` and no event is ever skipped. `next_after` moves past "
            "rows the filters drop. With `Accept: text/event-stream`: Server-Sent Events "
            "(`id` = position, `event` = event type, `data` = the item), resuming after "
            "`Last-Event-ID`, with a `: keep-alive` comment every 15 s."
        ),
        operation_class=FeedOperation,
    )
    async def feed(
        self,
        request: Request[Any, Any, State],
        reader: NamedDependency[AsyncEngine],
        feed: NamedDependency[Follower],
    ) -> Response[FeedPage]:
        query = parse_feed_query(request)
        if EVENT_STREAM in request.headers.get("accept", ""):
            stream = Stream(
                event_stream(feed, reader, query),
                media_type=EVENT_STREAM,
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            # A Stream is a Response too; the annotation documents the JSON answer.
            return cast(Response[FeedPage], stream)
        page = await next_page(
            feed,
            reader,
            after=query.after,
            limit=query.limit,
            where=query.where,
            wait_s=query.wait_s,
        )
        # Encoded here (WirePage passes details through); the annotation documents it.
        return cast(Response[FeedPage], Response(encode_page(page), media_type=MediaType.JSON))
