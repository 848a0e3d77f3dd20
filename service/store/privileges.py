"""The service role: what `paxos-events migrate --grant-to ROLE` gives the role the service runs
as, so that append-only holds against the service's own credentials (docs/deploying.md).

The migration role owns the tables, and with them the right to `ALTER TABLE ... DISABLE
TRIGGER`, `DROP` or replace the trigger functions. The service role owns none of the evidence:
on the journal, the seals and the prune record it may read and (where the service writes them)
insert, never update, delete or truncate. It owns the projections' tables, because a rebuild
swaps them by DROP and RENAME (DDL, which only an owner may run); they are derived from the
journal and rebuilt from it, so owning them proves nothing. `prune` deletes journal rows and is
run as the migration role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.store.projections.rebuild import SHADOW_SUFFIX
from service.store.projections.registry import PROJECTIONS
from service.store.tables import metadata

# PostgreSQL 17 brought the MAINTAIN privilege; without it the sealer's lock (below) needs
# UPDATE, DELETE or TRUNCATE on the journal, which is what the service role must not have.
MIN_SERVER_VERSION = 170000

# What the service role may do to each table the migration role owns. Anything not named here
# (a table a DBA added, say) gets nothing.
TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # Evidence: it only ever grows. MAINTAIN because the sealer takes `LOCK TABLE journal IN
    # SHARE MODE` to find its horizon (store/audit/seals.py), a mode that SELECT and INSERT do
    # not allow; MAINTAIN adds VACUUM, ANALYZE, CLUSTER, REINDEX and LOCK, none of which
    # changes a row.
    "journal": ("SELECT", "INSERT", "MAINTAIN"),
    "seals": ("SELECT", "INSERT"),
    # `prune` runs as the migration role: the service only reads the record (verify, export).
    "prunes": ("SELECT",),
    "pruned_journal_rows": ("SELECT",),
    "audit_verifications": ("SELECT", "INSERT"),
    # What the anchorer wrote outside the database: recorded, never changed; per-sink failures.
    "audit_anchors": ("SELECT", "INSERT"),
    "audit_anchor_sinks": ("SELECT", "INSERT", "UPDATE"),
    # Rows are updated as their fetch goes on (columns: EVENTS_FIXED_COLUMNS aside), never
    # deleted: that is prune's.
    "events": ("SELECT", "INSERT"),
    "service_keys": ("SELECT", "INSERT", "UPDATE"),
    "rate_limits": ("SELECT", "INSERT", "UPDATE"),
    "paxos_connection": ("SELECT", "INSERT", "UPDATE"),
    # The console's per-minute samples: upserted by every process, pruned after 7 days.
    "activity_samples": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "jobs": ("SELECT", "INSERT", "UPDATE"),
    "reconcile_passes": ("SELECT", "INSERT", "UPDATE"),
    "reconcile_missed": ("SELECT", "INSERT"),
    # A rebuild creates its shadow's checkpoint row and deletes it at the swap.
    "projection_checkpoints": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    # Push subscriptions: created, changed and deleted through the admin API; outbox rows are
    # deleted once delivered.
    "subscriptions": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "subscription_outbox": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "subscription_deliveries": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    # `/health/ready` compares the database's revision with the code's.
    "alembic_version": ("SELECT",),
}
# What the notification said stays as it was received; every other column of `events` (fetch
# state, deliveries, receipt times, the full event's fields) is the service's to update.
EVENTS_FIXED_COLUMNS = ("event_id", "type", "source", "time", "object", "is_test")
# The sealer reads the last value of the journal's position sequence (SELECT on it suffices;
# inserts draw identity values without any privilege on the sequence).
SEQUENCE_PRIVILEGES = {("journal", "position"): "SELECT"}
# What the service role must never be able to do, checked after the grants (a grant to
# PUBLIC, or through another role, would show here).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "journal": ("UPDATE", "DELETE", "TRUNCATE"),
    "seals": ("UPDATE", "DELETE", "TRUNCATE"),
    "prunes": ("INSERT", "UPDATE", "DELETE", "TRUNCATE"),
    "pruned_journal_rows": ("INSERT", "UPDATE", "DELETE", "TRUNCATE"),
    "events": ("DELETE", "TRUNCATE"),
}


def projection_tables() -> tuple[str, ...]:
    """The projections' tables, which the service role owns."""
    return tuple(t for p in PROJECTIONS.values() for t in p.tables)


def is_rebuild_table(name: str) -> bool:
    """Whether `name` is a projection's table, or one a rebuild makes (shadow, staging)."""
    if name in projection_tables():
        return True
    shadows = {t + SHADOW_SUFFIX for t in projection_tables()}
    return name in shadows or any(name.startswith(p + SHADOW_SUFFIX + "_") for p in PROJECTIONS)


def unclassified_tables() -> set[str]:
    """Tables of the schema that neither the service role owns nor TABLE_PRIVILEGES names
    (a test keeps this empty: a new table must say what the service may do to it)."""
    return {t for t in metadata.tables if t not in TABLE_PRIVILEGES and not is_rebuild_table(t)}


class ServiceRoleError(ValueError):
    """The service role cannot be given its privileges safely; the message says why."""


@dataclass(frozen=True, slots=True)
class Granted:
    """What `grant_service_role` did."""

    role: str
    migration_role: str
    tables: tuple[str, ...]  # granted privileges on
    owned: tuple[str, ...]  # owned by the service role (the projections' tables)


def _quote(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


async def check_service_role(conn: AsyncConnection, role: str) -> str:
    """Refuse (ServiceRoleError) a `role` that could not be a least-privileged service role
    for the connected migration role; return the migration role's name."""
    version = int(await conn.scalar(text("SELECT current_setting('server_version_num')")) or 0)
    if version < MIN_SERVER_VERSION:
        shown = await conn.scalar(text("SELECT current_setting('server_version')"))
        raise ServiceRoleError(
            f"--grant-to needs PostgreSQL 17 or newer (the MAINTAIN privilege); this server "
            f"is {shown}"
        )
    me = str(await conn.scalar(text("SELECT current_user")))
    found = (
        await conn.execute(
            text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"),
            {"r": role},
        )
    ).one_or_none()
    if found is None:
        raise ServiceRoleError(f"--grant-to: no role named {role!r} (CREATE ROLE it first)")
    if role == me:
        raise ServiceRoleError(
            f"--grant-to: {role!r} is the role running the migrations; the service needs a "
            "role of its own"
        )
    if found.rolsuper:
        raise ServiceRoleError(f"--grant-to: {role!r} is a superuser: privileges cannot bind it")
    if await conn.scalar(text("SELECT pg_has_role(:r, current_user, 'MEMBER')"), {"r": role}):
        raise ServiceRoleError(
            f"--grant-to: {role!r} is a member of {me!r}, so it has the owner's rights"
        )
    if not await conn.scalar(text("SELECT pg_has_role(current_user, :r, 'SET')"), {"r": role}):
        raise ServiceRoleError(
            f"--grant-to: {me!r} must be able to hand the projections' tables to {role!r}: "
            f"run GRANT {_quote(conn, role)} TO {_quote(conn, me)} first"
        )
    owns = (
        await conn.execute(
            text(
                "SELECT pg_has_role(:r, d.datdba, 'USAGE') AS database, "
                "pg_has_role(:r, n.nspowner, 'USAGE') AS schema "
                "FROM pg_database d, pg_namespace n "
                "WHERE d.datname = current_database() AND n.nspname = current_schema()"
            ),
            {"r": role},
        )
    ).one()
    if owns.database or owns.schema:
        what = "database" if owns.database else "schema"
        raise ServiceRoleError(
            f"--grant-to: {role!r} owns the {what} (and could drop any table in it): make "
            f"{me!r} its owner"
        )
    foreign = [name for name in await _owned_objects(conn, role) if not is_rebuild_table(name)]
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ServiceRoleError(
            f"--grant-to: {role!r} owns {shown} here; give them to {me!r} first "
            f"(REASSIGN OWNED BY {_quote(conn, role)} TO {_quote(conn, me)}; see "
            "docs/deploying.md)"
        )
    return me


async def _owned_objects(conn: AsyncConnection, role: str) -> list[str]:
    """What `role` owns in the current schema that a migration role could trip over:
    relations (tables, views, sequences), functions and operators; indexes and the row types
    of tables go with their table."""
    rows = await conn.execute(
        text(
            "SELECT c.relname AS name FROM pg_class c "
            "WHERE c.relnamespace = CAST(current_schema() AS regnamespace) "
            "AND c.relowner = CAST(:r AS regrole) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
            "UNION ALL SELECT format('function %s', CAST(p.oid AS regprocedure)) FROM pg_proc p "
            "WHERE p.pronamespace = CAST(current_schema() AS regnamespace) "
            "AND p.proowner = CAST(:r AS regrole) "
            "UNION ALL SELECT format('operator %s', CAST(o.oid AS regoperator)) FROM pg_operator o "
            "WHERE o.oprnamespace = CAST(current_schema() AS regnamespace) "
            "AND o.oprowner = CAST(:r AS regrole) "
            "UNION ALL SELECT format('type %s', t.typname) FROM pg_type t "
            "WHERE t.typnamespace = CAST(current_schema() AS regnamespace) "
            "AND t.typowner = CAST(:r AS regrole) AND t.typrelid = 0 AND t.typcategory <> 'A'"
        ),
        {"r": role},
    )
    return [r.name for r in rows]


async def grant_service_role(conn: AsyncConnection, role: str) -> Granted:
    """Give `role` exactly what the service needs (TABLE_PRIVILEGES), hand it the projections'
    tables, and check it can change no evidence. In `conn`'s transaction (all or nothing)."""
    me = await check_service_role(conn, role)
    # ALTER ... OWNER waits for the table's lock: never queue behind a long transaction.
    await conn.execute(text("SET LOCAL lock_timeout = '10s'"))
    who = _quote(conn, role)
    schema = _quote(conn, str(await conn.scalar(text("SELECT current_schema()"))))
    # CREATE: a rebuild creates its shadow and staging tables (docs/deploying.md says what
    # else it lets the role do, and why `migrate` checks what the role owns).
    await conn.execute(text(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {who}"))
    tables = (
        await conn.execute(
            text(
                "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
                "WHERE c.relnamespace = CAST(current_schema() AS regnamespace) "
                "AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname"
            )
        )
    ).all()
    granted: list[str] = []
    owned: list[str] = []
    for name, owner in tables:
        table = _quote(conn, name)
        if is_rebuild_table(name):
            if owner != role:
                await conn.execute(text(f"ALTER TABLE {table} OWNER TO {who}"))
            owned.append(name)
            continue
        # From scratch each time: a privilege granted by hand, or by an older version of this
        # list, goes (column privileges too).
        await conn.execute(text(f"REVOKE ALL ON TABLE {table} FROM {who}"))
        privileges = TABLE_PRIVILEGES.get(name)
        if not privileges:
            continue
        await conn.execute(text(f"GRANT {', '.join(privileges)} ON TABLE {table} TO {who}"))
        if name == "events":
            columns = ", ".join(await _events_updatable(conn))
            await conn.execute(text(f"GRANT UPDATE ({columns}) ON events TO {who}"))
        granted.append(name)
    for (table, column), privilege in SEQUENCE_PRIVILEGES.items():
        sequence = await conn.scalar(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column}
        )
        if sequence is not None:
            await conn.execute(text(f"GRANT {privilege} ON SEQUENCE {sequence} TO {who}"))
    await _check_nothing_forbidden(conn, role)
    return Granted(role, me, tuple(granted), tuple(owned))


async def _events_updatable(conn: AsyncConnection) -> Iterable[str]:
    columns = await conn.scalars(
        text(
            "SELECT attname FROM pg_attribute WHERE attrelid = CAST('events' AS regclass) "
            "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
        )
    )
    return [_quote(conn, c) for c in columns if c not in EVENTS_FIXED_COLUMNS]


async def _check_nothing_forbidden(conn: AsyncConnection, role: str) -> None:
    """Refuse if `role` can still change evidence: as its owner, or by a privilege that came
    from elsewhere (PUBLIC, another role it belongs to)."""
    for table, privileges in FORBIDDEN.items():
        if await conn.scalar(text("SELECT to_regclass(:t)"), {"t": table}) is None:
            continue
        owner = await conn.scalar(
            text(
                "SELECT pg_has_role(:r, relowner, 'USAGE') FROM pg_class "
                "WHERE oid = CAST(:t AS regclass)"
            ),
            {"r": role, "t": table},
        )
        if owner:
            raise ServiceRoleError(f"--grant-to: {role!r} still has the rights of {table}'s owner")
        for privilege in privileges:
            if await conn.scalar(
                text("SELECT has_table_privilege(:r, CAST(:t AS regclass), :p)"),
                {"r": role, "t": table, "p": privilege},
            ):
                raise ServiceRoleError(
                    f"--grant-to: {role!r} may still {privilege} {table} (granted to PUBLIC "
                    f"or to a role it belongs to): revoke that, then run migrate again"
                )
    for column in EVENTS_FIXED_COLUMNS:
        if await conn.scalar(
            text("SELECT has_column_privilege(:r, 'events', :c, 'UPDATE')"),
            {"r": role, "c": column},
        ):
            raise ServiceRoleError(
                f"--grant-to: {role!r} may still UPDATE events.{column} (granted to PUBLIC or "
                "to a role it belongs to): revoke that, then run migrate again"
            )
