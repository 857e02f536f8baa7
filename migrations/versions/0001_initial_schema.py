"""Initial schema: calls, their transition history, and the event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types of this revision: a migration must not change when the models do.
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
ID = sa.String(256)
INSTANT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create_index(name: str, table: str, columns: list[str]) -> None:
    """MySQL/MariaDB cannot roll DDL back: an upgrade whose connection died half-way leaves the
    first objects behind with no revision stamped, so the next upgrade runs this migration again
    and must skip what already exists. (MySQL has no CREATE INDEX IF NOT EXISTS.)"""
    if name not in {index["name"] for index in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(name, table, columns)


def upgrade() -> None:
    op.create_table(
        "tracker_events",
        sa.Column("id", SERIAL, primary_key=True, autoincrement=True),
        sa.Column("received_at", INSTANT, nullable=False),
        sa.Column(
            "body",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("call_id", ID, nullable=True),
        sa.Column("event_type", ID, nullable=True),
        sa.Column("dedup_key", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tracker_events"),
        sa.UniqueConstraint("dedup_key", name="uq_tracker_events_dedup_key"),
        if_not_exists=True,
        **MYSQL,
    )
    _create_index("ix_tracker_events_call_id", "tracker_events", ["call_id"])

    op.create_table(
        "tracker_calls",
        sa.Column("call_id", ID, nullable=False),
        sa.Column("parent_call_id", ID, nullable=True),
        sa.Column("account_id", ID, nullable=True),
        sa.Column("application_id", ID, nullable=True),
        sa.Column("direction", sa.String(16), nullable=True),
        sa.Column("from_number", sa.Text(), nullable=True),
        sa.Column("to_number", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cause", sa.Text(), nullable=True),
        sa.Column("disposition", sa.String(16), nullable=True),
        sa.Column("start_time", INSTANT, nullable=True),
        sa.Column("answer_time", INSTANT, nullable=True),
        sa.Column("end_time", INSTANT, nullable=True),
        sa.Column("enqueued_time", INSTANT, nullable=True),
        sa.Column("tag", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_id", sa.Text(), nullable=True),
        sa.Column("terminal_event", sa.String(32), nullable=True),
        sa.Column("numbers_leg_id", ID, nullable=True),
        sa.Column("numbers_leg_start", INSTANT, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", name="pk_tracker_calls"),
        sa.ForeignKeyConstraint(
            ["parent_call_id"],
            ["tracker_calls.call_id"],
            name="fk_tracker_calls_parent_call_id_tracker_calls",
        ),
        if_not_exists=True,
        **MYSQL,
    )
    _create_index("ix_tracker_calls_parent_call_id", "tracker_calls", ["parent_call_id"])
    _create_index(
        "ix_tracker_calls_account_id_start_time", "tracker_calls", ["account_id", "start_time"]
    )
    _create_index("ix_tracker_calls_state", "tracker_calls", ["state"])
    _create_index("ix_tracker_calls_start_time", "tracker_calls", ["start_time"])

    op.create_table(
        "tracker_transitions",
        sa.Column("id", SERIAL, primary_key=True, autoincrement=True),
        sa.Column("call_id", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("at", INSTANT, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("event_id", SERIAL, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracker_transitions"),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["tracker_calls.call_id"],
            name="fk_tracker_transitions_call_id_tracker_calls",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["tracker_events.id"],
            name="fk_tracker_transitions_event_id_tracker_events",
        ),
        sa.UniqueConstraint("call_id", "seq", name="uq_tracker_transitions_call_id_seq"),
        if_not_exists=True,
        **MYSQL,
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; dropping them one by one first fails on MySQL, where
    # the foreign keys still need them.
    op.drop_table("tracker_transitions")
    op.drop_table("tracker_calls")
    op.drop_table("tracker_events")
