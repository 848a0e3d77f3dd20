"""Signed seals: the key id and Ed25519 signature of each seal's hash.

Both are NULL for a seal made without AUDIT_SIGNING_KEY (every seal before this revision, and
any made while no key is set): an unsigned seal stays valid. With a key, the sealer signs the
seal's 32-byte hash and records the key's id (hex SHA-256 of the raw public key); verify checks
the signature with the public key of that id. Signature input: docs/audit.md.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column("seals", sa.Column("key_id", sa.Text(), nullable=True))
    op.add_column("seals", sa.Column("signature", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("seals", "signature")
    op.drop_column("seals", "key_id")
