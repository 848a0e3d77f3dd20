"""The append-only journal, the events table, service keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from service.store.tables import XID8

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "journal",
        sa.Column("position", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("xid", XID8(), server_default=sa.text("pg_current_xact_id()"), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("body", postgresql.JSON(none_as_null=True), nullable=False),
        sa.CheckConstraint("kind IN ('notification', 'event')", name=op.f("ck_journal_kind")),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_journal")),
        sa.UniqueConstraint("event_id", "kind", name=op.f("uq_journal_event_id_kind")),
    )
    op.create_index("ix_journal_xid_position", "journal", ["xid", "position"])
    # Append-only, enforced by the database itself: nothing in the application can rewrite
    # history by mistake. (Deliberate tampering by a superuser is what seals detect.)
    op.execute(
        """
        CREATE FUNCTION journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the journal is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal "
        "FOR EACH ROW EXECUTE FUNCTION journal_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal "
        "FOR EACH STATEMENT EXECUTE FUNCTION journal_refuse_change()"
    )

    op.create_table(
        "events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("is_test", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("via", sa.Text(), server_default="webhook", nullable=False),
        sa.Column("deliveries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("identity_id", sa.Text(), nullable=True),
        sa.Column("object_type", sa.Text(), nullable=True),
        sa.Column("undelivered_webhooks", sa.Integer(), nullable=True),
        sa.Column("detail", postgresql.JSONB(none_as_null=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'fetched', 'failed', 'not_found')",
            name=op.f("ck_events_status"),
        ),
        sa.CheckConstraint("via IN ('webhook', 'list_events')", name=op.f("ck_events_via")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_events")),
    )
    # The /events indexes: see service/store/tables.py for which filter uses which.
    op.create_index("ix_events_time_event_id", "events", ["time", "event_id"])
    op.create_index(
        "ix_events_type_is_test_time_event_id", "events", ["type", "is_test", "time", "event_id"]
    )
    op.create_index(
        "ix_events_status_is_test_time_event_id",
        "events",
        ["status", "is_test", "time", "event_id"],
    )
    op.create_index(
        "ix_events_rare_status_type_is_test_time_event_id",
        "events",
        ["status", "type", "is_test", "time", "event_id"],
        postgresql_where=sa.text("status <> 'fetched'"),
    )
    op.create_index(
        "ix_events_identity_id_time_event_id",
        "events",
        ["identity_id", "time", "event_id"],
        postgresql_where=sa.text("identity_id IS NOT NULL"),
    )
    op.create_index(
        "ix_events_pending_next_attempt_at",
        "events",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )

    op.create_table(
        "service_keys",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_keys")),
    )


def downgrade() -> None:
    op.drop_table("service_keys")
    op.drop_table("events")
    op.execute("DROP TRIGGER journal_no_truncate ON journal")
    op.execute("DROP TRIGGER journal_append_only ON journal")
    op.drop_table("journal")
    op.execute("DROP FUNCTION journal_refuse_change()")
