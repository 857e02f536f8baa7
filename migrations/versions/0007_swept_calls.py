"""The sweep: a call ended by `Tracker.sweep` keeps when it was swept, and a log entry says when
it came from the sweep rather than from a delivery.

`tracker_calls.swept_at` is set while a call's end is the sweep's (disposition `expired`) and
cleared when its real terminal event arrives. `tracker_events.origin` is NULL for a body handed
to `apply`, `sweep` for an entry the sweep wrote (its own expiry of a call, or a body its
`resolve` hook returned). Both are new and NULL on every row already stored: nothing changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the type of this revision: a migration must not change when the models do.
INSTANT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _new_columns() -> dict[str, sa.Column[object]]:
    return {
        "tracker_calls": sa.Column("swept_at", INSTANT, nullable=True),
        "tracker_events": sa.Column("origin", sa.String(16), nullable=True),
    }


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so each step
    # skips what is already there. A nullable column is added in place on every backend (no
    # table rebuild), so a large log upgrades at once.
    bind = op.get_bind()
    for table, column in _new_columns().items():
        present = {found["name"] for found in sa.inspect(bind).get_columns(table)}
        if column.name not in present:
            op.add_column(table, column)


def downgrade() -> None:
    # A plain DROP COLUMN, SQLite's included (3.35 and later): the columns carry no index or
    # constraint, so no table is rebuilt and the calls' foreign keys are never in question.
    for table, column in _new_columns().items():
        op.drop_column(table, column.name)
