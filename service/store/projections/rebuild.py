"""A projection's rebuild in SQL: shadow and staging tables, staging chunks, the fold of the
staging table, the shadow's indexes, and the swap (the steps are `service.projections.rebuild`).

Names of tables are built here from the projection's (never user input), so the DDL can be
composed as text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.store.projections.checkpoints import apply_batch
from service.store.projections.fold import create_facts_statements, fold_statement, stage_statement
from service.store.projections.registry import Projection
from service.store.tables import metadata

SHADOW_SUFFIX = "_rebuild"


def shadow_name(table: str) -> str:
    """The shadow table a rebuild fills for `table`."""
    return table + SHADOW_SUFFIX


def shadow_tables(projection: Projection) -> dict[str, str]:
    """Each of `projection`'s tables, by the name of its shadow."""
    return {t: shadow_name(t) for t in projection.tables}


def rebuild_checkpoint(projection: Projection) -> str:
    """The name of the checkpoint row of `projection`'s shadow tables."""
    return projection.name + "@rebuild"


def facts_name(projection: Projection) -> str:
    """The staging table of `projection`'s extracted journal rows."""
    return projection.name + SHADOW_SUFFIX + "_facts"


def chunks_name(projection: Projection) -> str:
    """The table of the staged chunks: heap blocks [lo, hi) and their journal event rows."""
    return projection.name + SHADOW_SUFFIX + "_chunks"


def plan_name(projection: Projection) -> str:
    """The one-row table of the staging's plan: horizon, heap blocks, the journal's filenode."""
    return projection.name + SHADOW_SUFFIX + "_plan"


def _staging_tables(projection: Projection) -> tuple[str, str, str]:
    return facts_name(projection), chunks_name(projection), plan_name(projection)


def _primary_key(table: str) -> tuple[str, list[str]]:
    pk = metadata.tables[table].primary_key
    return f"pk_{table}", [c.name for c in pk.columns]


async def _exists(conn: AsyncConnection, table: str) -> bool:
    return bool(await conn.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}))


async def try_lock(conn: AsyncConnection, projection: Projection) -> bool:
    """Take the session advisory lock that one rebuild of `projection` holds; False if taken."""
    return bool(
        await conn.scalar(
            text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": "rebuild:" + projection.name}
        )
    )


async def unlock(conn: AsyncConnection, projection: Projection) -> None:
    """Release the advisory lock `try_lock` took."""
    await conn.execute(
        text("SELECT pg_advisory_unlock(hashtext(:k))"),
        {"k": "rebuild:" + projection.name},
    )


async def prepare(conn: AsyncConnection, projection: Projection) -> tuple[bool, bool]:
    """Create the shadow tables (and drop the staging tables) unless a rebuild left them.

    Returns (resuming, staged): `staged` once the staging tables were folded into the shadow
    (and dropped), so the shadow is right up to its checkpoint.
    """
    checkpoint = rebuild_checkpoint(projection)
    has_checkpoint = await conn.scalar(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n"), {"n": checkpoint}
    )
    shadows = [await _exists(conn, shadow_name(t)) for t in projection.tables]
    staging = [await _exists(conn, t) for t in _staging_tables(projection)]
    if has_checkpoint and all(shadows) and (all(staging) or not any(staging)):
        return True, not any(staging)
    for table in projection.tables:
        # No key yet: the fold fills the shadow with plain INSERTs and the key is built once,
        # with the staging tables' end (`finish_fold`).
        shadow = shadow_name(table)
        await conn.execute(text(f"DROP TABLE IF EXISTS {shadow}"))
        await conn.execute(text(f"CREATE TABLE {shadow} (LIKE {table} INCLUDING DEFAULTS)"))
    await conn.execute(text(f"DROP TABLE IF EXISTS {', '.join(_staging_tables(projection))}"))
    await conn.execute(
        text(
            "INSERT INTO projection_checkpoints (name) VALUES (:n) ON CONFLICT (name) "
            "DO UPDATE SET xid = '0', position = 0, updated_at = now()"
        ),
        {"n": checkpoint},
    )
    return False, False


async def count_applied(conn: AsyncConnection, projection: Projection) -> int:
    """Journal event rows up to the shadow's checkpoint."""
    return int(
        await conn.scalar(
            text(
                "SELECT count(*) FROM journal j, projection_checkpoints c WHERE c.name = :n "
                "AND j.kind = 'event' AND (j.xid, j.position) <= (c.xid, c.position)"
            ),
            {"n": rebuild_checkpoint(projection)},
        )
        or 0
    )


# --- staging ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What a staging reads: the journal rows below `horizon` in its heap blocks 0 to
    `blocks` (excluded), while the journal is in file `filenode`."""

    horizon: int
    filenode: int
    blocks: int


_NEW_PLAN = text(
    "SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon, "
    "CAST(pg_relation_filenode('journal') AS bigint) AS filenode, "
    "pg_relation_size('journal') / CAST(current_setting('block_size') AS bigint) AS blocks"
)
_SAMPLE = text(
    "SELECT count(*) FROM journal j "
    "WHERE j.ctid < CAST(format('(%s,0)', CAST(:blocks AS bigint)) AS tid) "
    "AND j.kind = 'event' AND j.xid < CAST(:horizon AS xid8)"
)


async def new_plan(conn: AsyncConnection) -> Plan:
    """The plan of a staging that starts now, read under a lock that keeps the journal's file
    until `conn`'s transaction ends."""
    # The journal's file cannot change while this transaction reads it: the filenode and
    # the size belong together.
    await conn.execute(text("LOCK TABLE journal IN ACCESS SHARE MODE"))
    row = (await conn.execute(_NEW_PLAN)).one()
    return Plan(int(row.horizon), int(row.filenode), int(row.blocks))


async def kept_plan(conn: AsyncConnection, projection: Projection) -> Plan | None:
    """The plan a killed rebuild of `projection` left with its staging tables, if it did."""
    facts, chunks, plan = _staging_tables(projection)
    if not all([await _exists(conn, t) for t in (facts, chunks, plan)]):
        return None
    kept = (await conn.execute(text(f"SELECT horizon, blocks, filenode FROM {plan}"))).one_or_none()
    return None if kept is None else Plan(int(kept.horizon), int(kept.filenode), int(kept.blocks))


async def staged_chunks(conn: AsyncConnection, projection: Projection) -> Sequence[Any]:
    """The chunks staged so far, (lo, hi, events) rows by lo."""
    chunks = chunks_name(projection)
    return (await conn.execute(text(f"SELECT lo, hi, events FROM {chunks} ORDER BY lo"))).all()


async def sample(conn: AsyncConnection, blocks: int, horizon: int) -> int:
    """Journal event rows below `horizon` in the journal's first `blocks` heap blocks."""
    return int(await conn.scalar(_SAMPLE, {"blocks": blocks, "horizon": horizon}) or 0)


async def create_staging(
    conn: AsyncConnection, projection: Projection, plan: Plan, parts: int
) -> None:
    """Create the staging tables anew (the facts in `parts` partitions) and record `plan`."""
    facts, chunks, plan_table = _staging_tables(projection)
    # Unlogged: no WAL for rows that are thrown away at the end. A server crash empties
    # all three together, and the rebuild then stages again from a new plan.
    await conn.execute(text(f"DROP TABLE IF EXISTS {facts}, {chunks}, {plan_table}"))
    for statement in create_facts_statements(projection.name, facts, parts):
        await conn.execute(statement)
    await conn.execute(
        text(
            f"CREATE UNLOGGED TABLE {chunks} "
            "(lo bigint NOT NULL, hi bigint NOT NULL, events bigint NOT NULL)"
        )
    )
    await conn.execute(
        text(
            f"CREATE UNLOGGED TABLE {plan_table} "
            "(horizon xid8 NOT NULL, blocks bigint NOT NULL, filenode bigint NOT NULL)"
        )
    )
    await conn.execute(
        text(f"INSERT INTO {plan_table} VALUES (CAST(:horizon AS xid8), :blocks, :filenode)"),
        {"horizon": plan.horizon, "blocks": plan.blocks, "filenode": plan.filenode},
    )


async def stage_chunk(
    conn: AsyncConnection, projection: Projection, lo: int, hi: int, horizon: int
) -> tuple[int, int]:
    """Stage the journal event rows below `horizon` in heap blocks `lo` to `hi` (excluded);
    (journal event rows in those blocks, the journal's filenode)."""
    params = {"lo": lo, "hi": hi, "horizon": horizon}
    statement = stage_statement(projection.name, facts_name(projection))
    row = (await conn.execute(statement, params)).one()
    return int(row.events), int(row.filenode)


async def record_chunk(
    conn: AsyncConnection, projection: Projection, lo: int, hi: int, events: int
) -> None:
    """Record a staged chunk, so a resumed rebuild stages it no more."""
    await conn.execute(
        text(f"INSERT INTO {chunks_name(projection)} VALUES (:lo, :hi, :events)"),
        {"lo": lo, "hi": hi, "events": events},
    )


# --- folding ---------------------------------------------------------------------------------


async def empty_shadow(conn: AsyncConnection, projection: Projection) -> list[str]:
    """Empty the shadow tables (a fold that died half-way may have committed some parts);
    the staging table's parts, by name."""
    await conn.execute(text(f"TRUNCATE {', '.join(shadow_tables(projection).values())}"))
    return list(
        await conn.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:facts AS regclass) ORDER BY c.relname"
            ),
            {"facts": facts_name(projection)},
        )
    )


async def fold_part(conn: AsyncConnection, projection: Projection, part: str) -> None:
    """Fold one part of the staging table into the shadow tables."""
    await conn.execute(text("SET LOCAL work_mem = '256MB'"))
    await conn.execute(fold_statement(projection.name, shadow_tables(projection), part))


async def finish_fold(conn: AsyncConnection, projection: Projection, horizon: int) -> None:
    """Key the shadow, move its checkpoint to the last journal row below the staging's
    `horizon`, and drop the staging tables."""
    await conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
    await _key_shadow(conn, projection)
    await conn.execute(
        text(
            "UPDATE projection_checkpoints c SET xid = last.xid, position = last.position, "
            "updated_at = now() FROM (SELECT xid, position FROM journal "
            "WHERE xid < CAST(:horizon AS xid8) ORDER BY xid DESC, position DESC LIMIT 1) last "
            "WHERE c.name = :n"
        ),
        {"horizon": horizon, "n": rebuild_checkpoint(projection)},
    )
    await conn.execute(text(f"DROP TABLE {', '.join(_staging_tables(projection))}"))


async def _key_shadow(conn: AsyncConnection, projection: Projection) -> None:
    """Give the shadow tables the live tables' primary keys (under shadow names), unless
    they have them."""
    for table in projection.tables:
        shadow = shadow_name(table)
        pk_name, pk_columns = _primary_key(table)
        if not await conn.scalar(
            text("SELECT 1 FROM pg_constraint WHERE conname = :n"), {"n": pk_name + SHADOW_SUFFIX}
        ):
            await conn.execute(
                text(
                    f"ALTER TABLE {shadow} ADD CONSTRAINT {pk_name}{SHADOW_SUFFIX} "
                    f"PRIMARY KEY ({', '.join(pk_columns)})"
                )
            )


# --- catching up, indexing, swapping ---------------------------------------------------------


async def catch_up_shadow(conn: AsyncConnection, projection: Projection, batch: int) -> int | None:
    """Apply the next batch of at most `batch` journal rows to the shadow tables, as
    `apply_batch` does to the live ones."""
    # Big batches sort in memory rather than on disk.
    await conn.execute(text("SET LOCAL work_mem = '256MB'"))
    return await apply_batch(
        conn,
        projection,
        checkpoint=rebuild_checkpoint(projection),
        tables=shadow_tables(projection),
        limit=batch,
    )


async def _secondary_indexes(conn: AsyncConnection, table: str) -> list[tuple[str, str]]:
    """(name, definition) of `table`'s indexes other than its primary key."""
    pk_name, _ = _primary_key(table)
    rows = await conn.execute(
        text(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = :t AND indexname <> :pk"
        ),
        {"t": table, "pk": pk_name},
    )
    return [(r.indexname, r.indexdef) for r in rows]


async def index_shadow(conn: AsyncConnection, projection: Projection) -> None:
    """Give the shadow tables the live tables' secondary indexes (under shadow names)."""
    for table in projection.tables:
        shadow = shadow_name(table)
        for name, definition in await _secondary_indexes(conn, table):
            # pg_indexes gives "CREATE [UNIQUE] INDEX name ON [schema.]table USING ...".
            ddl = re.sub(
                rf"INDEX {re.escape(name)} ON (\S+\.)?{re.escape(table)} ",
                f"INDEX IF NOT EXISTS {name}{SHADOW_SUFFIX} ON {shadow} ",
                definition,
                count=1,
            )
            await conn.execute(text(ddl))


async def swap(conn: AsyncConnection, projection: Projection, batch: int) -> int:
    """Catch the shadow up under the live checkpoint's lock and put it in place; the journal
    rows of the tail applied meanwhile."""
    # Waiting readers queue behind the rename's exclusive lock: bound the wait, and retry.
    await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
    await conn.execute(
        text("SELECT 1 FROM projection_checkpoints WHERE name = :n FOR UPDATE"),
        {"n": projection.name},
    )
    shadows = shadow_tables(projection)
    checkpoint = rebuild_checkpoint(projection)
    tail = 0
    while read := await apply_batch(
        conn, projection, checkpoint=checkpoint, tables=shadows, limit=batch
    ):
        tail += read
    for table in projection.tables:
        indexes = [name for name, _ in await _secondary_indexes(conn, table)]
        pk_name, _ = _primary_key(table)
        await conn.execute(text(f"DROP TABLE {table}"))
        await conn.execute(text(f"ALTER TABLE {shadows[table]} RENAME TO {table}"))
        for name in [pk_name, *indexes]:
            await conn.execute(text(f"ALTER INDEX {name}{SHADOW_SUFFIX} RENAME TO {name}"))
    await conn.execute(
        text(
            "UPDATE projection_checkpoints live SET xid = shadow.xid, position = shadow.position, "
            "updated_at = now() FROM projection_checkpoints shadow "
            "WHERE live.name = :live AND shadow.name = :shadow"
        ),
        {"live": projection.name, "shadow": checkpoint},
    )
    await conn.execute(
        text("DELETE FROM projection_checkpoints WHERE name = :n"), {"n": checkpoint}
    )
    return tail
