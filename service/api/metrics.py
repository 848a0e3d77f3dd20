"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.fetch_queue import fetch_backlog
from service.telemetry import metrics
from service.web.auth import require_read


class MetricsController(Controller):
    path = "/metrics"
    tags = ["health"]
    guards = [require_read]

    @get(summary="Prometheus metrics (read token)", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        try:
            async with engine.connect() as conn:
                backlog = await fetch_backlog(conn)
            metrics.PENDING.set(backlog.pending)
            metrics.OLDEST_PENDING_AGE.set(backlog.oldest_pending_age_s or 0.0)
        except (SQLAlchemyError, OSError):
            pass  # the store's state is unknown; the other metrics still say a lot
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
