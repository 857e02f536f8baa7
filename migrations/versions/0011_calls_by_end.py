"""Index the calls by their end (then their answer), so that a report over a window finds the
calls that started before it and were still up in it without reading the whole history.

The peak concurrency of a window counts the calls up in it: those that started in it (the index
on the start time finds them), and those that started earlier and ended after `since` (this
index, by the end), were still live (the partial index of live calls) or were ended by the sweep
with no end time and answered after `since` (this index again: no end time, by the answer).
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


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so the index is
    # created only when it is not there yet (MySQL has no CREATE INDEX IF NOT EXISTS).
    present = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("tracker_calls")}
    if NAME not in present:
        op.create_index(NAME, "tracker_calls", ["end_time", "answer_time"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="tracker_calls")
