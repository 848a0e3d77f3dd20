"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics
from service.api.auth import require_read

_BACKLOG = text(
    """
    SELECT count(*) AS pending,
           coalesce(extract(epoch FROM now() - min(first_received_at)), 0) AS oldest
    FROM events WHERE status = 'pending'
    """
)


class MetricsController(Controller):
    path = "/metrics"
    tags = ["health"]
    guards = [require_read]

    @get(summary="Prometheus metrics (read token)", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, request: Request[Any, Any, State]) -> Response[bytes]:
        engine: AsyncEngine = request.app.state.engine
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(_BACKLOG)).one()
            metrics.PENDING.set(row.pending)
            metrics.OLDEST_PENDING_AGE.set(float(row.oldest))
        except (SQLAlchemyError, OSError):
            pass  # the store's state is unknown; the other metrics still say a lot
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
