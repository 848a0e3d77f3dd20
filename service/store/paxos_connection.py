"""How the deployment's connection to Paxos is doing: one row (`paxos_connection`) that every
process calling Paxos writes, and /health/ready and the console read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.store.tables import paxos_connection

ROW = "paxos"

_TOKEN = text(
    """
    INSERT INTO paxos_connection (name, token_ok, token_error, token_checked_at)
    VALUES (:name, :ok, :error, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
    SET token_ok = excluded.token_ok, token_error = excluded.token_error,
        token_checked_at = excluded.token_checked_at
    """
)

_GET_EVENT = text(
    """
    INSERT INTO paxos_connection (name, last_get_event_at) VALUES (:name, clock_timestamp())
    ON CONFLICT (name) DO UPDATE
    SET last_get_event_at = greatest(paxos_connection.last_get_event_at,
                                     excluded.last_get_event_at)
    """
)


@dataclass(frozen=True, slots=True)
class PaxosConnection:
    """The latest token request's outcome (None: none yet) and the last successful Get Event."""

    token_ok: bool | None
    token_error: str | None
    token_checked_at: datetime | None
    last_get_event_at: datetime | None


async def record_token(conn: AsyncConnection, *, ok: bool, error: str | None) -> None:
    """Record the outcome of a token request (`error`: why it failed, never a secret)."""
    await conn.execute(_TOKEN, {"name": ROW, "ok": ok, "error": None if ok else error})


async def record_get_event(conn: AsyncConnection) -> None:
    """Record that a Get Event succeeded now."""
    await conn.execute(_GET_EVENT, {"name": ROW})


async def read_connection(conn: AsyncConnection) -> PaxosConnection:
    """The connection's state as the processes last recorded it."""
    row = (
        await conn.execute(select(paxos_connection).where(paxos_connection.c.name == ROW))
    ).one_or_none()
    if row is None:
        return PaxosConnection(None, None, None, None)
    return PaxosConnection(
        row.token_ok, row.token_error, row.token_checked_at, row.last_get_event_at
    )
