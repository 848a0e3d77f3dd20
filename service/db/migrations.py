"""Apply and check Alembic migrations from inside the service (CLI, tests, embedded start)."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(connection: Connection | None = None) -> Config:
    """The project's Alembic config, bound to `connection` when given."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["configure_logger"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest migration shipped with this code (read from disk once: it cannot change
    while the process runs, and readiness probes ask often)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision`, in one transaction per migration."""
    async with engine.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
        await conn.commit()


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.connect() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), revision))
        await conn.commit()


async def revision_of(conn: AsyncConnection) -> str | None:
    """The revision the database behind `conn` is at, or None before the first migration."""
    if await conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
        return None
    revision = await conn.scalar(text("SELECT version_num FROM alembic_version LIMIT 1"))
    return str(revision) if revision is not None else None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
