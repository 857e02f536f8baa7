"""Index the event log by outcome and calls by disposition, the two filters people use most
(`tracker events --outcome rejected`, `tracker calls --disposition failed`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _create_index(name: str, table: str, columns: list[str]) -> None:
    """MySQL/MariaDB cannot roll DDL back: an upgrade whose connection died half-way leaves the
    first objects behind with no revision stamped, so the next upgrade runs this migration again
    and must skip what already exists. (MySQL has no CREATE INDEX IF NOT EXISTS.)"""
    if name not in {index["name"] for index in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(name, table, columns)


def upgrade() -> None:
    _create_index("ix_tracker_events_outcome", "tracker_events", ["outcome"])
    _create_index("ix_tracker_calls_disposition", "tracker_calls", ["disposition"])


def downgrade() -> None:
    op.drop_index("ix_tracker_calls_disposition", table_name="tracker_calls")
    op.drop_index("ix_tracker_events_outcome", table_name="tracker_events")
