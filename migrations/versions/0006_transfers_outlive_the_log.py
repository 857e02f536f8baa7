"""Transfer attempts outlive their log entries: no foreign key from `tracker_transfers.event_id`.

`prune` deletes old log entries while calls and their facts stay, and a transfer attempt is one
of those facts. Its `event_id` stays, as the id of the delivery that told of it, the way a
history step keeps its delivery's id: after a prune both may name an entry that is gone.
(`ON DELETE SET NULL` would lose that id and make every pruned batch update transfers too.)
MySQL/MariaDB gave the key an index of its own, named after it, which goes with it.

Data is kept both ways. A downgrade is refused while an attempt names a pruned entry, since
revision 0005's key cannot hold then.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "fk_tracker_transfers_event_id_tracker_events"
TRANSFERS = sa.table("tracker_transfers", sa.column("event_id", sa.BigInteger))
EVENTS = sa.table("tracker_events", sa.column("id", sa.BigInteger))


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so each step
    # skips what is already done.
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if KEY in {key["name"] for key in inspector.get_foreign_keys("tracker_transfers")}:
        # SQLite cannot drop a constraint in place: batch mode rebuilds the table.
        with op.batch_alter_table("tracker_transfers") as batch:
            batch.drop_constraint(KEY, type_="foreignkey")
    indexes = {index["name"] for index in sa.inspect(bind).get_indexes("tracker_transfers")}
    if bind.dialect.name in ("mysql", "mariadb") and KEY in indexes:
        op.drop_index(KEY, table_name="tracker_transfers")


def downgrade() -> None:
    bind = op.get_bind()
    orphans = bind.execute(
        sa.select(sa.func.count())
        .select_from(TRANSFERS)
        .where(~sa.exists().where(EVENTS.c.id == TRANSFERS.c.event_id))
    ).scalar_one()
    if orphans:
        raise RuntimeError(
            f"{orphans} transfer attempts name log entries that were pruned, and revision 0005 "
            "needs every one in the log; nothing was changed. Stay at revision 0006, or restore "
            "the pruned entries from a backup first"
        )
    with op.batch_alter_table("tracker_transfers") as batch:
        batch.create_foreign_key(KEY, "tracker_events", ["event_id"], ["id"])
