"""Index the event log by outcome and calls by disposition, the two filters people use most
(`tracker events --outcome rejected`, `tracker calls --disposition failed`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tracker_events_outcome", "tracker_events", ["outcome"])
    op.create_index("ix_tracker_calls_disposition", "tracker_calls", ["disposition"])


def downgrade() -> None:
    op.drop_index("ix_tracker_calls_disposition", table_name="tracker_calls")
    op.drop_index("ix_tracker_events_outcome", table_name="tracker_events")
