"""Secret keys the service makes for itself, kept in the database for every process to share."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.tables import service_keys

KEY_BYTES = 32


async def load_service_key(engine: AsyncEngine, name: str) -> bytes:
    """The 32-byte key called `name`: created on first use, then the same for every process.

    Concurrent first uses are safe: the loser's insert waits for the winner's commit and does
    nothing, and its select (a new snapshot under READ COMMITTED) then sees the winner's key.
    """
    async with engine.begin() as conn:
        await conn.execute(
            insert(service_keys)
            .values(name=name, secret=secrets.token_bytes(KEY_BYTES))
            .on_conflict_do_nothing(index_elements=[service_keys.c.name])
        )
        key = await conn.scalar(select(service_keys.c.secret).where(service_keys.c.name == name))
    if not key:
        raise RuntimeError(f"service_keys has no usable {name!r} row")
    return bytes(key)


async def read_service_key(engine: AsyncEngine, name: str) -> bytes | None:
    """The key called `name` as it is now, or None if there is none; never creates one."""
    async with engine.connect() as conn:
        key = await conn.scalar(select(service_keys.c.secret).where(service_keys.c.name == name))
    return bytes(key) if key else None


async def replace_service_key(engine: AsyncEngine, name: str) -> None:
    """Give `name` a new random key (created if missing): what the old one signed is void."""
    fresh = secrets.token_bytes(KEY_BYTES)
    statement = insert(service_keys).values(name=name, secret=fresh)
    async with engine.begin() as conn:
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[service_keys.c.name],
                set_={"secret": statement.excluded.secret, "created_at": func.now()},
            )
        )
