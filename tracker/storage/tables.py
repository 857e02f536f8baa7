"""The tables, as SQLAlchemy declarative models: what `migrations/env.py` compares the
migrations with. The schema itself comes only from the migrations (`tracker.schema`)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tracker import lifecycle
from tracker.records import MAX_ID_LENGTH, TransferAttempt, Transition
from tracker.storage.columns import HistoryJSON, JSONText, UTCDateTime

TABLE_PREFIX: Final = "tracker_"
VERSION_TABLE: Final = "tracker_alembic_version"

# MySQL/MariaDB: utf8mb4 for every character Bandwidth may send (tags, SIP URIs), and a binary
# collation without PAD SPACE so that call ids differing only in case or in trailing spaces stay
# different calls (migration 0003; MySQL 8 gets its own name for it, `utf8mb4_0900_bin`).
_MYSQL_OPTIONS: Final = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}

ID: Final = String(MAX_ID_LENGTH)
# A call's id orders calls (by start time, then id) and legs: by code point everywhere, as
# Python's `sorted` orders `Call.legs`. SQLite's BINARY and MariaDB's `utf8mb4_nopad_bin` do;
# PostgreSQL's own is the database's collation (an ICU `en-US` one sorts `c_a` before `C-a`),
# so there the column is "C", bytes of UTF-8, which is code point order (revision 0009).
CALL_ID: Final = ID.with_variant(String(MAX_ID_LENGTH, collation="C"), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def _partial(condition: str) -> dict[str, Any]:
    """Index options keeping only the rows `condition` holds for, where the backend can (SQLite,
    PostgreSQL; MySQL/MariaDB index every row). A filter on a column whose values are mostly one
    (`state`, `disposition`, `outcome`) is worth an index only for the other values, the ones
    people look for; leaving the common value out saves a page write on most deliveries.
    SQLite uses such an index only for a query that repeats `condition` word for word, so the
    queries add it (`where_calls`, `where_events`)."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


# The conditions of the partial indexes, one home each: the migration and the queries use them.
NOT_ENDED: Final = "state <> 'disconnected'"
IS_LEG: Final = "parent_call_id IS NOT NULL"
NOT_COMPLETED: Final = "disposition <> 'completed'"
NOT_APPLIED: Final = "outcome <> 'applied'"
# A long call: up more than `LONG_CALL` by its known times (its end, else its answer). Only these
# are in the index by end (revision 0011), so a call enters it once, when it ends after a long
# talk; a report finds the calls up in its window that started less than `LONG_CALL` before it
# by their start. SQLite's `datetime` drops the fraction of a second, which only lets in a few
# calls a fraction of a second shorter. MySQL/MariaDB have no partial indexes: there the
# condition is a filter, and the index holds every call.
LONG_CALL: Final = timedelta(hours=1)
LONG_CALL_CONDITIONS: Final = {
    "sqlite": "COALESCE(end_time, answer_time) > datetime(start_time, '+1 hour')",
    "postgresql": "COALESCE(end_time, answer_time) > start_time + INTERVAL '1 hour'",
    "mysql": "COALESCE(end_time, answer_time) > start_time + INTERVAL 1 HOUR",
}


class CallRow(Base):
    """One call (one leg). The account is stored resolved: a call whose events name none takes
    its tree's when that becomes known (`fill_account`). The application is stored as the
    call's own events gave it; a leg's inherited one is resolved when read
    (`where_applications`), so a parent reporting after its legs never rewrites them."""

    __tablename__ = "tracker_calls"
    __table_args__ = (
        Index(None, "parent_call_id", **_partial(IS_LEG)),
        Index(None, "account_id", "start_time"),
        Index(None, "state", **_partial(NOT_ENDED)),
        Index(None, "start_time"),
        Index(None, "disposition", **_partial(NOT_COMPLETED)),
        # The long calls by their end, then answer: those up in a report's window that started
        # long before it, ended after it began or ended by the sweep after an answer in it.
        Index(
            None,
            "end_time",
            "answer_time",
            sqlite_where=text(LONG_CALL_CONDITIONS["sqlite"]),
            postgresql_where=text(LONG_CALL_CONDITIONS["postgresql"]),
        ),
        _MYSQL_OPTIONS,
    )

    call_id: Mapped[str] = mapped_column(CALL_ID, primary_key=True)
    parent_call_id: Mapped[str | None] = mapped_column(CALL_ID, ForeignKey("tracker_calls.call_id"))
    account_id: Mapped[str | None] = mapped_column(ID)
    application_id: Mapped[str | None] = mapped_column(ID)
    direction: Mapped[str | None] = mapped_column(String(16))
    from_number: Mapped[str | None] = mapped_column(Text)
    to_number: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str | None] = mapped_column(Text)
    disposition: Mapped[str | None] = mapped_column(String(16))
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answer_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tag: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_id: Mapped[str | None] = mapped_column(Text)
    terminal_event: Mapped[str | None] = mapped_column(String(32))
    answer_event: Mapped[str | None] = mapped_column(String(32))
    machine_detection: Mapped[str | None] = mapped_column(Text)
    attestation: Mapped[str | None] = mapped_column(Text)
    verstat: Mapped[str | None] = mapped_column(Text)
    diversion: Mapped[dict[str, Any] | None] = mapped_column(JSONText)
    caller_display_name: Mapped[str | None] = mapped_column(Text)
    # When the sweep ended the call (revision 0007); NULL once its real terminal event came.
    swept_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Where the end came from: `callback`, `provider` or `sweep`; NULL while live (revision 0010).
    end_source: Mapped[str | None] = mapped_column(String(16))
    numbers_leg_id: Mapped[str | None] = mapped_column(ID)
    numbers_leg_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    seen_rank: Mapped[int] = mapped_column(Integer)
    # NULL on a row written before revision 0004: see `tracker.storage.reads`.
    sources: Mapped[dict[str, int] | None] = mapped_column(JSONText)
    # The call's history, kept in its own row (revision 0005): read and written with the call,
    # it costs no statement and no index of its own. NULL (a call migrated without steps)
    # reads as no steps.
    history: Mapped[tuple[Transition, ...]] = mapped_column(HistoryJSON, nullable=True)
    version: Mapped[int] = mapped_column(Integer)


class EventRow(Base):
    """The event log: every body handed to `apply`, byte for byte, with its outcome."""

    __tablename__ = "tracker_events"
    __table_args__ = (
        # The content key hashes the call id, so unique with the call id is unique alone; led
        # by the call id, the same index serves `events(call_id=...)` (revision 0005).
        UniqueConstraint("call_id", "dedup_key"),
        Index(None, "outcome", **_partial(NOT_APPLIED)),
        # An id is never given again, even after the newest entries are pruned: the change
        # feed's cursor and the ids a history names depend on it (revision 0008). PostgreSQL's
        # sequence and InnoDB's AUTO_INCREMENT behave so already.
        {**_MYSQL_OPTIONS, "sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[bytes] = mapped_column(
        LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    )
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    call_id: Mapped[str | None] = mapped_column(ID)
    event_type: Mapped[str | None] = mapped_column(ID)
    # The content key of an applied delivery. Unique, so the same delivery cannot be applied
    # twice even by two workers at once; NULL (and so not constrained) for every other outcome.
    dedup_key: Mapped[str | None] = mapped_column(String(64))
    # NULL for a body handed to `apply`; `sweep` for an entry the sweep wrote (revision 0007).
    origin: Mapped[str | None] = mapped_column(String(16))


class TransferRow(Base):
    """The transfer attempts of a call, one per applied `transferComplete`."""

    __tablename__ = "tracker_transfers"
    __table_args__ = (Index(None, "call_id"), _MYSQL_OPTIONS)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    call_id: Mapped[str] = mapped_column(ID, ForeignKey("tracker_calls.call_id"))
    # The delivery that told of the attempt. No foreign key (revision 0006): the attempt outlives
    # its log entry when the log is pruned, as a history step does.
    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cause: Mapped[str] = mapped_column(Text)
    disposition: Mapped[str] = mapped_column(String(16))
    transfer_to: Mapped[str | None] = mapped_column(Text)
    transfer_caller_id: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_id: Mapped[str | None] = mapped_column(Text)
    # The delivery's content key: attempts at one instant sort the same whatever their arrival.
    sort_key: Mapped[str] = mapped_column(String(64))


class LeaseRow(Base):
    """A named lease (revision 0010): the one holder of a job several processes could run, such
    as the background sweep of `tracker serve`, until it expires or its holder gives it up."""

    __tablename__ = "tracker_leases"
    __table_args__ = (_MYSQL_OPTIONS,)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


calls: Final = cast(Table, CallRow.__table__)
transfers: Final = cast(Table, TransferRow.__table__)
events: Final = cast(Table, EventRow.__table__)
leases: Final = cast(Table, LeaseRow.__table__)

# The columns of a call in `CallRecord`'s field order, so a row reads as a record.
CALL_COLUMNS: Final = tuple(calls.c[name] for name in lifecycle.RECORD_FIELDS)
# The columns of a transfer attempt named as `TransferAttempt`'s fields.
ATTEMPT_FIELDS: Final = tuple(field.name for field in fields(TransferAttempt))
