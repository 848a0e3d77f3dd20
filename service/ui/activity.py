"""The activity page: charts of webhooks received, events fetched and Get Events failed, fetch
backlog and lag, and projection lag, over the last hour or day, from the samples every
process records (service/ui/sampler.py, service/store/activity.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Template
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.activity import Bucket, activity
from service.ui.charts import Series, line_chart
from service.ui.errors import ConsoleError
from service.ui.pages import page
from service.ui.session import Session


@dataclass(frozen=True, slots=True)
class Window:
    """A span the page shows: its length, bucket size, and how its per-bucket unit reads."""

    minutes: int
    bucket_minutes: int
    per: str  # "per minute", "per 10 minutes"
    ticks_every: int  # a labelled x tick every so many buckets


WINDOWS = {
    "1h": Window(60, 1, "per minute", 10),
    "24h": Window(24 * 60, 10, "per 10 minutes", 18),
}


def charts(buckets: list[Bucket], window: Window) -> list[Markup]:
    """The page's four charts of `buckets`."""
    times = [b.start for b in buckets]

    def chart(chart_id: str, title: str, y_label: str, *series: Series) -> Markup:
        return line_chart(
            chart_id=chart_id,
            title=title,
            y_label=y_label,
            times=times,
            series=series,
            x_ticks_every=window.ticks_every,
        )

    return [
        chart(
            "chart-flow",
            f"Webhooks received, events fetched and Get Events failed, {window.per}",
            f"events {window.per}",
            Series("webhooks received", "received", [b.received for b in buckets]),
            Series("events fetched", "fetched", [b.fetched for b in buckets]),
            Series("Get Events failed", "failed", [b.failed for b in buckets]),
        ),
        chart(
            "chart-backlog",
            "Fetch backlog: events waiting for their Get Event",
            "pending events",
            Series("pending", "backlog", [b.backlog for b in buckets]),
        ),
        chart(
            "chart-fetch-lag",
            "Fetch lag: how long the oldest pending event has waited",
            "seconds",
            Series(
                "oldest pending",
                "lag",
                [
                    None if b.backlog is None else (b.fetch_lag_s or 0.0)
                    for b in buckets  # nothing pending: no lag
                ],
            ),
        ),
        chart(
            "chart-projection-lag",
            "Projection lag: age of the oldest journal event not yet applied",
            "seconds",
            Series("projection lag", "projection", [b.projection_lag_s for b in buckets]),
        ),
    ]


class ActivityPages(Controller):
    path = "/activity"

    @get("/")
    async def activity_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
    ) -> Template:
        name = request.query_params.get("window") or "1h"
        window = WINDOWS.get(name)
        if window is None:
            raise ConsoleError(
                status_code=400, detail=f"window: must be one of {', '.join(WINDOWS)}"
            )
        async with reader.connect() as conn:
            buckets = await activity(
                conn, minutes=window.minutes, bucket_minutes=window.bucket_minutes
            )
        return page(
            "activity.html",
            session,
            nav="activity",
            window=name,
            windows=list(WINDOWS),
            charts=charts(buckets, window),
            totals={
                "received": sum(b.received for b in buckets),
                "fetched": sum(b.fetched for b in buckets),
                "failed": sum(b.failed for b in buckets),
            },
        )
