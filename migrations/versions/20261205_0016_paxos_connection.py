"""The Paxos connection: whether our token requests succeed, and the last successful Get Event.

`paxos_connection` is one row that every process calling Paxos writes, so that /health/ready
and the console of a `serve --no-background` show what its workers see.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "paxos_connection",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("token_ok", sa.Boolean(), nullable=True),
        sa.Column("token_error", sa.Text(), nullable=True),
        sa.Column("token_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_get_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_paxos_connection")),
    )


def downgrade() -> None:
    op.drop_table("paxos_connection")
