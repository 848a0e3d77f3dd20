"""Secret keys the service makes for itself, kept in the database for every process to share."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.tables import service_keys


async def load_service_key(engine: AsyncEngine, name: str) -> bytes:
    """The 32-byte key called `name`: created on first use, then the same for every process.

    Concurrent first uses are safe: the loser's insert waits for the winner's commit and does
    nothing, and its select (a new snapshot under READ COMMITTED) then sees the winner's key.
    """
    async with engine.begin() as conn:
        await conn.execute(
            insert(service_keys)
            .values(name=name, secret=secrets.token_bytes(32))
            .on_conflict_do_nothing(index_elements=[service_keys.c.name])
        )
        key = await conn.scalar(select(service_keys.c.secret).where(service_keys.c.name == name))
    if not key:
        raise RuntimeError(f"service_keys has no usable {name!r} row")
    return bytes(key)
