"""Projections: checkpoints, identities (+ their controls), transfers, orchestrations.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from service.store.tables import XID8

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _last_event() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("last_ns", sa.BigInteger(), nullable=False),
        sa.Column("last_event_id", sa.Uuid(), nullable=False),
        sa.Column("last_event_type", sa.Text(), nullable=False),
        sa.Column("last_event_time", sa.Text(), nullable=False),
        sa.Column("events_count", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("xid", XID8(), server_default=sa.text("'0'::xid8"), nullable=False),
        sa.Column("position", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_projection_checkpoints")),
    )
    op.create_table(
        "identities",
        sa.Column("identity_id", sa.Text(), nullable=False),
        sa.Column("summary_status", sa.Text(), nullable=True),
        sa.Column("status_ns", sa.BigInteger(), nullable=True),
        sa.Column("status_event_id", sa.Uuid(), nullable=True),
        sa.Column("required_documents", postgresql.JSONB(), nullable=True),
        sa.Column("documents_ns", sa.BigInteger(), nullable=True),
        sa.Column("documents_event_id", sa.Uuid(), nullable=True),
        sa.Column("kyc_state", sa.Text(), nullable=True),
        sa.Column("kyc_last_refresh_at", sa.Text(), nullable=True),
        sa.Column("kyc_next_refresh_at", sa.Text(), nullable=True),
        sa.Column("kyc_ns", sa.BigInteger(), nullable=True),
        sa.Column("kyc_event_id", sa.Uuid(), nullable=True),
        *_last_event(),
        sa.PrimaryKeyConstraint("identity_id", name=op.f("pk_identities")),
    )
    op.create_index("ix_identities_summary_status_identity_id", "identities",
                    ["summary_status", "identity_id"])
    op.create_table(
        "identity_controls",
        sa.Column("identity_id", sa.Text(), nullable=False),
        sa.Column("control_id", sa.Text(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("control_type", sa.Text(), nullable=True),
        sa.Column("set_by", sa.Text(), nullable=True),
        sa.Column("is_overridable", sa.Boolean(), nullable=True),
        sa.Column("reason_code", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("event_ns", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("identity_id", "control_id", name=op.f("pk_identity_controls")),
    )
    op.create_index("ix_identity_controls_control_type_identity_id", "identity_controls",
                    ["control_type", "identity_id"], postgresql_where=sa.text("deleted IS false"))
    op.create_table(
        "transfers",
        sa.Column("transfer_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("profile_id", sa.Text(), nullable=True),
        sa.Column("ref_id", sa.Text(), nullable=True),
        sa.Column("crypto_network", sa.Text(), nullable=True),
        sa.Column("crypto_tx_hash", sa.Text(), nullable=True),
        sa.Column("crypto_tx_index", sa.Text(), nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        *_last_event(),
        sa.PrimaryKeyConstraint("transfer_id", name=op.f("pk_transfers")),
    )
    op.create_index("ix_transfers_status_transfer_id", "transfers", ["status", "transfer_id"])
    op.create_index("ix_transfers_profile_id_transfer_id", "transfers",
                    ["profile_id", "transfer_id"])
    op.create_index("ix_transfers_type_transfer_id", "transfers", ["type", "transfer_id"])
    op.create_table(
        "orchestrations",
        sa.Column("orchestration_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("ref_id", sa.Text(), nullable=True),
        sa.Column("orchestration_rule_id", sa.Text(), nullable=True),
        *_last_event(),
        sa.PrimaryKeyConstraint("orchestration_id", name=op.f("pk_orchestrations")),
    )
    op.create_index("ix_events_test_event_id", "events", ["event_id"],
                    postgresql_where=sa.text("is_test IS true"))


def downgrade() -> None:
    # A rebuild in progress leaves shadow tables behind; they go with the projections.
    for name in ("identities", "identity_controls", "transfers", "orchestrations"):
        op.execute(f"DROP TABLE IF EXISTS {name}_rebuild")
    op.drop_index("ix_events_test_event_id", table_name="events")
    op.drop_table("orchestrations")
    op.drop_table("transfers")
    op.drop_table("identity_controls")
    op.drop_table("identities")
    op.drop_table("projection_checkpoints")
