"""The schema: the append-only journal, the events it is summarised into, and service state.

Concurrency and integrity rules live here, each with a comment saying what breaks without it.
Migrations in `migrations/versions/` create exactly this; a test checks the two agree.
"""

from __future__ import annotations

import textwrap

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType

from service.domain.history import FOLDED_FIELDS, LAYOUTS
from service.domain.stored import EVENT_STATUSES


class XID8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`pg_current_xact_id()`), which never wraps around."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


# Reflection (alembic check) must know the type too.
ischema_names["xid8"] = XID8

# A naming convention from the first migration on, so constraints have predictable names
# that later migrations can drop or alter.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# `test_confirmation`: Paxos confirmed the event is a test event (Get Event answered with
# `is_test=true`, or the listing of test events held it), written with the full event. A prune
# removes only events confirmed so, and never this row: the evidence verify checks prunes
# against (migration 0009).
TEST_CONFIRMATION = "test_confirmation"
JOURNAL_KINDS = ("notification", "event", TEST_CONFIRMATION)


def confirmation_body(confirmed_by: str) -> str:
    """The JSON text of a `test_confirmation` row: what confirmed it (`get_event`,
    `list_events`, or `stored_flag`: migration 0009, for events fetched before it)."""
    return f'{{"is_test": true, "confirmed_by": "{confirmed_by}"}}'


def as_jsonb(json_text: str) -> str:
    """SQL for the JSON text `json_text` (an SQL expression) as jsonb: the parsed copies the
    service queries (the journal's `doc`, `events.object_id`). jsonb refuses \\u0000 escapes,
    which the text Paxos sent may hold, so they are replaced (the journal's body keeps them)."""
    return f"CAST(replace(CAST({json_text} AS text), '\\u0000', '\\ufffd') AS jsonb)"


# What the journal keeps parsed of a full event (its `doc`): what the folds read of it, as
# `domain.history.LAYOUTS` says, computed by `journal_doc` (PL/pgSQL: an SQL function with a
# subquery was planned and started anew for every row, 600 µs each; this one takes 11 µs,
# about twice parsing the body). Migration 0018 writes the same definition out (a test
# checks the two agree).
def _matches(pattern: str) -> str:
    return f"starts_with(t, '{pattern}')" if pattern.endswith(".") else f"t = '{pattern}'"


def _array(names: tuple[str, ...], indent: int) -> str:
    listed = textwrap.wrap(", ".join(f"'{name}'" for name in names), 60)
    return "ARRAY[" + ("\n" + " " * (indent + 6)).join(listed) + "]"


def _when(pattern: str, assignment: str, names: tuple[str, ...]) -> str:
    """`assignment` (`layout := `, `names := names || `) of `names` when the type matches."""
    lead = " " * 12 + assignment
    then = f"{lead}{_array(names, len(lead))};"
    return f"        IF {_matches(pattern)} THEN\n{then}\n        END IF;"


JOURNAL_DOC_FUNCTION = (
    """
CREATE FUNCTION journal_doc(body json) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    d jsonb := CAST(replace(CAST(body AS text), '\\u0000', '\\ufffd') AS jsonb);
    t text := d ->> 'type';
    o jsonb := d -> 'object';
    doc jsonb := jsonb_build_array(d -> 'type', d -> 'created_at');
    layout text[] := '{}';
    names text[] := '{}';
    name text;
BEGIN
    IF jsonb_typeof(o) = 'object' THEN
"""
    + "\n".join(_when(prefix, "layout := ", fields) for prefix, fields in LAYOUTS.items())
    + "\n"
    + "\n".join(_when(pattern, "names := names || ", fields) for pattern, fields in FOLDED_FIELDS)
    + """
        FOREACH name IN ARRAY layout LOOP
            doc := doc || jsonb_build_array(CASE WHEN name = ANY (names) THEN o -> name END);
        END LOOP;
        WHILE jsonb_array_length(doc) > 2 AND doc -> -1 = 'null' LOOP
            doc := doc - (-1);
        END LOOP;
    END IF;
    RETURN doc;
END
$$
"""
)

# The journal's `doc` (migration 0018 writes the same expression out).
JOURNAL_DOC = "CASE WHEN kind = 'event' THEN journal_doc(body) END"
# A full event as `events` rows are listed with it: the journal's body (the text as received,
# which `json` keeps; events rows hold no copy since migration 0018), for the event whose id
# is the SQL `{event_id}`.
EVENT_DETAIL = "(SELECT j.body FROM journal j WHERE j.event_id = {event_id} AND j.kind = 'event')"
# Which events are a transfer's, and by what (migration 0018 writes both out).
TRANSFER_EVENTS = "starts_with(type, 'transfer.')"
TRANSFER_OBJECT_ID = "object_id"
# Which events are an orchestration's (migration 0015 writes it out; the id is found as a
# transfer's is, TRANSFER_OBJECT_ID).
ORCHESTRATION_EVENTS = "starts_with(type, 'orchestration.')"
# A type's family: its text up to and including its first dot (`identity.` for
# `identity.kyc_refresh.started`, empty without a dot), what a type prefix filter looks up
# (migration 0010 writes it out; written as PostgreSQL renders it, so `alembic check` agrees).
TYPE_FAMILY = "\"left\"(type, strpos(type, '.'::text))"
EVENT_VIAS = ("webhook", "list_events")

journal = Table(
    "journal",
    metadata,
    # Assigned at insert, so NOT commit order: readers must not follow it alone (see xid).
    Column("position", BigInteger, Identity(always=True), primary_key=True),
    Column("event_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),
    # The writing transaction's id. Rows become visible in commit order, not position order;
    # a reader that takes only rows with xid below the oldest running transaction
    # (pg_snapshot_xmin) and orders by (xid, position) never skips a late-committing row.
    Column("xid", XID8(), nullable=False, server_default=text("pg_current_xact_id()")),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # `json`, not `jsonb`: it keeps the bytes exactly as received (the evidence auditors
    # hash), and accepts \u0000 escapes that jsonb refuses.
    Column("body", JSON(none_as_null=True), nullable=False),
    # What the projections read of a full event, parsed (a rebuild reads every one: parsing
    # them was half its work): JOURNAL_DOC_FUNCTION. PostgreSQL computes it from `body` when
    # the row is written and no statement can write it, so it says what the body says
    # wherever `verify` finds the body intact. jsonb refuses \u0000, so it is replaced.
    Column(
        "doc",
        JSONB(none_as_null=True),
        Computed(JOURNAL_DOC, persisted=True),
        nullable=True,
    ),
    # One row per fact learned; a second delivery or a second fetch adds nothing.
    UniqueConstraint("event_id", "kind"),
    CheckConstraint(f"kind IN {JOURNAL_KINDS!r}", name="kind"),
)
Index("ix_journal_xid_position", journal.c.xid, journal.c.position)
# A minute of the journal by recorded_at (the console's activity counts, store/activity.py):
# the journal is append-only, so its physical order follows recorded_at, and a BRIN index (a
# few pages for millions of rows, nearly free for the intake to keep up) finds that minute
# without reading the rest. Built CONCURRENTLY by 0017.
Index("ix_journal_recorded_at_brin", journal.c.recorded_at, postgresql_using="brin")

events = Table(
    "events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    # The notification's fields, as received.
    Column("type", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("object", Text, nullable=False),
    # What the notification said; unsigned, so it decides nothing on its own (a trigger keeps
    # it as received).
    Column("is_test", Boolean, nullable=False),
    # What Paxos said, set with the full event and never changed after (the same trigger):
    # NULL until then. The journal's `test_confirmation` row is the evidence of a true.
    Column("confirmed_is_test", Boolean, nullable=True),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("via", Text, nullable=False, server_default="webhook"),
    Column("deliveries", Integer, nullable=False, server_default="0"),
    Column("first_received_at", DateTime(timezone=True), nullable=True),
    Column("last_received_at", DateTime(timezone=True), nullable=True),
    # The fetch queue: due when pending and next_attempt_at has passed; a worker's claim is a
    # lease that expires, so a crashed worker's events come back on their own.
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    # What the full event (Get Event) adds.
    Column("fetched_at", DateTime(timezone=True), nullable=True),
    Column("identity_id", Text, nullable=True),
    Column("object_type", Text, nullable=True),
    Column("undelivered_webhooks", Integer, nullable=True),
    # A transfer's or an orchestration's event: the full event's `object.id`, what their
    # events are found by (NULL for other events). The full event is the journal's
    # (EVENT_DETAIL).
    Column("object_id", Text, nullable=True),
    # Every webhook receipt time (the audit export's evidence of "when Paxos told us"),
    # appended by the intake in the statement that bumps `deliveries`: the first
    # RECEIPT_TIMES_KEPT of them (`deliveries` and `last_received_at` stay exact past that).
    Column("receipt_times", ARRAY(DateTime(timezone=True)), nullable=True),
    CheckConstraint(f"status IN {EVENT_STATUSES!r}", name="status"),
    CheckConstraint(f"via IN {EVENT_VIAS!r}", name="via"),
)
# Every /events listing orders by (time, event_id), and every filter it offers is answered by
# range scans of indexes that end in (time, event_id), so a page is read in order however
# deep the cursor (the scans are chosen in store/events.py). A leading column the filter
# does not pin is enumerated there (is_test: 2 values, status: 4; never the types under a
# prefix, which senders choose) and the scans merged, so one index serves several filters:
# fewer indexes for the intake and the fetcher to update.
Index("ix_events_time_event_id", events.c.time, events.c.event_id)
# type, type + is_test (and type + status=fetched, checked per row: nearly every row passes).
Index(
    "ix_events_type_is_test_time_event_id",
    events.c.type,
    events.c.is_test,
    events.c.time,
    events.c.event_id,
)
# A type prefix (`identity.*`), alone or with is_test or status=fetched: one range per family
# and is_test value, however many types the family holds (a scan per type would let a sender
# who invents 20,000 types make every prefix query take seconds). Built CONCURRENTLY by 0010.
Index(
    "ix_events_type_family_is_test_time_event_id",
    text(TYPE_FAMILY),
    events.c.is_test,
    events.c.time,
    events.c.event_id,
)
# status, is_test, status + is_test.
Index(
    "ix_events_status_is_test_time_event_id",
    events.c.status,
    events.c.is_test,
    events.c.time,
    events.c.event_id,
)
# type + a rare status (pending, failed, not_found): checking the status per row on the type
# index would read a hundred rows for each one kept. Partial, so it holds only the few events
# not (yet) fetched.
Index(
    "ix_events_rare_status_type_is_test_time_event_id",
    events.c.status,
    events.c.type,
    events.c.is_test,
    events.c.time,
    events.c.event_id,
    postgresql_where=events.c.status != "fetched",
)
# identity_id, with any other filter checked per row: an identity has few events.
Index(
    "ix_events_identity_id_time_event_id",
    events.c.identity_id,
    events.c.time,
    events.c.event_id,
    postgresql_where=events.c.identity_id.isnot(None),
)
# A transfer's events, newest first (the console's transfer page): they are found by the id
# inside the full event (`object_id`). Partial: transfer events only. Built by 0018.
Index(
    "ix_events_transfer_object_id_time_event_id",
    events.c.object_id,
    events.c.time,
    events.c.event_id,
    postgresql_where=text(TRANSFER_EVENTS),
)
# An orchestration's events (its state as of any time, its history: store/projections/
# history.py), found like a transfer's. Partial: orchestration events only. Built by 0018.
Index(
    "ix_events_orchestration_object_id_time_event_id",
    events.c.object_id,
    events.c.time,
    events.c.event_id,
    postgresql_where=text(ORCHESTRATION_EVENTS),
)
# The fetch queue's claim scans only what is due.
Index(
    "ix_events_pending_next_attempt_at",
    events.c.next_attempt_at,
    postgresql_where=events.c.status == "pending",
)

# Keys that must be the same in every process of a deployment (the signing key of the OAuth
# tokens we issue): created once on first start, read by every process.
service_keys = Table(
    "service_keys",
    metadata,
    Column("name", Text, primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# A deployment-wide rate limit per kind of call to Paxos (GCRA, see service.paxos.ratelimit):
# every process takes permits from the same row, so the limit holds for all of them together.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("name", Text, primary_key=True),
    # The theoretical arrival time of the next permit.
    Column("tat", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # Set by a 429 from Paxos: no process calls before then.
    Column("paused_until", DateTime(timezone=True), nullable=True),
)

# How the deployment's connection to Paxos is doing (store/paxos_connection.py), for
# /health/ready and the console: one row, written by every process that calls Paxos, since
# `serve --no-background` fetches nothing itself and must still show what the workers see. The
# token's state is written when it changes; the last successful Get Event at most every few
# seconds per process, not once per call.
paxos_connection = Table(
    "paxos_connection",
    metadata,
    Column("name", Text, primary_key=True),
    # null: no token asked for yet; then whether the latest token request succeeded.
    Column("token_ok", Boolean, nullable=True),
    # Why the latest token request failed (Paxos's own words or the transport's; no secret).
    Column("token_error", Text, nullable=True),
    Column("token_checked_at", DateTime(timezone=True), nullable=True),
    Column("last_get_event_at", DateTime(timezone=True), nullable=True),
)

JOB_STATES = ("queued", "running", "done", "failed")

# Long work started from the API or the CLI (backfills, rebuilds): any process's job runner
# claims a queued job (SKIP LOCKED); a runner that dies stops heartbeating, and another one
# takes the job over and resumes it from its recorded progress.
jobs = Table(
    "jobs",
    metadata,
    Column("job_id", Uuid, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("state", Text, nullable=False, server_default="queued"),
    Column("progress", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(f"state IN {JOB_STATES!r}", name="state"),
)
Index("ix_jobs_state_created_at", jobs.c.state, jobs.c.created_at)

# Passes over List Events: the periodic reconciler's and on-demand backfills. A pass records
# its window, its counts, and where it has got to (`resume`), so a restart goes on from there.
reconcile_passes = Table(
    "reconcile_passes",
    metadata,
    Column("pass_id", BigInteger, Identity(always=True), primary_key=True),
    Column("kind", Text, nullable=False),  # "reconcile" | "backfill"
    Column("job_id", Uuid, nullable=True),
    Column("window_since", DateTime(timezone=True), nullable=False),
    Column("window_until", DateTime(timezone=True), nullable=False),
    Column("types", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("include_test", Boolean, nullable=False, server_default=text("false")),
    Column("status", Text, nullable=False, server_default="running"),
    Column("pages", Integer, nullable=False, server_default="0"),
    Column("found", Integer, nullable=False, server_default="0"),
    Column("missing", Integer, nullable=False, server_default="0"),
    Column("known", Integer, nullable=False, server_default="0"),
    Column("resume", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("kind IN ('reconcile', 'backfill')", name="kind"),
    CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),
)
Index("ix_reconcile_passes_kind_started_at", reconcile_passes.c.kind, reconcile_passes.c.started_at)

# The events each pass found missing: the missed-webhook report.
reconcile_missed = Table(
    "reconcile_missed",
    metadata,
    Column("pass_id", BigInteger, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("type", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("pass_id", "event_id"),
)

# --- Projections (service/projections/): state derived from the journal, rebuildable. -------

# Where each projection has read the journal to. A projection's rows and its checkpoint are
# written in one transaction, so a crash can never apply a batch twice or lose one. The
# position is `(xid, position)`, the gap-safe reading order of the journal (see journal.xid).
# The runner that applies a batch holds this row's lock (FOR UPDATE SKIP LOCKED): with any
# number of processes, exactly one applies a given batch. A rebuild keeps its own row here
# (`<name>@rebuild`) for the shadow tables it fills, so a killed rebuild resumes from it.
projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", Text, primary_key=True),
    Column("xid", XID8(), nullable=False, server_default=text("'0'::xid8")),
    Column("position", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)


def _last_event_columns() -> list[Column[object]]:
    """What every projection row says of the newest event applied to it, and how many."""
    return [
        Column("last_ns", BigInteger, nullable=False),
        Column("last_event_id", Uuid, nullable=False),
        Column("last_event_type", Text, nullable=False),
        Column("last_event_time", Text, nullable=False),
        # Each journal row is applied once (the checkpoint moves in the same transaction) and
        # the journal holds each event once, so adding a batch's count is exact.
        Column("events_count", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    ]


# An identity's current state (DESIGN.md §3). Paxos promises no order, so every field group
# keeps the key of the event that set it (`*_ns`: Paxos `created_at` in nanoseconds since the
# epoch, which timestamptz cannot hold; `*_event_id` breaks ties) and takes a new value only
# from a newer event: any delivery order gives the same row. `last_event_time` and the KYC
# dates are kept as Paxos wrote them (nanoseconds included).
identities = Table(
    "identities",
    metadata,
    Column("identity_id", Text, primary_key=True),
    Column("summary_status", Text, nullable=True),
    Column("status_ns", BigInteger, nullable=True),
    Column("status_event_id", Uuid, nullable=True),
    Column("required_documents", JSONB, nullable=True),
    Column("documents_ns", BigInteger, nullable=True),
    Column("documents_event_id", Uuid, nullable=True),
    Column("kyc_state", Text, nullable=True),
    Column("kyc_last_refresh_at", Text, nullable=True),
    Column("kyc_next_refresh_at", Text, nullable=True),
    Column("kyc_ns", BigInteger, nullable=True),
    Column("kyc_event_id", Uuid, nullable=True),
    *_last_event_columns(),
)
Index(
    "ix_identities_summary_status_identity_id",
    identities.c.summary_status,
    identities.c.identity_id,
)

# One row per control an identity has ever had, from its newest event: a `deleted` that
# arrives before its `created` still wins, because it is newer. Active controls are the rows
# whose newest event is a `created` (deleted = false).
identity_controls = Table(
    "identity_controls",
    metadata,
    Column("identity_id", Text, nullable=False),
    Column("control_id", Text, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("control_type", Text, nullable=True),
    Column("set_by", Text, nullable=True),
    Column("is_overridable", Boolean, nullable=True),
    Column("reason_code", Text, nullable=True),
    Column("created_at", Text, nullable=False),
    Column("event_ns", BigInteger, nullable=False),
    Column("event_id", Uuid, nullable=False),
    PrimaryKeyConstraint("identity_id", "control_id"),
)
# GET /identities?control_type=...: identities with an active control of that type.
Index(
    "ix_identity_controls_control_type_identity_id",
    identity_controls.c.control_type,
    identity_controls.c.identity_id,
    postgresql_where=identity_controls.c.deleted.is_(False),
)

# A transfer's latest state: every field from its newest event (by created_at, then id).
transfers = Table(
    "transfers",
    metadata,
    Column("transfer_id", Text, primary_key=True),
    Column("type", Text, nullable=True),
    Column("status", Text, nullable=True),
    Column("profile_id", Text, nullable=True),
    Column("ref_id", Text, nullable=True),
    Column("crypto_network", Text, nullable=True),
    Column("crypto_tx_hash", Text, nullable=True),
    Column("crypto_tx_index", Text, nullable=True),
    Column("memo", Text, nullable=True),
    *_last_event_columns(),
)
Index("ix_transfers_status_transfer_id", transfers.c.status, transfers.c.transfer_id)
Index("ix_transfers_profile_id_transfer_id", transfers.c.profile_id, transfers.c.transfer_id)
Index("ix_transfers_type_transfer_id", transfers.c.type, transfers.c.transfer_id)

# An orchestration's latest state, from its newest event.
orchestrations = Table(
    "orchestrations",
    metadata,
    Column("orchestration_id", Text, primary_key=True),
    Column("status", Text, nullable=True),
    Column("ref_id", Text, nullable=True),
    Column("orchestration_rule_id", Text, nullable=True),
    *_last_event_columns(),
)

# Projections skip confirmed test events, and prunes remove only those; this small index
# (test events are few) lets a batch of journal rows be checked against them without a
# lookup in the whole journal per row.
Index(
    "ix_journal_test_confirmation_event_id",
    journal.c.event_id,
    postgresql_where=journal.c.kind == TEST_CONFIRMATION,
)

# --- The audit trail (service/audit/): seals over the journal, verification, pruning. ------

# How many receipt times an event keeps (events.receipt_times): more than the retries Paxos
# makes (exponential backoff from 5 s over 24 hours: under 20), and small enough to stay
# inline in the row (keeping the newest 1,000 rewrote a TOASTed array on every duplicate:
# a batch of duplicates cost 15 times more, measured).
RECEIPT_TIMES_KEPT = 100

# A hash chain over the journal in position order. Each seal covers the contiguous positions
# first_position..last_position (the previous seal's last + 1 onwards, so a row inserted into
# any gap of a sealed range is caught), and holds for each row present its position and
# canonical hash (`rows_digest`: 8-byte big-endian position + 32-byte SHA-256 per row), so a
# verifier names the exact row changed, deleted or inserted. `hash` chains `prev_hash` (the
# previous seal's hash; 32 zero bytes for the first). seal_id is the previous one + 1; the
# unique prev_hash forbids forks. Canonical forms: docs/audit.md.
seals = Table(
    "seals",
    metadata,
    Column("seal_id", BigInteger, primary_key=True, autoincrement=False),
    Column("first_position", BigInteger, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("rows_digest", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("sealed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # The Ed25519 signature of `hash` and the signing key's id (hex SHA-256 of the raw public
    # key); both NULL for an unsigned seal (AUDIT_SIGNING_KEY unset).
    Column("key_id", Text, nullable=True),
    Column("signature", LargeBinary, nullable=True),
    CheckConstraint("first_position <= last_position", name="range"),
    UniqueConstraint("first_position"),
    UniqueConstraint("prev_hash"),
)

# Each `paxos-events prune` run: its threshold and what it removed.
prunes = Table(
    "prunes",
    metadata,
    Column("prune_id", BigInteger, Identity(always=True), primary_key=True),
    Column("pruned_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("older_than_days", Integer, nullable=False),
    Column("cutoff", DateTime(timezone=True), nullable=False),
    Column("events", Integer, nullable=False),
    Column("journal_rows", Integer, nullable=False),
)

# Every journal row ever pruned, with its canonical hash: the journal's append-only trigger
# lets a DELETE through only for a row recorded here first, of an event whose
# `test_confirmation` is in the journal (and never that row), so the seal chain stays
# verifiable after pruning (verify accounts the position by this hash, and reports a pruned
# row without a confirmation). The events table has a trigger too: a row is deleted only if
# its event is so confirmed and its other journal rows are all gone and recorded here
# (migrations 0006, 0009). Another refuses changing `is_test`, or `confirmed_is_test` once set.
pruned_journal_rows = Table(
    "pruned_journal_rows",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),
    Column("row_hash", LargeBinary, nullable=False),
    Column("prune_id", BigInteger, nullable=False),
)
# The events table's delete guard looks a test event's pruned rows up by id.
Index("ix_pruned_journal_rows_event_id", pruned_journal_rows.c.event_id)

# Each verification run and its result (the operator console shows the latest; GET
# /audit/verify answers a recent one again).
audit_verifications = Table(
    "audit_verifications",
    metadata,
    Column("verification_id", BigInteger, Identity(always=True), primary_key=True),
    Column("ran_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("ok", Boolean, nullable=False),
    Column("sealed_through", BigInteger, nullable=True),
    Column("rows_checked", BigInteger, nullable=False),
    Column("problems", JSONB, nullable=False),
    # The newest seal's hash at the time: a recent run is answered again as it was.
    Column("head_hash", Text, nullable=True),
)

# Anchors (service/audit/anchoring.py): every seal head written to a sink outside the database
# (verify reports one gone from its sink), and each sink's latest failure (the console).
audit_anchors = Table(
    "audit_anchors",
    metadata,
    Column("anchor_id", BigInteger, Identity(always=True), primary_key=True),
    Column("sink", Text, nullable=False),
    Column("seal_id", BigInteger, nullable=False),
    Column("seal_hash", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column(
        "anchored_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    UniqueConstraint("sink", "seal_id"),
)

audit_anchor_sinks = Table(
    "audit_anchor_sinks",
    metadata,
    Column("sink", Text, primary_key=True),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=True),
)


# --- Push subscriptions (service/subscriptions/): durable, ordered, signed delivery. ---------

SUBSCRIPTION_STATES = ("active", "paused", "failing")

# A subscriber's endpoint and where it has read the journal to: `cursor_position`, a feed position
# (every matching event at or below it is in the outbox or delivered). The filler reads on from
# it in position order, only up to the feed's horizon (service/store/feed.py: every position at
# or below it is final), and moves it in the same statement, holding this row's lock (FOR NO
# KEY UPDATE SKIP LOCKED): one filler at a time copies each row, whatever the number of
# processes; a filler that finds the row locked reads nothing and moves nothing. The
# signing secret is kept (an HMAC key cannot be a hash); after a rotation the previous one also
# signs until `previous_secret_until`.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("subscription_id", BigInteger, Identity(always=True), primary_key=True),
    Column("name", Text, nullable=False),
    Column("url", Text, nullable=False),
    # Exact types or prefixes (`transfer.*`); empty: every type.
    Column("types", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("include_test", Boolean, nullable=False, server_default=text("false")),
    Column("state", Text, nullable=False, server_default="active"),
    Column("max_in_flight", Integer, nullable=False, server_default="16"),
    Column("secret", LargeBinary, nullable=False),
    Column("previous_secret", LargeBinary, nullable=True),
    Column("previous_secret_until", DateTime(timezone=True), nullable=True),
    Column("cursor_position", BigInteger, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("name"),
    CheckConstraint(f"state IN {SUBSCRIPTION_STATES!r}", name="state"),
    CheckConstraint("max_in_flight BETWEEN 1 AND 256", name="max_in_flight"),
)

# What each subscription still has to deliver: one row per matching journal event, deleted
# once the receiver acknowledged it (so every index here covers only undelivered rows). Events
# sharing a `key` go one at a time in position order: only a key's head (no earlier row of the
# key left) may be claimed, and only when no lease is on it; claims take leases with FOR
# UPDATE SKIP LOCKED, so any number of processes deliver and a dead one's leases run out.
# `attempts` fences a late answer: an outcome is written only for the attempt it belongs to.
subscription_outbox = Table(
    "subscription_outbox",
    metadata,
    Column(
        "subscription_id",
        BigInteger,
        ForeignKey("subscriptions.subscription_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", BigInteger, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("key", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column(
        "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    ),
    Column("first_attempt_at", DateTime(timezone=True), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    PrimaryKeyConstraint("subscription_id", "position"),
)
# A key's head: is there an earlier row of the same key? One probe per candidate.
Index(
    "ix_subscription_outbox_subscription_id_key_position",
    subscription_outbox.c.subscription_id,
    subscription_outbox.c.key,
    subscription_outbox.c.position,
)

# Deliveries by outcome, per subscription (added up per written batch of outcomes).
subscription_deliveries = Table(
    "subscription_deliveries",
    metadata,
    Column(
        "subscription_id",
        BigInteger,
        ForeignKey("subscriptions.subscription_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("outcome", Text, nullable=False),
    Column("count", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("subscription_id", "outcome"),
)

# The console's activity charts: one row per minute (UTC), kept 7 days, written by each
# process's sampler (service/ui/sampler.py). Any number of processes may write at once and
# agree: the journal counts are recounted (the same numbers whoever writes them), the gauges
# are the deployment's state (read from the database, so the last writer is as right as the
# first), and Get Event failures are each process's own, added to the row.
activity_samples = Table(
    "activity_samples",
    metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("received", Integer, nullable=False, server_default="0"),  # journal notifications
    Column("fetched", Integer, nullable=False, server_default="0"),  # journal full events
    Column("failed", Integer, nullable=False, server_default="0"),  # Get Events not fetched
    # Sampled during the minute (NULL: nothing sampled then, the chart shows a gap).
    Column("backlog", Integer, nullable=True),
    Column("fetch_lag_s", Double, nullable=True),
    Column("projection_behind", Integer, nullable=True),
    Column("projection_lag_s", Double, nullable=True),
    Column("sampled_at", DateTime(timezone=True), nullable=True),
)
