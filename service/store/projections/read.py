"""Reading the projections: one identity, transfer or orchestration, and keyset listings.

Every read is one statement, so it sees one snapshot: an identity and its controls always
come from the same moment, even while a rebuild swaps the tables underneath.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_ACTIVE_CONTROLS = """
    coalesce((
        SELECT json_agg(json_build_object(
                   'control_id', c.control_id, 'control_type', c.control_type,
                   'set_by', c.set_by, 'is_overridable', c.is_overridable,
                   'reason_code', c.reason_code, 'created_at', c.created_at)
               ORDER BY c.control_id)
        FROM identity_controls c
        WHERE c.identity_id = i.identity_id AND c.deleted IS false
    ), '[]'::json) AS controls
"""

_IDENTITY_COLUMNS = f"""
    i.identity_id, i.summary_status, i.required_documents, i.kyc_state,
    i.kyc_last_refresh_at, i.kyc_next_refresh_at, i.last_event_id, i.last_event_type,
    i.last_event_time, i.events_count, i.updated_at, {_ACTIVE_CONTROLS}
"""


@dataclass(frozen=True, slots=True)
class Page:
    """Rows of a listing, and whether more follow the last one."""

    rows: list[dict[str, Any]]
    more: bool


async def get_identity(conn: AsyncConnection, identity_id: str) -> dict[str, Any] | None:
    """An identity's row with its active controls, or None."""
    row = (
        await conn.execute(
            text(f"SELECT {_IDENTITY_COLUMNS} FROM identities i WHERE i.identity_id = :id"),
            {"id": identity_id},
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def list_identities(
    conn: AsyncConnection,
    *,
    summary_status: str | None,
    control_type: str | None,
    after: str | None,
    limit: int,
    changed_since: datetime | None = None,
    changed_until: datetime | None = None,
) -> Page:
    """Identities in id order after `after`, filtered; one more row is read to tell `more`.

    Id order, not last-event order: a listing walked page by page must neither skip nor
    repeat an identity that changes meanwhile. `changed_since`/`changed_until` (the console's
    time filter) bound the last event's time, checked per row.
    """
    where = ["(CAST(:after AS text) IS NULL OR i.identity_id > :after)"]
    if summary_status is not None:
        where.append("i.summary_status = :summary_status")
    if control_type is not None:
        where.append(
            "EXISTS (SELECT 1 FROM identity_controls c WHERE c.identity_id = i.identity_id "
            "AND c.deleted IS false AND c.control_type = :control_type)"
        )
    where += _changed(changed_since, changed_until, "i.last_ns")
    statement = text(
        f"SELECT {_IDENTITY_COLUMNS} FROM identities i WHERE {' AND '.join(where)} "
        "ORDER BY i.identity_id LIMIT :limit"
    )
    params = {
        "after": after,
        "summary_status": summary_status,
        "control_type": control_type,
        "limit": limit + 1,
        "changed_since": changed_since,
        "changed_until": changed_until,
    }
    return await _page(conn, statement, params, limit)


def _changed(since: datetime | None, until: datetime | None, column: str) -> list[str]:
    """Conditions on a last event's time (`column`: its `last_ns`): at or after `since`,
    before `until`."""

    # On the nanoseconds the fold orders by, not on `last_event_time`, Paxos's text: a time
    # PostgreSQL cannot read (a 31st of February; the fold counts it on into March) would
    # make the cast raise. The bound becomes nanoseconds exactly (extract gives numeric).
    def bound(name: str) -> str:
        return f"CAST(extract(epoch FROM CAST(:{name} AS timestamptz)) * 1000000000 AS bigint)"

    return ([f"{column} >= {bound('changed_since')}"] if since else []) + (
        [f"{column} < {bound('changed_until')}"] if until else []
    )


async def _page(
    conn: AsyncConnection, statement: Any, params: Mapping[str, Any], limit: int
) -> Page:
    rows = [dict(r._mapping) for r in await conn.execute(statement, params)]
    return Page(rows[:limit], len(rows) > limit)


_TRANSFER_COLUMNS = """
    transfer_id, type, status, profile_id, ref_id, crypto_network, crypto_tx_hash,
    crypto_tx_index, memo, last_event_id, last_event_type, last_event_time, events_count,
    updated_at
"""


async def get_transfer(conn: AsyncConnection, transfer_id: str) -> dict[str, Any] | None:
    """A transfer's latest state, or None."""
    row = (
        await conn.execute(
            text(f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = :id"),
            {"id": transfer_id},
        )
    ).one_or_none()
    return dict(row._mapping) if row else None


async def list_transfers(
    conn: AsyncConnection,
    *,
    filters: Mapping[str, str | None],
    after: str | None,
    limit: int,
    changed_since: datetime | None = None,
    changed_until: datetime | None = None,
) -> Page:
    """Transfers in id order after `after`, filtered by `status`, `profile_id`, `type`, and
    the last event's time as `list_identities`."""
    where = ["(CAST(:after AS text) IS NULL OR transfer_id > :after)"]
    where += _changed(changed_since, changed_until, "last_ns")
    params: dict[str, Any] = {
        "after": after,
        "limit": limit + 1,
        "changed_since": changed_since,
        "changed_until": changed_until,
    }
    for name in ("status", "profile_id", "type"):
        if filters.get(name) is not None:
            where.append(f"{name} = :{name}")
            params[name] = filters[name]
    statement = text(
        f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE {' AND '.join(where)} "
        "ORDER BY transfer_id LIMIT :limit"
    )
    return await _page(conn, statement, params, limit)


async def get_orchestration(conn: AsyncConnection, orchestration_id: str) -> dict[str, Any] | None:
    """An orchestration's latest state, or None."""
    row = (
        await conn.execute(
            text(
                "SELECT orchestration_id, status, ref_id, orchestration_rule_id, last_event_id, "
                "last_event_type, last_event_time, events_count, updated_at "
                "FROM orchestrations WHERE orchestration_id = :id"
            ),
            {"id": orchestration_id},
        )
    ).one_or_none()
    return dict(row._mapping) if row else None
