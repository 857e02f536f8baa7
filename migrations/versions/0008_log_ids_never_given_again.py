"""A log id is never given again, on SQLite too.

The log's `id` on SQLite was the rowid without AUTOINCREMENT: a new row takes one more than the
largest id present, so once the newest entries are deleted (a prune whose `before` is later than
the newest entry) their ids are handed out again. Two promises break then: the change feed's
cursor, past those ids, would skip the new entries until the ids pass it, and a call's history
step or transfer attempt that names a pruned entry would name a new, unrelated one. With
AUTOINCREMENT, SQLite keeps the largest id ever given (`sqlite_sequence`) and never goes below
it, as PostgreSQL's sequence and InnoDB's AUTO_INCREMENT (persistent since MariaDB 10.2.4 and
MySQL 8.0) already do; those backends are left as they are.

SQLite cannot add AUTOINCREMENT in place: the table is rebuilt (batch mode), every row kept with
its id; the copy sets `sqlite_sequence` to the largest id present. Ids given and deleted before
this revision cannot be recovered. The copy takes its time and the write lock: a log of 1.2
million entries (1.1 GB) took 20 s on a 2-core VM, during which deliveries wait.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _rebuild_on_sqlite(autoincrement=True)


def downgrade() -> None:
    _rebuild_on_sqlite(autoincrement=False)


def _rebuild_on_sqlite(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "tracker_events", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
