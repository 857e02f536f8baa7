"""Fewer pages written per delivery: history in the call's row, one key on the log, partial
indexes.

Every index a delivery touches is one more page to write at commit. So:
- a call's history moves into its own row (`tracker_calls.history`, JSON), and
  `tracker_transitions` goes: the steps were always read and written with their call;
- the log's unique content key becomes unique with the call id, `(call_id, dedup_key)`: the key
  hashes the call id, so the constraint is the same, and led by the call id it also serves
  `events(call_id=...)`, so the separate `call_id` index goes;
- where the backend has partial indexes (SQLite, PostgreSQL), the indexes on columns whose
  values are mostly one leave that value out: `state` (ended calls), `disposition` (completed
  ones), `outcome` (applied deliveries), and `parent_call_id` indexes legs only. MySQL/MariaDB
  keep full indexes.

Every step is data-preserving: each transition row becomes a step of its call's history, with
its delivery's id, in its order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of this revision's types and conditions: a migration must not change when the
# models do.
ID = sa.String(256)
INSTANT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
# (table, column, condition of the partial index); each index is named ix_<table>_<column>.
PARTIAL_INDEXES = (
    ("tracker_calls", "parent_call_id", "parent_call_id IS NOT NULL"),
    ("tracker_calls", "state", "state <> 'disconnected'"),
    ("tracker_calls", "disposition", "disposition <> 'completed'"),
    ("tracker_events", "outcome", "outcome <> 'applied'"),
)
_BATCH = 1000
TRANSITIONS = sa.table(
    "tracker_transitions",
    sa.column("call_id", ID),
    sa.column("seq", sa.Integer),
    sa.column("source", sa.String),
    sa.column("target", sa.String),
    sa.column("at", INSTANT),
    sa.column("event", sa.String),
    sa.column("event_id", SERIAL),
)
CALLS = sa.table("tracker_calls", sa.column("call_id", ID), sa.column("history", sa.Text))


def upgrade() -> None:
    # MySQL cannot roll DDL back: an upgrade interrupted half-way runs again, so each step
    # skips what is already done.
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "history" not in {column["name"] for column in inspector.get_columns("tracker_calls")}:
        with op.batch_alter_table("tracker_calls") as batch:
            batch.add_column(sa.Column("history", sa.Text(), nullable=True))
    if inspector.has_table("tracker_transitions"):
        _move_transitions_into_calls(bind)
        op.drop_table("tracker_transitions")
    _one_key_on_the_log(bind)
    if bind.dialect.name in ("sqlite", "postgresql"):
        for table, column, condition in PARTIAL_INDEXES:
            name = f"ix_{table}_{column}"
            op.drop_index(name, table_name=table)
            op.create_index(
                name,
                table,
                [column],
                sqlite_where=sa.text(condition),
                postgresql_where=sa.text(condition),
            )


def _move_transitions_into_calls(bind: sa.engine.Connection) -> None:
    """Each call's steps, in order, as `[source, target, at, event, event_id]` with `at` in
    ISO 8601 UTC (the format `tracker.storage.HistoryJSON` reads)."""
    update = (
        CALLS.update()
        .where(CALLS.c.call_id == sa.bindparam("b_call_id"))
        .values(history=sa.bindparam("b_history"))
    )
    rows = bind.execute(
        sa.select(TRANSITIONS).order_by(TRANSITIONS.c.call_id, TRANSITIONS.c.seq)
    ).all()
    histories: dict[str, list[list[object]]] = {}
    for row in rows:
        at = row.at.replace(tzinfo=UTC).isoformat()
        histories.setdefault(row.call_id, []).append(
            [row.source, row.target, at, row.event, row.event_id]
        )
    pending = [
        {"b_call_id": call_id, "b_history": json.dumps(steps, separators=(",", ":"))}
        for call_id, steps in histories.items()
    ]
    for start in range(0, len(pending), _BATCH):
        bind.execute(update, pending[start : start + _BATCH])


def _one_key_on_the_log(bind: sa.engine.Connection) -> None:
    inspector = sa.inspect(bind)
    uniques = {key["name"] for key in inspector.get_unique_constraints("tracker_events")}
    indexes = {index["name"] for index in inspector.get_indexes("tracker_events")}
    # SQLite cannot drop a constraint in place: batch mode rebuilds the table.
    with op.batch_alter_table("tracker_events") as batch:
        if "uq_tracker_events_call_id_dedup_key" not in uniques:
            batch.create_unique_constraint(
                "uq_tracker_events_call_id_dedup_key", ["call_id", "dedup_key"]
            )
        if "uq_tracker_events_dedup_key" in uniques:
            batch.drop_constraint("uq_tracker_events_dedup_key", type_="unique")
        if "ix_tracker_events_call_id" in indexes:
            batch.drop_index("ix_tracker_events_call_id")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name in ("sqlite", "postgresql"):
        for table, column, _condition in PARTIAL_INDEXES:
            name = f"ix_{table}_{column}"
            op.drop_index(name, table_name=table)
            op.create_index(name, table, [column])
    with op.batch_alter_table("tracker_events") as batch:
        batch.create_index("ix_tracker_events_call_id", ["call_id"])
        batch.create_unique_constraint("uq_tracker_events_dedup_key", ["dedup_key"])
        batch.drop_constraint("uq_tracker_events_call_id_dedup_key", type_="unique")
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
        **_mysql_options(bind),
    )
    rows = []
    for call_id, history in bind.execute(
        sa.select(CALLS.c.call_id, CALLS.c.history).where(CALLS.c.history.is_not(None))
    ):
        for seq, (source, target, at, event, event_id) in enumerate(json.loads(history)):
            rows.append(
                {
                    "call_id": call_id,
                    "seq": seq,
                    "source": source,
                    "target": target,
                    "at": datetime.fromisoformat(at).astimezone(UTC).replace(tzinfo=None),
                    "event": event,
                    "event_id": event_id,
                }
            )
    for start in range(0, len(rows), _BATCH):
        bind.execute(TRANSITIONS.insert(), rows[start : start + _BATCH])
    with op.batch_alter_table("tracker_calls") as batch:
        batch.drop_column("history")


def _mysql_options(bind: sa.engine.Connection) -> dict[str, str]:
    """Revision 0003's collation, which compares ids without PAD SPACE."""
    if bind.dialect.name != "mysql":
        return MYSQL
    mariadb = getattr(bind.dialect, "is_mariadb", False)
    return {**MYSQL, "mysql_collate": "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"}
