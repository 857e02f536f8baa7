"""Index the long calls by their end (then their answer), so that a report over a window finds
the calls that started before it and were still up in it without reading the whole history.

The peak concurrency of a window counts the calls up in it: those that started in it or less
than an hour before it (the index on the start time finds them), the live ones (the partial
index of live calls), and those that started earlier still and ended after `since`, or were
ended by the sweep with no end time after an answer after `since`: all of them up more than an
hour, which this index holds (on SQLite and PostgreSQL, only those: a call enters it once, when
it ends after a long talk, and ordinary deliveries never write it; MySQL/MariaDB have no
partial indexes and index every call).
Nothing else changes; the index is built from the rows already stored.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_tracker_calls_end_time_answer_time"
# Frozen copies of this revision's conditions (`LONG_CALL_CONDITIONS` in the models).
SQLITE_LONG = "COALESCE(end_time, answer_time) > datetime(start_time, '+1 hour')"
POSTGRESQL_LONG = "COALESCE(end_time, answer_time) > start_time + INTERVAL '1 hour'"


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so the index is
    # created only when it is not there yet (MySQL has no CREATE INDEX IF NOT EXISTS).
    present = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("tracker_calls")}
    if NAME not in present:
        op.create_index(
            NAME,
            "tracker_calls",
            ["end_time", "answer_time"],
            sqlite_where=sa.text(SQLITE_LONG),
            postgresql_where=sa.text(POSTGRESQL_LONG),
        )


def downgrade() -> None:
    op.drop_index(NAME, table_name="tracker_calls")
