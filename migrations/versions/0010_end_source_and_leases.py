"""Provider truth: every ended call says where its end came from, and one server at a time sweeps.

`tracker_calls.end_source` is `callback` (a terminal callback ended the call), `provider`
(Bandwidth's call state API did) or `sweep` (expired: nobody could say), NULL while the call is
live. Filled here for the rows already stored: a call the sweep ended (`swept_at` set) `sweep`,
every other ended call `callback` (until this revision only a terminal event or the sweep
could end one). Nothing else changes.

`tracker_leases` holds a named lease (`sweep`: the background sweep of `tracker serve`): who
holds it and until when, so that of several servers on one database only one sweeps at a time.
It starts empty.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of this revision's types: a migration must not change when the models do.
INSTANT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LEASES = "tracker_leases"


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so each step
    # skips what is already there, and the fill is the same however often it runs.
    bind = op.get_bind()
    present = {found["name"] for found in sa.inspect(bind).get_columns("tracker_calls")}
    if "end_source" not in present:
        op.add_column("tracker_calls", sa.Column("end_source", sa.String(16), nullable=True))
    op.execute(
        "UPDATE tracker_calls SET end_source = CASE WHEN swept_at IS NULL THEN 'callback' "
        "ELSE 'sweep' END WHERE state = 'disconnected' AND end_source IS NULL"
    )
    if not sa.inspect(bind).has_table(LEASES):
        # Binary, without PAD SPACE, as every table since revision 0003.
        mariadb = getattr(bind.dialect, "is_mariadb", False)
        collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
        op.create_table(
            LEASES,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("holder", sa.String(128), nullable=False),
            sa.Column("expires_at", INSTANT, nullable=False),
            mysql_engine="InnoDB",
            mysql_charset="utf8mb4",
            mysql_collate=collation,
        )


def downgrade() -> None:
    op.drop_table(LEASES)
    op.drop_column("tracker_calls", "end_source")
