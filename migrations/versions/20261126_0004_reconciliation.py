"""Reconciliation: passes over List Events and the missed-webhook report.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconcile_passes",
        sa.Column("pass_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("window_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("types", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"),
                  nullable=False),
        sa.Column("include_test", sa.Boolean(), server_default=sa.text("false"),
                  nullable=False),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("pages", sa.Integer(), server_default="0", nullable=False),
        sa.Column("found", sa.Integer(), server_default="0", nullable=False),
        sa.Column("missing", sa.Integer(), server_default="0", nullable=False),
        sa.Column("known", sa.Integer(), server_default="0", nullable=False),
        sa.Column("resume", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"),
                  nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('reconcile', 'backfill')",
                           name=op.f("ck_reconcile_passes_kind")),
        sa.CheckConstraint("status IN ('running', 'done', 'failed')",
                           name=op.f("ck_reconcile_passes_status")),
        sa.PrimaryKeyConstraint("pass_id", name=op.f("pk_reconcile_passes")),
    )
    op.create_index("ix_reconcile_passes_kind_started_at", "reconcile_passes",
                    ["kind", "started_at"])
    op.create_table(
        "reconcile_missed",
        sa.Column("pass_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pass_id", "event_id", name=op.f("pk_reconcile_missed")),
    )


def downgrade() -> None:
    op.drop_table("reconcile_missed")
    op.drop_table("reconcile_passes")
