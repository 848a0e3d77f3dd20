"""Durable push subscriptions: the subscriptions, their outboxes, their delivery counts.

A subscription reads the journal in position order up to the feed's horizon (every position at
or below it final; `service/store/feed.py`) from its own `cursor_position` into its outbox:
one row per matching event not yet delivered, with the event's ordering key. A delivered row
is deleted, so the outbox holds only what is undelivered and stays small; its (subscription,
key, position) index finds each key's head.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "subscriptions",
        sa.Column("subscription_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "types",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column("include_test", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("state", sa.Text(), server_default="active", nullable=False),
        sa.Column("max_in_flight", sa.Integer(), server_default="16", nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret", sa.LargeBinary(), nullable=True),
        sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor_position", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('active', 'paused', 'failing')", name=op.f("ck_subscriptions_state")
        ),
        sa.CheckConstraint(
            "max_in_flight BETWEEN 1 AND 256", name=op.f("ck_subscriptions_max_in_flight")
        ),
        sa.PrimaryKeyConstraint("subscription_id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("name", name=op.f("uq_subscriptions_name")),
    )
    op.create_table(
        "subscription_outbox",
        sa.Column("subscription_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.subscription_id"],
            ondelete="CASCADE",
            name=op.f("fk_subscription_outbox_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("subscription_id", "position", name=op.f("pk_subscription_outbox")),
    )
    op.create_index(
        "ix_subscription_outbox_subscription_id_key_position",
        "subscription_outbox",
        ["subscription_id", "key", "position"],
    )
    op.create_table(
        "subscription_deliveries",
        sa.Column("subscription_id", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.subscription_id"],
            ondelete="CASCADE",
            name=op.f("fk_subscription_deliveries_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint(
            "subscription_id", "outcome", name=op.f("pk_subscription_deliveries")
        ),
    )


def downgrade() -> None:
    op.drop_table("subscription_deliveries")
    op.drop_table("subscription_outbox")
    op.drop_table("subscriptions")
