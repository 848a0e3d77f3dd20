"""The audit trail: seals over the journal, verification runs, audited pruning of test events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The canonical row hash (docs/audit.md), written out here rather than imported: a
# migration must keep meaning what it meant when it ran. service/store/audit/canonical.py holds the
# same expression, and a test checks the two against a Python implementation.
_OLD_ROW_HASH = """sha256(convert_to(
    OLD.position::text || E'\\n' || OLD.event_id::text || E'\\n' || OLD.kind || E'\\n'
    || to_char(OLD.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    || E'\\n' || OLD.body::text, 'UTF8'))"""

_APPEND_ONLY_TABLES = ("seals", "pruned_journal_rows", "prunes")


def upgrade() -> None:
    op.create_table(
        "seals",
        sa.Column("seal_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_position", sa.BigInteger(), nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("rows_digest", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column(
            "sealed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("first_position <= last_position", name=op.f("ck_seals_range")),
        sa.PrimaryKeyConstraint("seal_id", name=op.f("pk_seals")),
        sa.UniqueConstraint("first_position", name=op.f("uq_seals_first_position")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_seals_prev_hash")),
    )
    op.create_table(
        "prunes",
        sa.Column("prune_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "pruned_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("older_than_days", sa.Integer(), nullable=False),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("journal_rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("prune_id", name=op.f("pk_prunes")),
    )
    op.create_table(
        "pruned_journal_rows",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("row_hash", sa.LargeBinary(), nullable=False),
        sa.Column("prune_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_pruned_journal_rows")),
    )
    op.create_index("ix_pruned_journal_rows_event_id", "pruned_journal_rows", ["event_id"])
    op.create_table(
        "audit_verifications",
        sa.Column("verification_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "ran_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("sealed_through", sa.BigInteger(), nullable=True),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.Column("problems", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("verification_id", name=op.f("pk_audit_verifications")),
    )
    op.add_column(
        "events",
        sa.Column("receipt_times", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=True),
    )

    # The seals and the pruning record are evidence too: append-only like the journal.
    op.execute(
        """
        CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    for table in _APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )

    # The one way a journal row may go: `paxos-events prune` first records the row (with its
    # canonical hash) in pruned_journal_rows, then deletes it. The trigger lets a DELETE
    # through only when that record exists and matches the row exactly, and the event is a
    # test event; UPDATE and TRUNCATE stay refused. The audit record is a precondition of the
    # deletion, so the seal chain stays verifiable (verify accounts a pruned position by its
    # recorded hash).
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' THEN
                IF EXISTS (
                       SELECT 1 FROM pruned_journal_rows p
                       WHERE p.position = OLD.position AND p.event_id = OLD.event_id
                         AND p.kind = OLD.kind AND p.row_hash = {_OLD_ROW_HASH})
                   AND EXISTS (
                       SELECT 1 FROM events e WHERE e.event_id = OLD.event_id AND e.is_test)
                THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'the journal is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    # Events rows are updated (fetch state, deliveries) but never deleted, except a test
    # event's by that same prune, once its journal rows are gone and on record.
    op.execute(
        """
        CREATE FUNCTION events_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' THEN
                IF OLD.is_test
                   AND EXISTS (SELECT 1 FROM pruned_journal_rows p
                               WHERE p.event_id = OLD.event_id)
                   AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.event_id = OLD.event_id)
                THEN
                    RETURN OLD;
                END IF;
            END IF;
            RAISE EXCEPTION 'events are only deleted by a prune of test events: % is not allowed',
                TG_OP USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION events_refuse_delete()"
    )
    op.execute(
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_delete()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER events_no_truncate ON events")
    op.execute("DROP TRIGGER events_no_delete ON events")
    op.execute("DROP FUNCTION events_refuse_delete()")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the journal is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.drop_column("events", "receipt_times")
    op.drop_table("audit_verifications")
    for table in _APPEND_ONLY_TABLES:
        op.drop_table(table)
    op.execute("DROP FUNCTION audit_refuse_change()")
