"""Test events are what Paxos says they are: a confirmation in the journal, flags that never change.

The notification's `is_test` is unsigned: on its own it must not make an event prunable or
keep it out of the projections. From here on:

- the fetcher (Get Event answered 200 with `is_test=true`) and the List Events listing of test
  events record Paxos's word: `events.confirmed_is_test` (NULL until Paxos has answered, then
  what it said), and, for a test event, a journal row of kind `test_confirmation`, sealed like
  every journal row and never pruned: the evidence verify checks a prune against;
- a trigger refuses any change of `events.is_test`, and of `confirmed_is_test` once set;
- the journal's and the events table's delete guards let a prune remove only an event whose
  confirmation is in the journal (the confirmation row itself always stays);
- GET /audit/verify runs are recorded with their head hash, so a recent run can be answered
  again instead of recomputing the chain for every caller.

Events fetched before this revision were fetched with the notification's flag; for the test
events among them (and those already pruned) this revision writes the confirmation from that
stored flag (`"confirmed_by": "stored_flag"`): an auditor can tell them from Paxos's answers.

The journal's partial index of confirmations is built CONCURRENTLY first (writes go on
meanwhile; a build that fails leaves nothing else done). The journal's kind check is replaced
NOT VALID and validated last, outside the transaction: validating reads the whole journal, and
inside the transaction it would do so under the exclusive lock that replacing the check takes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration must keep meaning what it meant when it ran.
_INDEX = "ix_journal_test_confirmation_event_id"
_CONFIRMED = "test_confirmation"
_LEGACY_BODY = '{"is_test": true, "confirmed_by": "stored_flag"}'
# The canonical row hash (docs/audit.md), as migration 0006 writes it out.
_OLD_ROW_HASH = """sha256(convert_to(
    OLD.position::text || E'\\n' || OLD.event_id::text || E'\\n' || OLD.kind || E'\\n'
    || to_char(OLD.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    || E'\\n' || OLD.body::text, 'UTF8'))"""


def _journal_guard(test_event: str, keep_confirmations: bool) -> str:
    keep = f"AND OLD.kind <> '{_CONFIRMED}'" if keep_confirmations else ""
    return f"""
        CREATE OR REPLACE FUNCTION journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' THEN
                IF EXISTS (
                       SELECT 1 FROM pruned_journal_rows p
                       WHERE p.position = OLD.position AND p.event_id = OLD.event_id
                         AND p.kind = OLD.kind AND p.row_hash = {_OLD_ROW_HASH})
                   {keep}
                   AND {test_event}
                THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'the journal is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """


def _events_guard(test_event: str, rows_left: str) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION events_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' THEN
                IF {test_event}
                   AND EXISTS (SELECT 1 FROM pruned_journal_rows p
                               WHERE p.event_id = OLD.event_id)
                   AND NOT EXISTS ({rows_left})
                THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'events are only deleted by a prune of test events: % is not allowed',
                TG_OP USING ERRCODE = 'restrict_violation';
        END
        $$
        """


# Paxos's confirmation, in the journal: what makes an event a test event for a prune.
_CONFIRMED_IN_JOURNAL = (
    f"EXISTS (SELECT 1 FROM journal c WHERE c.event_id = OLD.event_id AND c.kind = '{_CONFIRMED}')"
)


def upgrade() -> None:
    # Projections and prunes look confirmations up by event id; test events are few, so the
    # index is small. Built without blocking writes, before anything else (see the doc).
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY {_INDEX} ON journal (event_id) WHERE kind = '{_CONFIRMED}'"
        )
    op.execute("SET LOCAL lock_timeout = '10s'")

    # Each statement below can run again: if the validation at the end fails, this part has
    # committed but the revision is not recorded, and the next `migrate` runs it all again.
    op.execute("ALTER TABLE journal DROP CONSTRAINT IF EXISTS ck_journal_kind")
    op.execute(
        "ALTER TABLE journal ADD CONSTRAINT ck_journal_kind "
        f"CHECK (kind IN ('notification', 'event', '{_CONFIRMED}')) NOT VALID"
    )
    op.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS confirmed_is_test boolean")
    op.execute("ALTER TABLE audit_verifications ADD COLUMN IF NOT EXISTS head_hash text")

    # Data: the test events fetched before this revision (see the doc), and those pruned.
    op.execute("UPDATE events SET confirmed_is_test = true WHERE is_test AND status = 'fetched'")
    op.execute(
        f"""
        INSERT INTO journal (event_id, kind, body)
        SELECT event_id, '{_CONFIRMED}', CAST('{_LEGACY_BODY}' AS json)
        FROM (SELECT event_id FROM events WHERE is_test AND status = 'fetched'
              UNION SELECT event_id FROM pruned_journal_rows) AS legacy
        ORDER BY event_id
        ON CONFLICT (event_id, kind) DO NOTHING
        """
    )

    # The flags that decide what may be pruned and what the projections skip never change:
    # is_test is what the notification said, confirmed_is_test what Paxos answered. Only the
    # listed columns fire it, and the WHEN clause leaves every other update alone.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION events_refuse_flag_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'events.is_test never changes and events.confirmed_is_test is set '
                'once: the UPDATE of event % is refused', OLD.event_id
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS events_test_flags_fixed ON events")
    op.execute(
        "CREATE TRIGGER events_test_flags_fixed "
        "BEFORE UPDATE OF is_test, confirmed_is_test ON events FOR EACH ROW "
        "WHEN (OLD.is_test IS DISTINCT FROM NEW.is_test "
        "OR OLD.confirmed_is_test IS NOT NULL "
        "AND OLD.confirmed_is_test IS DISTINCT FROM NEW.confirmed_is_test) "
        "EXECUTE FUNCTION events_refuse_flag_change()"
    )
    # A prune may remove a journal row only of an event Paxos confirmed as a test event, and
    # never the confirmation itself; the events row only once every other row is gone.
    op.execute(_journal_guard(_CONFIRMED_IN_JOURNAL, keep_confirmations=True))
    op.execute(
        _events_guard(
            _CONFIRMED_IN_JOURNAL,
            f"SELECT 1 FROM journal j WHERE j.event_id = OLD.event_id AND j.kind <> '{_CONFIRMED}'",
        )
    )
    # The projections skipped test events by this index of the notification's flag; they now
    # look for the confirmation (the index above).
    op.execute("DROP INDEX IF EXISTS ix_events_test_event_id")

    # Every row already there passed the narrower check. Validating reads the whole journal
    # but, on its own, only blocks other schema changes: writes go on.
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE journal VALIDATE CONSTRAINT ck_journal_kind")


def downgrade() -> None:
    op.create_index(
        "ix_events_test_event_id",
        "events",
        ["event_id"],
        postgresql_where=sa.text("is_test IS true"),
    )
    op.execute(
        _events_guard("OLD.is_test", "SELECT 1 FROM journal j WHERE j.event_id = OLD.event_id")
    )
    op.execute(
        _journal_guard(
            "EXISTS (SELECT 1 FROM events e WHERE e.event_id = OLD.event_id AND e.is_test)",
            keep_confirmations=False,
        )
    )
    op.execute("DROP TRIGGER events_test_flags_fixed ON events")
    op.execute("DROP FUNCTION events_refuse_flag_change()")
    op.drop_column("audit_verifications", "head_hash")
    op.drop_column("events", "confirmed_is_test")
    # The confirmations stay (the journal is append-only): the old check holds for the rows
    # written from now on, and for all of them if there is no confirmation.
    op.execute("ALTER TABLE journal DROP CONSTRAINT ck_journal_kind")
    op.execute(
        "ALTER TABLE journal ADD CONSTRAINT ck_journal_kind "
        "CHECK (kind IN ('notification', 'event')) NOT VALID"
    )
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM journal WHERE kind = '{_CONFIRMED}') THEN
                ALTER TABLE journal VALIDATE CONSTRAINT ck_journal_kind;
            END IF;
        END $$
        """
    )
    op.drop_index(_INDEX, table_name="journal")
