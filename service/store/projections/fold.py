"""Set-based application of journal rows to a projection's tables.

Two pieces, each one SQL text, composed in two ways:

- *extract*: per journal `event` row, from its body as parsed when it was written (`doc`),
  keep real (not test) events of the projection's kind whose time and subject can be read,
  and compute what the fold needs from it: `created_at` in nanoseconds and a few narrow
  columns (the identity, the new status, ...);
- *fold*: from such rows, take the newest event per subject and field group
  (`ORDER BY subject, ns DESC, event_id DESC`) and upsert with "only if newer" guards.

The runner applies a batch with one statement, extract then fold, that also moves the
checkpoint, all in the caller's transaction (`apply_statement`, which `checkpoints.apply_batch`
runs). A rebuild runs the same two pieces apart (`stage_statement`, `fold_statement`, which
`rebuild.py` runs): it extracts the whole journal into a
staging table, in chunks on several connections at once (the extract is most of the work), then
folds the staging table into the empty shadow tables, one part of the subjects at a time on
each connection, so each subject is upserted once instead of once per batch. A loop per event in
Python would be two orders of magnitude slower (the rebuild benchmark needs 100,000
events/s); the pure folds (`service.domain.identity`, ...) specify what this must compute, and
a property test holds the two together.

Table names are parameters (never user input) so that a rebuild can fill shadow tables with
the very same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import TextClause, text

from service.domain import orchestration, transfer
from service.domain.event import FIELD_RANGES
from service.domain.history import DOC_VALUES, LAYOUTS
from service.domain.identity import (
    CONTROL_CREATED,
    CONTROL_DELETED,
    DOCUMENTS_REQUIRED,
    KYC_PREFIX,
    PREFIX,
)
from service.store.tables import TEST_CONFIRMATION

# The extract, as a LATERAL over a journal row `j` (event_id, doc): the body comes parsed (the
# journal's generated `doc`, computed once when the row was written).
#
# `created_at` becomes nanoseconds as `event.time_ns` computes them: the same checks as its
# pattern (RFC 3339 with `T` or `t`, an optional fraction, `Z`, `z` or an offset) and ranges,
# then the same sums. The checks read the time's UTF-8 bytes (`get_byte`, in place), not its
# characters: a regular expression had PostgreSQL build its automaton anew on every call (a
# fifth of a rebuild's work), and character positions in text are found by walking the string
# from its start on every call. Any byte that is not ASCII fails a check, so a time that
# passes is ASCII throughout. Each level is fenced (OFFSET 0): inlined, a column would be
# computed once per use, and no byte is read before the level below has checked the length.
# (Levels, not LATERAL joins, which the planner would try to memoize.) Years outside
# 1678..2261 do not fit nanoseconds in a bigint, so such times are unreadable (NULL) here and
# in `time_ns`.
#
# Projections reflect real events only. Test events are dropped by the statements around the
# extract: an event Paxos confirmed as a test event (the journal's `test_confirmation` row,
# written in the transaction that wrote its `event` row, so every reader sees both or
# neither; the notification's unsigned `is_test` counts for nothing). The check goes through
# the small partial index of confirmations (ix_journal_test_confirmation_event_id, hence
# `kind = 'test_confirmation'`, its predicate), read once per statement: inside the LATERAL
# it would be a lookup per event, which costs more than the extract.
_EXTRACT = """
    SELECT p.type, p.created_at,
           ((p.y / 400 * 146097 + p.y % 400 * 365 + p.y % 400 / 4 - p.y % 400 / 100
             + (153 * ((p.month + 9) % 12) + 2) / 5 + p.day - 1 - 719468) * 86400
            + p.hour * 3600 + p.minute * 60 + p.second - p.off) * 1000000000 + p.frac AS ns,
           {facts}
    FROM (
        -- Days from the civil date (H. Hinnant's algorithm; the year is 1678..2261, so its
        -- era is y / 400); a bigint, so that the sums in nanoseconds are too.
        SELECT p.*, CAST(p.year AS bigint) - CASE WHEN p.month <= 2 THEN 1 ELSE 0 END AS y
        FROM (
            -- Checked: every digit place holds a digit, the fraction (after a dot) is digits
            -- (btrim of the ASCII digits leaves nothing), every field is in its range; so the
            -- fraction's cast cannot fail.
            SELECT p.type, p.obj, p.created_at, {fields},
                   CASE WHEN p.zone_length = 1 THEN 0
                        ELSE CASE WHEN p.zone_sign = ascii('+') THEN 1 ELSE -1 END
                             * ({zone_hour} * 3600 + {zone_minute} * 60)
                   END AS off,
                   CASE WHEN p.fraction_length = 0 THEN 0
                        ELSE CAST(rpad(substr(p.created_at, 21, least(p.fraction_length - 1, 9)),
                                       9, '0') AS bigint)
                   END AS frac
            FROM (
                -- Each digit place as a number (a digit if 0..9); where the zone starts.
                SELECT p.type, p.obj, p.created_at, p.t, {digits},
                       get_byte(p.t, 4) = ascii('-') AND get_byte(p.t, 7) = ascii('-')
                       AND get_byte(p.t, 10) IN (ascii('T'), ascii('t'))
                       AND get_byte(p.t, 13) = ascii(':') AND get_byte(p.t, 16) = ascii(':')
                           AS separated,
                       p.zone_length, get_byte(p.t, p.n - 6) AS zone_sign,
                       p.n - 19 - p.zone_length AS fraction_length,
                       get_byte(p.t, 19) AS after_seconds
                FROM (
                    -- The zone: `Z`, `z` or an offset (+hh:mm or -hh:mm) at the end.
                    SELECT p.*,
                           CASE WHEN get_byte(p.t, p.n - 1) IN (ascii('Z'), ascii('z')) THEN 1
                                WHEN get_byte(p.t, p.n - 6) IN (ascii('+'), ascii('-'))
                                     AND get_byte(p.t, p.n - 3) = ascii(':') THEN 6
                           END AS zone_length
                    FROM (
                        -- As text: only a JSON string's text can pass the checks. Bytes from
                        -- 0 to 19 and the last six can be read (at least 20 of them).
                        SELECT q.type, q.b AS obj, q.created_at, q.t,
                               octet_length(q.t) AS n
                        FROM (
                            SELECT q.type, q.b, q.created_at,
                                   convert_to(q.created_at, 'UTF8') AS t
                            FROM (
                                SELECT j.doc AS b, j.doc ->> 0 AS type,
                                       j.doc ->> 1 AS created_at
                                OFFSET 0
                            ) q
                            WHERE q.type LIKE '{prefix}%'
                            OFFSET 0
                        ) q
                        WHERE octet_length(q.t) >= 20
                        OFFSET 0
                    ) p
                    OFFSET 0
                ) p
                WHERE p.zone_length IS NOT NULL
                OFFSET 0
            ) p
            WHERE p.separated AND {digits_checked}
              AND (p.fraction_length = 0
                   OR p.fraction_length >= 2 AND p.after_seconds = ascii('.')
                      AND btrim(substring(p.t FROM 21 FOR p.fraction_length - 1),
                                '\\x30313233343536373839'::bytea) = ''::bytea)
              AND {ranges}
              AND {subject} IS NOT NULL
            OFFSET 0
        ) p
    ) p
"""

# The byte offsets of each field's digits in `created_at`: YYYY-MM-DDThh:mm:ss, then the
# zone's hh:mm, counted from the end (read only when there is an offset). Their ranges are
# `event.FIELD_RANGES`, which `time_ns` checks too.
_TIME_DIGITS = {
    "year": (0, 1, 2, 3),
    "month": (5, 6),
    "day": (8, 9),
    "hour": (11, 12),
    "minute": (14, 15),
    "second": (17, 18),
}
_ZONE_DIGITS = {"zone_hour": (-5, -4), "zone_minute": (-2, -1)}


def _time_sql() -> dict[str, str]:
    """The generated parts of the extract's time checks and sums, by their place in it."""
    digits = {
        f"{name}_{i}": f"get_byte(p.t, {offset if offset >= 0 else f'p.n - {-offset}'}) - 48"
        for name, offsets in {**_TIME_DIGITS, **_ZONE_DIGITS}.items()
        for i, offset in enumerate(offsets)
    }

    def value(name: str, count: int) -> str:
        return " + ".join(
            f"p.{name}_{i}" + (f" * {10 ** (count - 1 - i)}" if i < count - 1 else "")
            for i in range(count)
        )

    fields = {name: value(name, len(offsets)) for name, offsets in _TIME_DIGITS.items()}
    zone = {name: value(name, 2) for name in _ZONE_DIGITS}

    def in_range(column: str, low: int, high: int) -> str:
        return f"{column} BETWEEN {low} AND {high}"

    time_digits = [c for c in digits if not c.startswith("zone_")]
    zone_digits = [c for c in digits if c.startswith("zone_")]
    checks = [
        *(in_range(f"p.{c}", 0, 9) for c in time_digits),
        "(p.zone_length = 1 OR "
        + " AND ".join(in_range(f"p.{c}", 0, 9) for c in zone_digits)
        + ")",
    ]
    ranges = [
        *(in_range(f"({fields[n]})", *FIELD_RANGES[n]) for n in _TIME_DIGITS),
        "(p.zone_length = 1 OR "
        + " AND ".join(in_range(f"({zone[n]})", *FIELD_RANGES[n]) for n in _ZONE_DIGITS)
        + ")",
    ]
    return {
        "digits": ",\n                       ".join(f"{e} AS {c}" for c, e in digits.items()),
        "digits_checked": "\n              AND ".join(checks),
        "fields": ", ".join(f"{e} AS {n}" for n, e in fields.items()),
        "zone_hour": f"({zone['zone_hour']})",
        "zone_minute": f"({zone['zone_minute']})",
        "ranges": "\n              AND ".join(ranges),
    }


# The runner's batch: the next journal `event` rows, gap-safely (DESIGN.md §1): positions are
# assigned at insert but become visible at commit, so reading `position > checkpoint` would
# skip a row that commits late. Rows are read in (xid, position) order and only below the
# oldest transaction still running (pg_snapshot_xmin): every transaction with a smaller xid
# has ended, so no row can later appear behind the checkpoint. The horizon is computed in
# this very statement, so it belongs to the same snapshot as the rows read. Every row read is
# kept (narrow: the body is not), for the count and the checkpoint; `ev` are the extracted ones.
_BATCH = """
WITH raw AS MATERIALIZED (
    SELECT j.xid, j.position, j.event_id, x.*
    FROM (
        SELECT j.xid, j.position, j.event_id, j.doc,
               -- A probe of the partial index per row read (a join could be planned as a
               -- loop over every test event per row).
               EXISTS (SELECT 1 FROM journal t
                       WHERE t.event_id = j.event_id AND t.kind = '{confirmation}') AS is_test
        FROM journal j
        WHERE j.kind = 'event'
          AND j.xid < pg_snapshot_xmin(pg_current_snapshot())
          AND (j.xid, j.position) > (CAST(:xid AS xid8), CAST(:position AS bigint))
        ORDER BY j.xid, j.position
        LIMIT :limit
    ) j
    LEFT JOIN LATERAL ({extract}) x ON NOT j.is_test
),
ev AS MATERIALIZED (
    SELECT event_id, type, created_at, ns, {columns} FROM raw WHERE ns IS NOT NULL
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
SELECT (SELECT count(*) FROM raw) AS read, (SELECT count(*) FROM ev) AS applied
"""

# Subjects are grouped, never shown in sort order: byte order (COLLATE "C") groups them the
# same as the database's collation and sorts them without locale comparisons (this, and the
# KYC state extracted once per event, took about a fifth off the fold).
_NEWEST = "ORDER BY {by}, ns DESC, event_id DESC"


def _value(prefix: str, field: str) -> str:
    """An object field's JSON value in the doc (`p.obj`, the journal's `doc`: an array laid out
    as `history.LAYOUTS[prefix]` says), or NULL."""
    return f"p.obj -> {DOC_VALUES + LAYOUTS[prefix].index(field)}"


def _string(prefix: str, field: str) -> str:
    """A string field of the object, or NULL (as `ProjectedEvent.text`)."""
    value = _value(prefix, field)
    return f"CASE WHEN jsonb_typeof({value}) = 'string' THEN {value.replace('->', '->>')} END"


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


_CONTROL = f"p.type IN ('{CONTROL_CREATED}', '{CONTROL_DELETED}')"
# LIKE with the prefix's `_` escaped: it compares bytes, where starts_with() and left() count
# characters (several times slower, and this runs once per event).
_KYC = "p.type LIKE '" + KYC_PREFIX.replace("_", "\\_") + "%'"

# What the identities fold needs of each event, extracted once. Fields only one kind of event
# uses are extracted for that kind only; `documents` is the raw value, cleaned for the one
# event per identity that wins (see `newest`).
_OVERRIDABLE = _value(PREFIX, "is_overridable")
_IDENTITY_FACTS = {
    "identity_id": _string(PREFIX, "identity_id"),
    "status": _string(PREFIX, "new_summary_status"),
    "documents": f"CASE WHEN p.type = '{DOCUMENTS_REQUIRED}' "
    f"THEN {_value(PREFIX, 'required_documents')} END",
    "kyc_state": f"CASE WHEN {_KYC} THEN substr(p.type, {len(KYC_PREFIX) + 1}) END",
    "kyc_last": f"CASE WHEN {_KYC} THEN {_string(PREFIX, 'last_kyc_refresh_date')} END",
    "kyc_next": f"CASE WHEN {_KYC} THEN {_string(PREFIX, 'next_kyc_refresh_date')} END",
    "control_id": f"CASE WHEN {_CONTROL} THEN {_string(PREFIX, 'control_id')} END",
    "control_type": f"CASE WHEN {_CONTROL} THEN {_string(PREFIX, 'control_type')} END",
    "set_by": f"CASE WHEN {_CONTROL} THEN {_string(PREFIX, 'set_by')} END",
    "is_overridable": f"CASE WHEN {_CONTROL} AND jsonb_typeof({_OVERRIDABLE}) = 'boolean' "
    f"THEN CAST({_OVERRIDABLE.replace('->', '->>')} AS boolean) END",
    "reason_code": f"CASE WHEN {_CONTROL} THEN {_string(PREFIX, 'reason_code')} END",
}


def _identities(tables: Mapping[str, str], upsert: bool) -> str:
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
newest AS MATERIALIZED (
    -- One sort and one pass: every aggregate runs over the identity's whole batch, newest
    -- first, so `(array_agg(x) FILTER (WHERE group))[1]` is x of the group's newest event.
    -- (Separate DISTINCT ON per group joined together is planned as nested loops: the
    -- planner cannot estimate how many rows each group has.) The documents list is cleaned
    -- (strings only) for the newest documents event alone, not for every one.
    SELECT identity_id, n, ns, event_id, type, created_at,
           status[1] AS status_value, status_ns[1] AS status_ns, status_id[1] AS status_id,
           CASE WHEN documents_ns[1] IS NOT NULL THEN coalesce((
               SELECT jsonb_agg(x.value ORDER BY x.ord)
               FROM jsonb_array_elements(
                   CASE WHEN jsonb_typeof(documents[1]) = 'array'
                        THEN documents[1] ELSE '[]'::jsonb END
               ) WITH ORDINALITY AS x(value, ord)
               WHERE jsonb_typeof(x.value) = 'string'
           ), '[]'::jsonb) END AS documents_value,
           documents_ns[1] AS documents_ns, documents_id[1] AS documents_id,
           kyc_state[1] AS kyc_state, kyc_last[1] AS kyc_last, kyc_next[1] AS kyc_next,
           kyc_ns[1] AS kyc_ns, kyc_id[1] AS kyc_id
    FROM (
        SELECT identity_id, ns, event_id, type, created_at,
               row_number() OVER w AS rn, count(*) OVER w AS n,
               array_agg(status) FILTER (WHERE status IS NOT NULL) OVER w AS status,
               array_agg(ns) FILTER (WHERE status IS NOT NULL) OVER w AS status_ns,
               array_agg(event_id) FILTER (WHERE status IS NOT NULL) OVER w AS status_id,
               array_agg(documents) FILTER (WHERE is_documents) OVER w AS documents,
               array_agg(ns) FILTER (WHERE is_documents) OVER w AS documents_ns,
               array_agg(event_id) FILTER (WHERE is_documents) OVER w AS documents_id,
               array_agg(kyc_state) FILTER (WHERE is_kyc) OVER w AS kyc_state,
               array_agg(kyc_last) FILTER (WHERE is_kyc) OVER w AS kyc_last,
               array_agg(kyc_next) FILTER (WHERE is_kyc) OVER w AS kyc_next,
               array_agg(ns) FILTER (WHERE is_kyc) OVER w AS kyc_ns,
               array_agg(event_id) FILTER (WHERE is_kyc) OVER w AS kyc_id
        FROM (
            SELECT ev.*, type = '{DOCUMENTS_REQUIRED}' AS is_documents,
                   kyc_state IS NOT NULL AS is_kyc
            FROM ev
        ) flagged
        WINDOW w AS (PARTITION BY identity_id COLLATE "C" ORDER BY ns DESC, event_id DESC
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
    {_when(upsert, f"ON CONFLICT (identity_id) DO UPDATE SET {', '.join(sets)}")}
),
controlled AS (
    INSERT INTO {controls} AS t (
        identity_id, control_id, deleted, control_type, set_by, is_overridable, reason_code,
        created_at, event_ns, event_id)
    SELECT DISTINCT ON (identity_id COLLATE "C", control_id COLLATE "C")
           identity_id, control_id, type = '{CONTROL_DELETED}',
           control_type, set_by, is_overridable, reason_code, created_at, ns, event_id
    FROM ev
    WHERE control_id IS NOT NULL
    ORDER BY identity_id COLLATE "C", control_id COLLATE "C", ns DESC, event_id DESC
    {_when(upsert, _CONTROL_CONFLICT)}
)"""


_CONTROL_CONFLICT = """ON CONFLICT (identity_id, control_id) DO UPDATE SET
        deleted = excluded.deleted, control_type = excluded.control_type,
        set_by = excluded.set_by, is_overridable = excluded.is_overridable,
        reason_code = excluded.reason_code, created_at = excluded.created_at,
        event_ns = excluded.event_ns, event_id = excluded.event_id
    WHERE (excluded.event_ns, excluded.event_id) > (t.event_ns, t.event_id)"""


def _when(condition: bool, clause: str) -> str:
    return clause if condition else ""


def _latest_state(table: str, key: str, fields: Sequence[str], upsert: bool) -> str:
    """A projection whose every field comes from the subject's newest event."""
    newest = _NEWEST.format(by='subject_id COLLATE "C"')
    sets = [
        *_guarded([*fields, "last_event_type", "last_event_time"], "last_ns", "last_event_id"),
        "events_count = t.events_count + excluded.events_count",
        "updated_at = now()",
    ]
    return f"""
latest AS (
    SELECT DISTINCT ON (subject_id COLLATE "C")
           subject_id, ns, event_id, type AS event_type, created_at,
           count(*) OVER (PARTITION BY subject_id COLLATE "C") AS n,
           {", ".join(f"o_{f} AS {f}" for f in fields)}
    FROM ev {newest}
),
upserted AS (
    INSERT INTO {table} AS t (
        {key}, {", ".join(fields)},
        last_ns, last_event_id, last_event_type, last_event_time, events_count, updated_at)
    SELECT subject_id, {", ".join(fields)}, ns, event_id, event_type, created_at, n, now()
    FROM latest
    {_when(upsert, f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(sets)}")}
)"""


@dataclass(frozen=True, slots=True)
class _Spec:
    prefix: str  # the event types the projection reads
    subject: str  # the facts column naming the subject
    facts: Mapping[str, str]  # column -> SQL over the parsed `p.type` and `p.obj`


# The projections whose subject is its newest event (`service.domain.latest`): their table's
# key column, the event types they read and the object fields they keep.
_LATEST = {
    "transfers": ("transfer_id", transfer.PREFIX, transfer.FIELDS),
    "orchestrations": ("orchestration_id", orchestration.PREFIX, orchestration.FIELDS),
}


def _spec(name: str) -> _Spec:
    if name == "identities":
        return _Spec(PREFIX, "identity_id", _IDENTITY_FACTS)
    _, prefix, fields = _LATEST[name]
    # Object fields are prefixed: the transfer's own `type` is not the event's.
    facts = {
        "subject_id": _string(prefix, "id"),
        **{f"o_{f}": _string(prefix, f) for f in fields},
    }
    return _Spec(prefix, "subject_id", facts)


def _fold(name: str, tables: Mapping[str, str], upsert: bool = True) -> str:
    """The fold's CTEs; `upsert=False` for tables known to hold none of the subjects (an
    emptied shadow, folded one part of the subjects at a time): plain INSERTs then give the
    same rows, and the tables need no key while they fill."""
    if name == "identities":
        return _identities(tables, upsert)
    key, _, fields = _LATEST[name]
    return _latest_state(tables[name], key, fields, upsert)


def _extract(spec: _Spec) -> str:
    facts = ",\n           ".join(f"{expr} AS {column}" for column, expr in spec.facts.items())
    sql = _EXTRACT
    for part, value in _time_sql().items():
        sql = sql.replace("{" + part + "}", value)
    return (
        sql.replace("{facts}", facts)
        .replace("{subject}", spec.facts[spec.subject])
        .replace("{prefix}", spec.prefix)
    )


@lru_cache(maxsize=32)
def _statement(name: str, tables: tuple[tuple[str, str], ...]) -> TextClause:
    spec = _spec(name)
    batch = (
        _BATCH.replace("{extract}", _extract(spec))
        .replace("{columns}", ", ".join(spec.facts))
        .replace("{confirmation}", TEST_CONFIRMATION)
    )
    return text(batch + _fold(name, dict(tables)) + "," + _ADVANCE)


def apply_statement(name: str, tables: Mapping[str, str]) -> TextClause:
    """The statement that applies the next batch to projection `name`'s `tables`.

    Parameters: `xid` (an int: asyncpg speaks xid8 as one) and `position`, the checkpoint
    read under lock; `limit`; `checkpoint`, the name of the checkpoint row to move. It
    answers `read` (journal rows consumed) and `applied` (real events of this projection's
    kind among them).
    """
    return _statement(name, tuple(sorted(tables.items())))


def create_facts_statements(name: str, facts: str, parts: int) -> list[TextClause]:
    """Create `facts`, the staging table of projection `name`'s extract, split by a hash of
    the subject into `parts` unlogged partitions (`<facts>_<k>`): each part is folded alone,
    reading only its own rows."""
    columns = f"{facts}_columns"
    subject = _spec(name).subject
    return [
        text(
            f"CREATE TEMPORARY TABLE {columns} AS SELECT j.event_id, x.* "
            f"FROM journal j CROSS JOIN LATERAL ({_extract(_spec(name))}) x WITH NO DATA"
        ),
        text(f"CREATE TABLE {facts} (LIKE pg_temp.{columns}) PARTITION BY HASH ({subject})"),
        *(
            text(
                f"CREATE UNLOGGED TABLE {facts}_{k} PARTITION OF {facts} "
                f"FOR VALUES WITH (MODULUS {parts}, REMAINDER {k})"
            )
            for k in range(parts)
        ),
        text(f"DROP TABLE pg_temp.{columns}"),
    ]


# The journal `event` rows of a staging chunk: heap blocks `lo` to `hi` (excluded), read
# straight from the heap (a TID range scan: no index, no other block), below the horizon.
_CHUNK_ROWS = (
    "j.ctid >= CAST(format('(%s,0)', CAST(:lo AS bigint)) AS tid) "
    "AND j.ctid < CAST(format('(%s,0)', CAST(:hi AS bigint)) AS tid) "
    "AND j.kind = 'event' AND j.xid < CAST(:horizon AS xid8)"
)


@lru_cache(maxsize=32)
def stage_statement(name: str, facts: str) -> TextClause:
    """Extracts the journal `event` rows in heap blocks `lo` up to `hi` (excluded) with an
    xid below `horizon` into `facts`; answers how many journal `event` rows that is (test
    events and other projections' included) and the journal's `filenode`, read under the
    statement's lock on it: the block range means the same rows only while that is the one
    the caller planned with (VACUUM FULL or CLUSTER give the table a new one).

    Gap-safety is the caller's: every transaction below the horizon must have ended."""
    # The count reads the chunk's blocks a second time, without their bodies: about 25 ms
    # per 100,000 rows against some 850 ms to stage them, and simpler than counting the rows
    # the INSERT leaves out (other projections' events, test events).
    return text(
        f"WITH staged AS (INSERT INTO {facts} SELECT j.event_id, x.* "
        f"FROM journal j CROSS JOIN LATERAL ({_extract(_spec(name))}) x "
        f"WHERE {_CHUNK_ROWS} "
        "AND NOT EXISTS (SELECT 1 FROM journal t "
        f"WHERE t.event_id = j.event_id AND t.kind = '{TEST_CONFIRMATION}')) "
        "SELECT count(*) AS events, CAST(pg_relation_filenode('journal') AS bigint) AS filenode "
        f"FROM journal j WHERE {_CHUNK_ROWS}"
    )


def fold_statement(name: str, tables: Mapping[str, str], facts: str) -> TextClause:
    """Folds `facts` (a part of the staging table: whole subjects) into `tables`, which hold
    none of its subjects: plain INSERTs, so the tables may be without their keys.

    Parts hold disjoint subjects, so connections can fold them at the same time.
    """
    return _fold_statement(name, tuple(sorted(tables.items())), facts)


@lru_cache(maxsize=256)
def _fold_statement(name: str, tables: tuple[tuple[str, str], ...], facts: str) -> TextClause:
    spec = _spec(name)
    # Not materialized: each use reads the part straight from its table, which costs less
    # than copying it first.
    ev = (
        f"WITH ev AS NOT MATERIALIZED (\n    SELECT event_id, type, created_at, ns, "
        f"{', '.join(spec.facts)} FROM {facts}\n),"
    )
    return text(ev + _fold(name, dict(tables), upsert=False) + "\nSELECT 1")
