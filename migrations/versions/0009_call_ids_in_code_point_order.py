"""PostgreSQL: call ids compare in code point order ("C"), whatever the database's collation.

Calls are listed and exported by start time, then id, and a call's legs ordered the same way in
Python, by code point. SQLite (BINARY) and MySQL/MariaDB (binary collations, revision 0003)
compare ids so already; PostgreSQL used the database's collation, which on an ICU or glibc
`en_US` database ignores punctuation and case at first (`c_a, c-A, C-a, c-b` instead of
`C-a, c-A, c-b, c_a`), so the same calls came out in another order there, and the export's pages
followed that order. The two columns that hold call ids and order calls take the "C" collation
(UTF-8 bytes, which is code point order): the primary key's index then serves the order too.

Only the indexes on the two columns are rebuilt: the text itself is unchanged, so the table is
not rewritten. Equality is the same in every deterministic collation: no id changes meaning.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_ID_LENGTH = 256  # frozen here: tracker.records.MAX_ID_LENGTH when this revision was written


def upgrade() -> None:
    _collate('"C"')


def downgrade() -> None:
    _collate('"default"')


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # One statement: the foreign key from `parent_call_id` to `call_id` is checked once, with
    # both columns already in the new collation.
    op.execute(
        f"ALTER TABLE tracker_calls "
        f"ALTER COLUMN call_id TYPE VARCHAR({MAX_ID_LENGTH}) COLLATE {collation}, "
        f"ALTER COLUMN parent_call_id TYPE VARCHAR({MAX_ID_LENGTH}) COLLATE {collation}"
    )
