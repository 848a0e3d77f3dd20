"""Set-based application of a batch of journal rows to a projection's tables.

One statement per batch and projection: it reads the next journal `event` rows gap-safely,
parses each body once, keeps real (not test) events, takes the newest event per subject and
field group (`DISTINCT ON ... ORDER BY subject, ns DESC, event_id DESC`), upserts them with
"only if newer" guards, and moves the checkpoint, all in the caller's transaction. A loop per
event in Python would be two orders of magnitude slower (the rebuild benchmark needs
100,000 events/s); the pure folds (`identity.py`, ...) specify what this must compute, and
a property test holds the two together.

Table names are parameters (never user input) so that a rebuild can fill shadow tables with
the very same statement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from sqlalchemy import TextClause, text

from service.projections.identity import CONTROL_CREATED, CONTROL_DELETED, DOCUMENTS_REQUIRED

# `event.time_ns` in SQL. Twin of `event._TIME`; years outside 1678..2261 do not fit
# nanoseconds in a bigint, so such times are unreadable (NULL) in both.
TIME_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    "(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)

# The next batch of journal `event` rows, gap-safely (DESIGN.md §1): positions are assigned
# at insert but become visible at commit, so reading `position > checkpoint` would skip a row
# that commits late. Rows are read in (xid, position) order and only below the oldest
# transaction still running (pg_snapshot_xmin): every transaction with a smaller xid has
# ended, so no row can later appear behind the checkpoint. The horizon is computed in this
# very statement, so it belongs to the same snapshot as the rows read.
#
# Test events are dropped through the small partial index of test events
# (ix_events_test_event_id): looking up every events row would cost more than parsing. Each
# body is parsed once (the lateral is fenced with OFFSET 0, or the planner copies the cast
# into every use; a \u0000 escape, which jsonb refuses, is replaced as the fetcher does for
# `detail`). Projections reflect real events only.
_BATCH = """
WITH raw AS MATERIALIZED (
    SELECT j.xid, j.position, j.event_id, j.body
    FROM journal j
    WHERE j.kind = 'event'
      AND j.xid < pg_snapshot_xmin(pg_current_snapshot())
      AND (j.xid, j.position) > (CAST(:xid AS xid8), CAST(:position AS bigint))
    ORDER BY j.xid, j.position
    LIMIT :limit
),
parsed AS MATERIALIZED (
    SELECT r.event_id, p.body ->> 'type' AS type, p.body -> 'object' AS obj,
           CASE WHEN jsonb_typeof(p.body -> 'created_at') = 'string'
                     AND (p.body ->> 'created_at') ~ '{pattern}'
                     AND left(p.body ->> 'created_at', 4) BETWEEN '1678' AND '2261'
                THEN p.body ->> 'created_at' END AS created_at
    FROM raw r
    CROSS JOIN LATERAL (
        SELECT CAST(replace(CAST(r.body AS text), '\\u0000', '\\ufffd') AS jsonb) AS body
        OFFSET 0
    ) p
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = r.event_id AND e.is_test)
      AND p.body ->> 'type' LIKE '{prefix}%'
),
batch AS MATERIALIZED (
    SELECT p.event_id, p.type, p.obj, p.created_at,
           ((t2.era * 146097 + t3.yoe * 365 + t3.yoe / 4 - t3.yoe / 100 + t3.doy - 719468) * 86400
             + t1.sod - t2.off) * 1000000000 + t2.frac AS ns
    FROM parsed p
    CROSS JOIN LATERAL (
        SELECT CAST(substr(p.created_at, 1, 4) AS bigint)
                 - CASE WHEN CAST(substr(p.created_at, 6, 2) AS int) <= 2 THEN 1 ELSE 0 END AS y,
               CAST(substr(p.created_at, 6, 2) AS bigint) AS mo,
               CAST(substr(p.created_at, 9, 2) AS bigint) AS d,
               CAST(substr(p.created_at, 12, 2) AS bigint) * 3600
                 + CAST(substr(p.created_at, 15, 2) AS bigint) * 60
                 + CAST(substr(p.created_at, 18, 2) AS bigint) AS sod,
               CASE WHEN right(p.created_at, 1) IN ('Z', 'z') THEN 1 ELSE 6 END AS zl
    ) t1
    CROSS JOIN LATERAL (
        SELECT CASE WHEN t1.y >= 0 THEN t1.y / 400 ELSE (t1.y - 399) / 400 END AS era,
               CASE WHEN t1.zl = 1 THEN 0
                    ELSE CASE WHEN substr(p.created_at, length(p.created_at) - 5, 1) = '+'
                              THEN 1 ELSE -1 END
                         * (CAST(substr(p.created_at, length(p.created_at) - 4, 2) AS bigint) * 3600
                            + CAST(right(p.created_at, 2) AS bigint) * 60)
               END AS off,
               CASE WHEN substr(p.created_at, 20, 1) = '.'
                    THEN CAST(rpad(left(substr(p.created_at, 21,
                                                length(p.created_at) - 20 - t1.zl), 9), 9, '0')
                              AS bigint)
                    ELSE 0 END AS frac
    ) t2
    CROSS JOIN LATERAL (
        SELECT t1.y - t2.era * 400 AS yoe,
               (153 * ((t1.mo + 9) % 12) + 2) / 5 + t1.d - 1 AS doy
    ) t3
    WHERE p.created_at IS NOT NULL
),
"""

# The checkpoint moves to the last row read (test events and other kinds included) in the
# same statement, hence the same transaction, as the rows it covers.
_ADVANCE = """
last AS (
    SELECT xid, position FROM raw ORDER BY xid DESC, position DESC LIMIT 1
),
advanced AS (
    UPDATE projection_checkpoints c
    SET xid = last.xid, position = last.position, updated_at = now()
    FROM last
    WHERE c.name = :checkpoint
)
SELECT (SELECT count(*) FROM raw) AS read, (SELECT count(*) FROM batch) AS applied
"""

_NEWEST = "ORDER BY {by}, ns DESC, event_id DESC"


def _string(field: str) -> str:
    """A string field of the object, or NULL (as `ProjectedEvent.text`)."""
    return f"CASE WHEN jsonb_typeof(obj -> '{field}') = 'string' THEN obj ->> '{field}' END"


def _newer(ns: str, event_id: str) -> str:
    """The incoming row was set by a newer event than the stored one."""
    return (
        f"excluded.{ns} IS NOT NULL AND (t.{ns} IS NULL"
        f" OR (excluded.{ns}, excluded.{event_id}) > (t.{ns}, t.{event_id}))"
    )


def _guarded(columns: Sequence[str], ns: str, event_id: str) -> list[str]:
    condition = _newer(ns, event_id)
    return [
        f"{c} = CASE WHEN {condition} THEN excluded.{c} ELSE t.{c} END"
        for c in (*columns, ns, event_id)
    ]


def _identities(tables: Mapping[str, str]) -> str:
    identities, controls = tables["identities"], tables["identity_controls"]
    # Every SET expression sees the row as it was, so the guards may name the key columns
    # they also overwrite.
    sets = [
        *_guarded(["summary_status"], "status_ns", "status_event_id"),
        *_guarded(["required_documents"], "documents_ns", "documents_event_id"),
        *_guarded(
            ["kyc_state", "kyc_last_refresh_at", "kyc_next_refresh_at"], "kyc_ns", "kyc_event_id"
        ),
        *_guarded(["last_event_type", "last_event_time"], "last_ns", "last_event_id"),
        "events_count = t.events_count + excluded.events_count",
        "updated_at = now()",
    ]
    return f"""
ev AS MATERIALIZED (
    SELECT obj ->> 'identity_id' AS identity_id, event_id, type, obj, created_at, ns
    FROM batch
    WHERE type LIKE 'identity.%' AND jsonb_typeof(obj -> 'identity_id') = 'string'
),
newest AS MATERIALIZED (
    -- One sort and one pass: every aggregate runs over the identity's whole batch, newest
    -- first, so `(array_agg(x) FILTER (WHERE group))[1]` is x of the group's newest event.
    -- (Separate DISTINCT ON per group joined together is planned as nested loops: the
    -- planner cannot estimate how many rows each group has.)
    SELECT identity_id, rn, n, ns, event_id, type, created_at,
           status[1] AS status_value, status_ns[1] AS status_ns, status_id[1] AS status_id,
           documents[1] AS documents_value, documents_ns[1] AS documents_ns,
           documents_id[1] AS documents_id,
           kyc_state[1] AS kyc_state, kyc_last[1] AS kyc_last, kyc_next[1] AS kyc_next,
           kyc_ns[1] AS kyc_ns, kyc_id[1] AS kyc_id
    FROM (
        SELECT identity_id, ns, event_id, type, created_at,
               row_number() OVER w AS rn, count(*) OVER w AS n,
               array_agg(obj ->> 'new_summary_status') FILTER (WHERE is_status) OVER w AS status,
               array_agg(ns) FILTER (WHERE is_status) OVER w AS status_ns,
               array_agg(event_id) FILTER (WHERE is_status) OVER w AS status_id,
               array_agg(documents) FILTER (WHERE is_documents) OVER w AS documents,
               array_agg(ns) FILTER (WHERE is_documents) OVER w AS documents_ns,
               array_agg(event_id) FILTER (WHERE is_documents) OVER w AS documents_id,
               array_agg(substr(type, 22)) FILTER (WHERE is_kyc) OVER w AS kyc_state,
               array_agg({_string("last_kyc_refresh_date")}) FILTER (WHERE is_kyc) OVER w
                   AS kyc_last,
               array_agg({_string("next_kyc_refresh_date")}) FILTER (WHERE is_kyc) OVER w
                   AS kyc_next,
               array_agg(ns) FILTER (WHERE is_kyc) OVER w AS kyc_ns,
               array_agg(event_id) FILTER (WHERE is_kyc) OVER w AS kyc_id
        FROM (
            SELECT ev.*,
                   jsonb_typeof(obj -> 'new_summary_status') = 'string' AS is_status,
                   type = '{DOCUMENTS_REQUIRED}' AS is_documents,
                   left(type, 21) = 'identity.kyc_refresh.' AS is_kyc,
                   CASE WHEN type = '{DOCUMENTS_REQUIRED}' THEN coalesce((
                       SELECT jsonb_agg(x.value ORDER BY x.ord)
                       FROM jsonb_array_elements(
                           CASE WHEN jsonb_typeof(obj -> 'required_documents') = 'array'
                                THEN obj -> 'required_documents' ELSE '[]'::jsonb END
                       ) WITH ORDINALITY AS x(value, ord)
                       WHERE jsonb_typeof(x.value) = 'string'
                   ), '[]'::jsonb) END AS documents
            FROM ev
        ) flagged
        WINDOW w AS (PARTITION BY identity_id ORDER BY ns DESC, event_id DESC
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    ) windowed
    WHERE rn = 1
),
upserted AS (
    INSERT INTO {identities} AS t (
        identity_id, summary_status, status_ns, status_event_id,
        required_documents, documents_ns, documents_event_id,
        kyc_state, kyc_last_refresh_at, kyc_next_refresh_at, kyc_ns, kyc_event_id,
        last_ns, last_event_id, last_event_type, last_event_time, events_count, updated_at)
    SELECT identity_id, status_value, status_ns, status_id,
           documents_value, documents_ns, documents_id,
           kyc_state, kyc_last, kyc_next, kyc_ns, kyc_id,
           ns, event_id, type, created_at, n, now()
    FROM newest
    ON CONFLICT (identity_id) DO UPDATE SET
        {", ".join(sets)}
),
controlled AS (
    INSERT INTO {controls} AS t (
        identity_id, control_id, deleted, control_type, set_by, is_overridable, reason_code,
        created_at, event_ns, event_id)
    SELECT DISTINCT ON (identity_id, obj ->> 'control_id')
           identity_id, obj ->> 'control_id', type = '{CONTROL_DELETED}',
           {_string("control_type")}, {_string("set_by")},
           CASE WHEN jsonb_typeof(obj -> 'is_overridable') = 'boolean'
                THEN CAST(obj ->> 'is_overridable' AS boolean) END,
           {_string("reason_code")}, created_at, ns, event_id
    FROM ev
    WHERE type IN ('{CONTROL_CREATED}', '{CONTROL_DELETED}')
      AND jsonb_typeof(obj -> 'control_id') = 'string'
    ORDER BY identity_id, obj ->> 'control_id', ns DESC, event_id DESC
    ON CONFLICT (identity_id, control_id) DO UPDATE SET
        deleted = excluded.deleted, control_type = excluded.control_type,
        set_by = excluded.set_by, is_overridable = excluded.is_overridable,
        reason_code = excluded.reason_code, created_at = excluded.created_at,
        event_ns = excluded.event_ns, event_id = excluded.event_id
    WHERE (excluded.event_ns, excluded.event_id) > (t.event_ns, t.event_id)
),
"""


def _latest_state(table: str, key: str, fields: Sequence[str]) -> str:
    """A projection whose every field comes from the subject's newest event."""
    newest = _NEWEST.format(by="subject_id")
    sets = _guarded([*fields, "last_event_type", "last_event_time"], "last_ns", "last_event_id")
    values = ", ".join(f"{_string(f)} AS {f}" for f in fields)
    return f"""
ev AS (
    SELECT obj ->> 'id' AS subject_id, event_id, type, obj, created_at, ns
    FROM batch WHERE jsonb_typeof(obj -> 'id') = 'string'
),
latest AS (
    SELECT DISTINCT ON (subject_id) subject_id, ns, event_id, type AS event_type, created_at,
           count(*) OVER (PARTITION BY subject_id) AS n, {values}
    FROM ev {newest}
),
upserted AS (
    INSERT INTO {table} AS t (
        {key}, {", ".join(fields)},
        last_ns, last_event_id, last_event_type, last_event_time, events_count, updated_at)
    SELECT subject_id, {", ".join(fields)}, ns, event_id, event_type, created_at, n, now()
    FROM latest
    ON CONFLICT ({key}) DO UPDATE SET
        {", ".join(sets)},
        events_count = t.events_count + excluded.events_count,
        updated_at = now()
),
"""


def _body(name: str, tables: Mapping[str, str]) -> tuple[str, str]:
    from service.projections.orchestration import FIELDS as ORCHESTRATION_FIELDS
    from service.projections.transfer import FIELDS as TRANSFER_FIELDS

    if name == "identities":
        return "identity.", _identities(tables)
    if name == "transfers":
        return "transfer.", _latest_state(tables["transfers"], "transfer_id", TRANSFER_FIELDS)
    if name == "orchestrations":
        return "orchestration.", _latest_state(
            tables["orchestrations"], "orchestration_id", ORCHESTRATION_FIELDS
        )
    raise KeyError(name)


@lru_cache(maxsize=32)
def _statement(name: str, tables: tuple[tuple[str, str], ...]) -> TextClause:
    prefix, body = _body(name, dict(tables))
    batch = _BATCH.replace("{pattern}", TIME_PATTERN).replace("{prefix}", prefix)
    return text(batch + body + _ADVANCE)


def apply_statement(name: str, tables: Mapping[str, str]) -> TextClause:
    """The statement that applies the next batch to projection `name`'s `tables`.

    Parameters: `xid` (an int: asyncpg speaks xid8 as one) and `position`, the checkpoint
    read under lock; `limit`; `checkpoint`, the name of the checkpoint row to move. It
    answers `read` (journal rows consumed) and `applied` (real events of this projection's
    kind among them).
    """
    return _statement(name, tuple(sorted(tables.items())))
