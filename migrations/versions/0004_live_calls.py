"""The whole lifecycle: the facts live callbacks bring, where each fact came from, and the
transfer attempts `transferComplete` reports.

Rows already stored keep every value; `seen_rank` and `answer_event` are filled from what the
only events applied until now (terminal ones) said. `sources` stays NULL on those rows, which
the storage layer reads as "every fact came from the terminal event".

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types of this revision: a migration must not change when the models do.
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
ID = sa.String(256)
INSTANT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The ranks of revision 0004's lifecycle (tracker/lifecycle.py `RANKS`) for the two event types
# applied before it.
TERMINAL_RANKS = {"disconnect": 7, "transferDisconnect": 6}


def _new_call_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("answer_event", sa.String(32), nullable=True),
        sa.Column("machine_detection", sa.Text(), nullable=True),
        sa.Column("attestation", sa.Text(), nullable=True),
        sa.Column("verstat", sa.Text(), nullable=True),
        sa.Column("diversion", sa.Text(), nullable=True),
        sa.Column("caller_display_name", sa.Text(), nullable=True),
        sa.Column("seen_rank", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sources", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so each step
    # skips what is already there.
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    present = {column["name"] for column in inspector.get_columns("tracker_calls")}
    missing = [column for column in _new_call_columns() if column.name not in present]
    if missing:
        with op.batch_alter_table("tracker_calls") as batch:
            for column in missing:
                batch.add_column(column)
    calls = sa.table(
        "tracker_calls",
        sa.column("terminal_event", sa.String),
        sa.column("answer_time", INSTANT),
        sa.column("answer_event", sa.String),
        sa.column("seen_rank", sa.Integer),
    )
    for event_type, rank in TERMINAL_RANKS.items():
        op.execute(
            calls.update().where(calls.c.terminal_event == event_type).values(seen_rank=rank)
        )
    op.execute(
        calls.update()
        .where(calls.c.answer_time.is_not(None), calls.c.answer_event.is_(None))
        .values(answer_event=calls.c.terminal_event)
    )
    op.create_table(
        "tracker_transfers",
        sa.Column("id", SERIAL, primary_key=True, autoincrement=True),
        sa.Column("call_id", ID, nullable=False),
        sa.Column("event_id", SERIAL, nullable=False),
        sa.Column("at", INSTANT, nullable=True),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("transfer_to", sa.Text(), nullable=True),
        sa.Column("transfer_caller_id", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_id", sa.Text(), nullable=True),
        sa.Column("sort_key", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracker_transfers"),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["tracker_calls.call_id"],
            name="fk_tracker_transfers_call_id_tracker_calls",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["tracker_events.id"],
            name="fk_tracker_transfers_event_id_tracker_events",
        ),
        if_not_exists=True,
        **_mysql_options(bind),
    )
    indexes = {index["name"] for index in sa.inspect(bind).get_indexes("tracker_transfers")}
    if "ix_tracker_transfers_call_id" not in indexes:
        op.create_index("ix_tracker_transfers_call_id", "tracker_transfers", ["call_id"])


def _mysql_options(bind: sa.engine.Connection) -> dict[str, str]:
    """Revision 0003's collation, which compares ids without PAD SPACE."""
    if bind.dialect.name != "mysql":
        return MYSQL
    mariadb = getattr(bind.dialect, "is_mariadb", False)
    return {**MYSQL, "mysql_collate": "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"}


def downgrade() -> None:
    op.drop_table("tracker_transfers")
    with op.batch_alter_table("tracker_calls") as batch:
        for column in reversed(_new_call_columns()):
            batch.drop_column(column.name)
