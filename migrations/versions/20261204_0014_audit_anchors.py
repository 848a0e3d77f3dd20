"""Anchors: each seal head written outside the database, per sink, and each sink's failures.

`audit_anchors` records every anchor written (verify reports one that is gone from its sink);
`audit_anchor_sinks` each sink's latest failure (the console shows it).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_anchors",
        sa.Column("anchor_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("sink", sa.Text(), nullable=False),
        sa.Column("seal_id", sa.BigInteger(), nullable=False),
        sa.Column("seal_hash", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "anchored_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("anchor_id"),
        sa.UniqueConstraint("sink", "seal_id"),
    )
    op.create_table(
        "audit_anchor_sinks",
        sa.Column("sink", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sink"),
    )


def downgrade() -> None:
    op.drop_table("audit_anchor_sinks")
    op.drop_table("audit_anchors")
