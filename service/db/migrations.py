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


class NotTheOwner(RuntimeError):
    """Migrations were asked of a role that does not own the tables (the service role, in a
    deployment where it owns none of them: docs/deploying.md)."""


async def check_owner(engine: AsyncEngine) -> None:
    """Refuse (NotTheOwner) to migrate as a role without the rights of the tables' owner.

    Such a role could still create new tables (the service role may create the rebuild's), and
    would then own them: a new evidence table would be the service's to alter.
    """
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT current_user AS me, pg_get_userbyid(relowner) AS owner, "
                    "pg_has_role(current_user, relowner, 'USAGE') AS may "
                    "FROM pg_class WHERE oid = to_regclass('alembic_version')"
                )
            )
        ).one_or_none()
    if row is not None and not row.may:
        raise NotTheOwner(
            f"migrations run as the role that owns the tables ({row.owner}), not as {row.me}: "
            "set DATABASE_URL to the migration role's (docs/deploying.md)"
        )


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision`, in one transaction per migration."""
    await check_owner(engine)
    async with engine.connect() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
        await conn.commit()


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    """Migrate the database behind `engine` back to `revision`."""
    await check_owner(engine)
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
