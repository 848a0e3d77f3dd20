"""An index to an orchestration's events (by the id inside the full event), for its state as
of any time and its history (GET /orchestrations/{id}?as_of=..., .../history).

Built CONCURRENTLY: the intake and the fetcher go on writing events meanwhile.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported (service/store/tables.py holds the same; a test checks).
_INDEX = "ix_events_orchestration_object_id_time_event_id"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A build that was interrupted leaves an invalid index of this name behind.
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY {_INDEX} ON events "
            "((detail -> 'object' ->> 'id'), time, event_id) "
            "WHERE starts_with(type, 'orchestration.')"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
