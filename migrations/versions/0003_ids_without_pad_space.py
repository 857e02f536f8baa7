"""MySQL/MariaDB: compare ids without PAD SPACE, so `c-pad` and `c-pad ` stay two calls.

`utf8mb4_bin` ignores trailing spaces when comparing (a PAD SPACE collation), so two call ids
that differ only by them collided on the primary key. MariaDB's `utf8mb4_nopad_bin` and MySQL 8's
`utf8mb4_0900_bin` compare every byte. SQLite and PostgreSQL never padded: nothing to do there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tracker_events", "tracker_calls", "tracker_transitions")
# (name, table, column): the keys that join columns whose collation changes.
FOREIGN_KEYS = (
    ("fk_tracker_calls_parent_call_id_tracker_calls", "tracker_calls", "parent_call_id"),
    ("fk_tracker_transitions_call_id_tracker_calls", "tracker_transitions", "call_id"),
)


def _convert(collation: str) -> None:
    """MySQL refuses to change the collation of a column a foreign key joins, even with the
    checks off, so the keys are dropped around the change. Each step skips what is already
    done: MySQL cannot roll DDL back, and an upgrade interrupted half-way runs again."""
    inspector = sa.inspect(op.get_bind())
    for name, table, _column in FOREIGN_KEYS:
        if name in {key["name"] for key in inspector.get_foreign_keys(table)}:
            op.drop_constraint(name, table, type_="foreignkey")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")
    for name, table, column in FOREIGN_KEYS:
        op.create_foreign_key(name, table, "tracker_calls", [column], ["call_id"])


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "mysql":
        return
    _convert(
        "utf8mb4_nopad_bin" if getattr(bind.dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        _convert("utf8mb4_bin")
