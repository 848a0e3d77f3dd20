"""The console's activity: a row of samples per minute, and the journal by recorded_at.

`activity_samples` keeps, per minute, the journal rows recorded (webhooks first received,
full events stored), the Get Events that failed, and the fetch backlog, fetch lag and
projection lag sampled then, so the charts survive restarts and agree across processes. A
BRIN index on `journal.recorded_at` counts a minute of the journal without reading the rest;
built CONCURRENTLY: the intake goes on writing meanwhile.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported (service/store/tables.py holds the same; a test checks).
_INDEX = "ix_journal_recorded_at_brin"


def upgrade() -> None:
    op.create_table(
        "activity_samples",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received", sa.Integer(), server_default="0", nullable=False),
        sa.Column("fetched", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("backlog", sa.Integer(), nullable=True),
        sa.Column("fetch_lag_s", sa.Double(), nullable=True),
        sa.Column("projection_behind", sa.Integer(), nullable=True),
        sa.Column("projection_lag_s", sa.Double(), nullable=True),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("minute"),
    )
    with op.get_context().autocommit_block():
        # A build that was interrupted leaves an invalid index of this name behind.
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
        op.execute(f"CREATE INDEX CONCURRENTLY {_INDEX} ON journal USING brin (recorded_at)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
    op.drop_table("activity_samples")
