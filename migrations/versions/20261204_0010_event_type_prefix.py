"""An index of events by type family (the type up to its first dot), for type prefix filters.

`type=identity.*` used to become one index scan per stored type under the prefix, so its cost
grew with the number of distinct types, which webhook senders choose. With this index it is
one range per family, whatever the types.

Built CONCURRENTLY: the intake and the fetcher go on writing events meanwhile.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported (service/store/tables.py holds the same; a test checks).
_INDEX = "ix_events_type_family_is_test_time_event_id"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A build that was interrupted leaves an invalid index of this name behind.
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY {_INDEX} ON events "
            "((left(type, strpos(type, '.'))), is_test, time, event_id)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
