"""Stage 3 of the pipeline: the tables and the few statements that read and write them.

Naming follows Optuna's storage: `find_*` returns one thing or None, `where_*` returns many,
`insert_*`/`write_*`/`fill_*` change rows. Concurrency rests on the database's uniqueness
constraints and on compare-and-set: a call row is updated only `WHERE version = <the version
read>`, so a lost race is detected (`LostRaceError`) and the whole delivery retried, never
overwritten. The schema itself comes only from the Alembic migrations in `migrations/`.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Final, NamedTuple, Protocol, TypeVar, cast

from pydantic_core import from_json, to_json
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import create_engine as sqlalchemy_create_engine
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from tracker import driver, lifecycle
from tracker.errors import check_instant
from tracker.lifecycle import CallRecord
from tracker.records import MAX_ID_LENGTH, Event, Outcome, TransferAttempt, Transition

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


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    Stored as naive UTC with microseconds: SQLite keeps no zone, MySQL's DATETIME needs `fsp=6`
    to keep sub-second precision.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return _naive_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)

    # SQLite stores the instant as SQLAlchemy's DATETIME text, `YYYY-MM-DD HH:MM:SS.ffffff`.
    # Every delivery writes and reads several; the C `isoformat`/`fromisoformat` give and take
    # exactly that text several times faster than SQLAlchemy's own %-formatting and regular
    # expression (tests/test_storage_contract.py holds the two to the same text).

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_text(value: datetime | None) -> str | None:
            if value is None:
                return None
            return _naive_utc(value).isoformat(" ", "microseconds")

        return to_text

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_text(value: str | None) -> datetime | None:
            if value is None:
                return None
            # The zone in the text, not `.replace(tzinfo=UTC)`: a C method's keyword argument
            # costs ten times the parse, and an export reads millions of instants.
            return datetime.fromisoformat(value + "+00:00")

        return from_text


def _naive_utc(value: datetime) -> datetime:
    """The naive UTC datetime a column stores for the instant `value`. A naive `value` names no
    instant: `astimezone` would read it as the host's local time, so a query's bound or a stored
    time would move with the TZ variable. It is refused, by the one rule the public methods
    check their arguments with (`check_instant`)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        check_instant("a datetime compared with or stored in a tracker column", value)
    return value.astimezone(UTC).replace(tzinfo=None)


class JSONText(TypeDecorator[Any]):
    """A JSON document kept as text: the same column type on every backend (MariaDB's JSON is
    an alias with a check, PostgreSQL's jsonb would reorder keys), read back as sent."""

    impl = Text
    cache_ok = True

    # pydantic-core's JSON, several times faster than the json module's, writes the same
    # compact text (UTF-8 as is, keys in order), and reads what either wrote.

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return to_json(value).decode()

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else from_json(value)


class HistoryJSON(TypeDecorator[tuple[Transition, ...]]):
    """A call's history as JSON text: one `[source, target, at, event, event_id]` per step,
    `at` in ISO 8601 with its microseconds, so it reads back equal to what was written."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Sequence[Transition] | None, dialect: Dialect) -> str:
        return to_json(
            [
                [step.source, step.target, step.at.isoformat(), step.event, step.event_id]
                for step in value or ()
            ]
        ).decode()

    def process_result_value(self, value: str | None, dialect: Dialect) -> tuple[Transition, ...]:
        if not value:
            return ()
        return tuple(
            Transition(source, target, datetime.fromisoformat(at), event, event_id)
            for source, target, at, event, event_id in from_json(value)
        )


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
    numbers_leg_id: Mapped[str | None] = mapped_column(ID)
    numbers_leg_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    seen_rank: Mapped[int] = mapped_column(Integer)
    # NULL on a row written before revision 0004: see `_record`.
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


calls: Final = cast(Table, CallRow.__table__)
transfers: Final = cast(Table, TransferRow.__table__)
events: Final = cast(Table, EventRow.__table__)

_RECORD_FIELDS: Final = lifecycle.RECORD_FIELDS
_CALL_COLUMNS: Final = tuple(calls.c[name] for name in _RECORD_FIELDS)
# Big IN lists are split so no backend hits its bound-parameter limit.
_CHUNK: Final = 500

# The statements of the write path mostly go through `tracker.driver` (compiled once per
# dialect, run on the driver; see `_hot`). These are the rest: built once, so SQLAlchemy
# reuses their compiled form.

# The ids of a multi-row INSERT come back in no promised order; sorted, they are in the order of
# the rows, because every backend numbers the rows of one statement in order: a new SQLite row
# takes one more than the largest rowid, a PostgreSQL row the sequence's next value, a MariaDB
# row the next AUTO_INCREMENT. (`sort_by_parameter_order` would make SQLite send one INSERT per
# row.)
_INSERT_EVENTS_RETURNING: Final = insert(events).returning(events.c.id)
# The compare-and-set condition of every UPDATE of a call: the row as it was read.
_AT_READ_VERSION: Final = and_(
    calls.c.call_id == bindparam("b_call_id"),
    calls.c.version == bindparam("expected_version"),
)
_SELECT_TRANSFERS: Final = (
    select(transfers)
    .where(transfers.c.call_id.in_(bindparam("call_ids", expanding=True)))
    .order_by(transfers.c.call_id, transfers.c.at.is_(None), transfers.c.at, transfers.c.sort_key)
)
_SELECT_TREE_STEP: Final = select(
    calls.c.call_id, calls.c.parent_call_id, calls.c.account_id, calls.c.version
).where(
    or_(
        calls.c.call_id.in_(bindparam("call_ids", expanding=True)),
        calls.c.parent_call_id.in_(bindparam("call_ids", expanding=True)),
    )
)

# --- the hot statements: compiled once per dialect, run on the driver (`tracker.driver`) ---

# Up to this many ids, one delivery's call is read with the look-up of its applied key.
_HOT_IDS: Final = 8
# The most ids, and (call id, key) pairs, one statement names (powers of two: see
# `_padded_chunks`). Pairs are OR-ed terms, which SQLite nests one level each. Each size is
# compiled once per `Tracker`, at a cost that grows with it (12 ms for 128 pairs), while a
# statement more per chunk costs little: a new `Tracker` spent a ninth of its first
# `apply_many` batches compiling 512 ids and 128 pairs.
_HOT_CHUNK: Final = 128
_HOT_PAIRS: Final = 32
_Item = TypeVar("_Item")

_compiled: Final = weakref.WeakKeyDictionary[Dialect, dict[Hashable, driver.Compiled]]()


def _hot(
    connection: Connection,
    build: Callable[..., tuple[ClauseElement, Sequence[str]]],
    *arguments: Hashable,
) -> driver.Compiled:
    """The statement `build(*arguments)` makes (with the names of the values it takes),
    compiled for `connection`'s dialect the first time it is asked for."""
    dialect = connection.dialect
    known = _compiled.get(dialect)
    if known is None:
        known = _compiled.setdefault(dialect, {})
    name = (build, arguments)
    compiled = known.get(name)
    if compiled is None:
        statement, keys = build(*arguments)
        prepare = build not in _PLANNED_AT_EACH_RUN
        compiled = known[name] = driver.compile_for(dialect, statement, keys, prepare=prepare)
    return compiled


def _select_calls_by_id(count: int) -> tuple[ClauseElement, Sequence[str]]:
    names = [f"id_{index}" for index in range(count)]
    statement = select(*_CALL_COLUMNS).where(
        calls.c.call_id.in_([bindparam(name) for name in names])
    )
    return statement, names


def _select_calls_with_applied_key(count: int) -> tuple[ClauseElement, Sequence[str]]:
    # One `call_id = ?` look-up per id, joined by UNION ALL, rather than one `IN` list: a
    # prepared statement keeps the plan it got while the table was small, and for an `IN` list
    # of two ids on a small table PostgreSQL plans a scan of the whole table, which it then
    # keeps as the table grows (until an ANALYZE). An equality on the primary key is planned
    # as an index look-up at any size.
    names = [f"id_{index}" for index in range(count)]
    applied = (
        select(events.c.dedup_key)
        .where(events.c.call_id == calls.c.call_id, events.c.dedup_key == bindparam("key"))
        .scalar_subquery()
    )
    lookups = [
        select(*_CALL_COLUMNS, applied).where(calls.c.call_id == bindparam(name)) for name in names
    ]
    statement = lookups[0] if count == 1 else union_all(*lookups)
    return statement, [*names, "key"]


def _select_applied_keys(count: int) -> tuple[ClauseElement, Sequence[str]]:
    # One (call id = ? AND key = ?) term per pair: each an index look-up on every backend. Two
    # IN lists would make SQLite probe every combination, and a row-value IN list makes it scan
    # the whole index.
    call_ids = [f"call_id_{index}" for index in range(count)]
    keys = [f"key_{index}" for index in range(count)]
    statement = select(events.c.dedup_key).where(
        or_(
            *(
                and_(events.c.call_id == bindparam(c), events.c.dedup_key == bindparam(k))
                for c, k in zip(call_ids, keys, strict=True)
            )
        )
    )
    return statement, [*call_ids, *keys]


# The look-ups of a batch's calls and applied keys: lists of ids, whose best plan follows the
# table's size, so the driver plans them at each run rather than preparing them once (see
# `driver.compile_for`). One delivery's look-ups (`_select_calls_with_applied_key`) stay
# prepared: each is by one id, and the hot path saves the planning.
_PLANNED_AT_EACH_RUN: Final = frozenset({_select_calls_by_id, _select_applied_keys})


_EVENT_VALUES: Final = (
    "received_at", "body", "outcome", "reason", "detail", "call_id", "event_type", "dedup_key",
    "origin",
)  # fmt: skip


def _insert_event(has_last_row_id: bool) -> tuple[ClauseElement, Sequence[str]]:
    # The driver's last row id where it has one (SQLite, MySQL); RETURNING elsewhere.
    statement = insert(events)
    if not has_last_row_id:
        return statement.returning(events.c.id), _EVENT_VALUES
    return statement, _EVENT_VALUES


def _insert_call(present: Sequence[str]) -> tuple[ClauseElement, Sequence[str]]:
    return insert(calls), present


_ATTEMPT_FIELDS: Final = tuple(field.name for field in fields(TransferAttempt))
# An attempt's facts as one tuple (`dataclasses.asdict` deep-copies every value).
_attempt_facts: Final = attrgetter(*_ATTEMPT_FIELDS)
_TRANSFER_VALUES: Final = (
    *_ATTEMPT_FIELDS,
    "call_id",
    "event_id",
    "sort_key",
)


def _insert_transfer() -> tuple[ClauseElement, Sequence[str]]:
    return insert(transfers), _TRANSFER_VALUES


def _update_call(changed: Sequence[str]) -> tuple[ClauseElement, Sequence[str]]:
    setting = [*changed, "version"]
    statement = (
        update(calls).where(_AT_READ_VERSION).values({name: bindparam(name) for name in setting})
    )
    return statement, [*setting, "b_call_id", "expected_version"]


def _fill_account() -> tuple[ClauseElement, Sequence[str]]:
    statement = (
        update(calls)
        .where(_AT_READ_VERSION)
        .values(account_id=bindparam("account_id"), version=calls.c.version + 1)
    )
    return statement, ["account_id", "b_call_id", "expected_version"]


# The statements of the read path, each taking one chunk of ids: a snapshot of any number of
# calls costs a few statements, not a few per call.
_SELECT_LEGS: Final = select(calls.c.parent_call_id, calls.c.call_id, calls.c.start_time).where(
    calls.c.parent_call_id.in_(bindparam("call_ids", expanding=True))
)
_SELECT_ANCESTORS: Final = select(
    calls.c.call_id, calls.c.application_id, calls.c.parent_call_id
).where(calls.c.call_id.in_(bindparam("call_ids", expanding=True)))
# `lifecycle.leg_order` in SQL: by start time, then id, placeholders (no start time) last on
# every backend, although some sort NULLs first.
BY_START_TIME: Final = (calls.c.start_time.is_(None), calls.c.start_time, calls.c.call_id)


class LostRaceError(Exception):
    """Another writer changed a row between our read and our write; the delivery is retried."""


# A unique key taken by another writer between our read and our insert: the call row (two
# deliveries creating one call or one placeholder), the dedup key (one body applied by two
# workers) or a history step. PostgreSQL's SQLSTATE, MySQL's error numbers (duplicate entry,
# duplicate key), SQLite's extended result codes (UNIQUE, PRIMARY KEY).
_UNIQUE_SQLSTATES: Final = frozenset({"23505"})
_UNIQUE_MYSQL_CODES: Final = frozenset({1062, 1586})
_UNIQUE_SQLITE_CODES: Final = frozenset(
    {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
)


def is_unique_violation(error: IntegrityError) -> bool:
    """True when `error` is a lost race on a unique key, the only constraint a race can break
    (calls are never deleted, and nothing refers to a log entry, which `prune` deletes, so a
    foreign key or NOT NULL failure is always a bug)."""
    original = error.orig
    if getattr(original, "sqlstate", None) in _UNIQUE_SQLSTATES:
        return True
    if getattr(original, "sqlite_errorname", None) in _UNIQUE_SQLITE_CODES:
        return True
    arguments: tuple[Any, ...] = getattr(original, "args", ())
    return bool(arguments) and arguments[0] in _UNIQUE_MYSQL_CODES


# --- engines ------------------------------------------------------------------------------

DEFAULT_TIMEOUT: Final = 30.0
"""Seconds a delivery may wait for a lock, a statement or a silent server before it fails."""


def create_engine(
    database: str | URL,
    *,
    durable: bool = True,
    schema: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Engine:
    """An engine set up for many long-running workers.

    SQLite: WAL so readers never block the writer, `synchronous=FULL` so a returned `apply`
    survives a power loss (`durable=False` trades that for speed: NORMAL loses the last
    transactions on power loss, never consistency), a busy timeout of `timeout` so concurrent
    writers wait instead of failing, and `BEGIN IMMEDIATE` for writes: pysqlite begins lazily,
    which lets two writers read the same row and only then collide.
    Servers: READ COMMITTED (the compare-and-set does the rest), pre-ping, so a connection the
    server dropped overnight is replaced instead of failing a delivery, and `timeout` as the
    server's lock and statement timeouts (plus a client-side read timeout on MySQL/MariaDB, which
    holds even when the server stops answering altogether). `timeout=None` sets no bound.
    `schema` (PostgreSQL only) puts the tracker's tables in a schema of their own, apart from the
    host application's, by setting each connection's search path.
    """
    _check_timeout(timeout)
    url = make_url(database)
    backend = url.get_backend_name()
    if schema is not None and backend != "postgresql":
        raise ValueError(f"a schema name is a PostgreSQL setting; {backend} has none")
    if backend == "sqlite":
        engine = sqlalchemy_create_engine(url)
        _prepare_sqlite(engine, durable=durable, timeout=timeout)
        return engine
    connect_args: dict[str, Any] = {}
    if timeout is not None:
        connect_args = (
            _postgresql_bounds(url, timeout) if backend == "postgresql" else _mysql_bounds(timeout)
        )
    engine = sqlalchemy_create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_recycle=3600,
        pool_timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        connect_args=connect_args,
    )
    if backend != "postgresql" and timeout is not None:
        _bound_mysql_sessions(engine, timeout)
    if schema is not None:
        _use_schema(engine, schema)
    return engine


def adopt_engine(
    engine: Engine,
    *,
    durable: bool = True,
    schema: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Engine:
    """Set up a host application's engine for the tracker; returns the engine to use.

    SQLite: the same setup as `create_engine`, on every connection of the engine, the host's
    included, because a pragma or the way transactions begin cannot differ between two
    connections to one file without one of them breaking the other's guarantees. Servers: the
    host's connections stay as they are; the tracker's own run at READ COMMITTED, and on
    PostgreSQL each of its transactions sets `timeout` as its local lock and statement timeout.
    On MySQL/MariaDB the bounds are session settings and socket timeouts, which only the
    engine's owner can set without changing every connection of the pool (see the README).
    """
    _check_timeout(timeout)
    if schema is not None:
        raise ValueError(
            "schema= needs an engine the tracker creates, since a search path set on your "
            "engine would change your own connections too: pass the URL with schema= "
            "(Tracker(url, schema=...)), or leave schema unset and give your engine's "
            "connections the search path yourself (a 'connect' listener running SET search_path)"
        )
    if engine.dialect.name == "sqlite":
        # Listeners go on the engine that owns the pool, so that every connection, whichever
        # `execution_options()` copy of the engine it comes from, begins the same way.
        owner = engine
        while isinstance(owner, OptionEngine):
            owner = owner._proxied
        _prepare_sqlite(owner, durable=durable, timeout=timeout)
        return engine
    # The option is applied when the tracker checks a connection out and reset when it returns
    # it, so the host's connections keep their own isolation level.
    own = engine.execution_options(isolation_level="READ COMMITTED")
    if own.dialect.name == "postgresql" and timeout is not None:
        _bound_postgresql_transactions(own, timeout)
    return own


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, or None; got {timeout}")


def _postgresql_bounds(url: URL, timeout: float) -> dict[str, Any]:
    """libpq parameters: the server ends a statement or a lock wait after `timeout`, and the
    kernel drops a connection whose sent data goes unacknowledged that long (a dead network).
    Options the URL already sets are kept."""
    milliseconds = max(1, round(timeout * 1000))
    options = f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"
    given = url.query.get("options")
    if isinstance(given, str):
        options = f"{given} {options}"
    bounds: dict[str, Any] = {"options": options, "tcp_user_timeout": milliseconds}
    if "connect_timeout" not in url.query:
        bounds["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's smallest useful value
    return bounds


def _mysql_bounds(timeout: float) -> dict[str, Any]:
    """pymysql's socket timeouts: they hold even when the server process is paused. They are set
    a little beyond the server's own bounds, so that a lock wait ends with the server's clean
    error and the connection stays usable, and only a silent server is cut off."""
    return {
        "connect_timeout": timeout,
        "read_timeout": math.ceil(timeout) + _CLIENT_GRACE_SECONDS,
        "write_timeout": math.ceil(timeout) + _CLIENT_GRACE_SECONDS,
    }


# How much longer the client waits than the server's own bound before cutting the connection.
_CLIENT_GRACE_SECONDS: Final = 1


def _bound_mysql_sessions(engine: Engine, timeout: float) -> None:
    seconds = max(1, math.ceil(timeout))

    @event.listens_for(engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        # MariaDB bounds any statement; MySQL has no such variable (its max_execution_time
        # covers only SELECT), so there the client's read timeout is the statement bound.
        mariadb = "mariadb" in str(connection.get_server_info()).lower()
        statement = f", max_statement_time = {seconds}" if mariadb else ""
        cursor = connection.cursor()
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}{statement}")
        cursor.close()


def _bound_postgresql_transactions(engine: Engine, timeout: float) -> None:
    """For an engine the host owns: the bounds of `_postgresql_bounds`, scoped to each of the
    tracker's transactions (set_config(..., true) is SET LOCAL), so the host's own connections
    keep their settings. Upgrades run unbounded (`tracker_upgrade`)."""
    milliseconds = str(max(1, round(timeout * 1000)))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if not connection.get_execution_options().get("tracker_upgrade", False):
            connection.exec_driver_sql(
                "SELECT set_config('statement_timeout', %(ms)s, true), "
                "set_config('lock_timeout', %(ms)s, true)",
                {"ms": milliseconds},
            )


def _use_schema(engine: Engine, schema: str) -> None:
    quoted = engine.dialect.identifier_preparer.quote_identifier(schema)

    @event.listens_for(engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        # The schema is created by `upgrade`; until then the search path simply finds nothing.
        cursor.execute(f"SET search_path TO {quoted}")
        cursor.close()
        connection.commit()


@dataclass(frozen=True)
class _SQLiteSetup:
    durable: bool
    timeout: float | None


# The setup each SQLite engine was given, so that two Trackers sharing one engine register its
# listeners once, and cannot ask for two different setups of the same connections.
_sqlite_setups: Final = weakref.WeakKeyDictionary[Engine, _SQLiteSetup]()
_SET_UP: Final = "tracker_sqlite_setup"


def _prepare_sqlite(engine: Engine, *, durable: bool, timeout: float | None) -> None:
    wanted = _SQLiteSetup(durable, timeout)
    given = _sqlite_setups.get(engine)
    if given == wanted:
        return
    if given is not None:
        raise ValueError(
            f"this SQLite engine is already set up for a tracker with durable={given.durable}, "
            f"timeout={given.timeout}; the settings are per connection of the engine, so give "
            "every Tracker sharing it the same ones"
        )
    _sqlite_setups[engine] = wanted
    synchronous = "FULL" if durable else "NORMAL"
    busy_timeout_ms = _sqlite_busy_timeout_ms(timeout)
    in_memory = engine.url.database in (None, "", ":memory:")

    def set_up(connection: Any, record: Any) -> None:
        if record.info.get(_SET_UP):
            return
        connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        if not in_memory:
            _use_wal(cursor, busy_timeout_ms)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        record.info[_SET_UP] = True

    # New connections are set up when made; those a host's engine pooled before the tracker
    # came are set up on their next checkout (disposing the pool instead would lose an
    # in-memory database).
    event.listen(engine, "connect", set_up)
    event.listen(engine, "checkout", lambda connection, record, _proxy: set_up(connection, record))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # pysqlite no longer begins by itself (isolation_level=None above), so every
        # transaction on this engine, the host's too, begins here; AUTOCOMMIT asks for none.
        if connection._is_autocommit_isolation():
            return
        writing = connection.get_execution_options().get("tracker_write", False)
        driver.run(connection, _BEGIN_IMMEDIATE if writing else _BEGIN, {})


def has_sqlite_setup(connection: Connection) -> bool:
    """True when this SQLite connection got the tracker's setup (`_prepare_sqlite`): pysqlite's
    own transaction handling, which would let a SAVEPOINT begin (and its RELEASE commit) a
    transaction of its own, is replaced there by an explicit BEGIN."""
    return bool(connection.connection.info.get(_SET_UP))


_BEGIN: Final = driver.plain("BEGIN")
_BEGIN_IMMEDIATE: Final = driver.plain("BEGIN IMMEDIATE")


def _sqlite_busy_timeout_ms(timeout: float | None) -> int:
    return 2**31 - 1 if timeout is None else max(1, round(timeout * 1000))


def _use_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Switch the file to WAL (persistent: a no-op once done). The switch needs an exclusive
    lock, which SQLite refuses at once, busy timeout or not, while another connection holds a
    write lock (waiting could deadlock): processes opening a new file together meet exactly
    that, so the switch is retried here until the busy timeout."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            if "locked" not in str(error).lower() and "busy" not in str(error).lower():
                raise
            mode = ""
        if mode.lower() == "wal":
            return
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: could not switch it to WAL")
        time.sleep(random.uniform(0.005, 0.05))


# --- reads ----------------------------------------------------------------------------------


def _record(row: Any) -> CallRecord:
    record = CallRecord(*row)  # the columns are selected in the record's field order
    if record.sources is not None:
        return record
    # Written before revision 0004, when only terminal events were applied: every fact the row
    # holds came from its terminal event (a placeholder's, from its legs: no source).
    rank = lifecycle.RANKS.get(record.terminal_event or "", 0)
    sources = {
        name: rank for name in lifecycle.MERGED_FACTS if rank and getattr(record, name) is not None
    }
    if rank:
        sources["parent_call_id"] = rank
    return replace(record, sources=sources)


def where_calls_by_id(connection: Connection, call_ids: Iterable[str]) -> dict[str, CallRecord]:
    wanted = list(dict.fromkeys(call_ids))
    found: dict[str, CallRecord] = {}
    for chunk in _padded_chunks(wanted, _HOT_CHUNK):
        compiled = _hot(connection, _select_calls_by_id, len(chunk))
        parameters = {f"id_{index}": call_id for index, call_id in enumerate(chunk)}
        for row in driver.rows(compiled, driver.run(connection, compiled, parameters)):
            record = _record(row)
            found[record.call_id] = record
    return found


def find_call(connection: Connection, call_id: str) -> CallRecord | None:
    return where_calls_by_id(connection, [call_id]).get(call_id)


class Lineage(Protocol):
    """What `where_applications` reads of a call: a `CallRecord`, or an `ExportedCall`."""

    @property
    def call_id(self) -> str: ...
    @property
    def application_id(self) -> str | None: ...
    @property
    def parent_call_id(self) -> str | None: ...


def where_applications(connection: Connection, records: Sequence[Lineage]) -> dict[str, str | None]:
    """The application each call runs in: its own, else that of the nearest ancestor that names
    one (a transferred leg runs in its parent's, and `transferDisconnect` bodies seldom say
    which). Resolved when read, so a parent reporting after its legs need not rewrite them.

    All the calls climb their ancestry together, one level per step, and each step reads the
    ancestors not seen yet in one query (per chunk) for the whole set, so the cost follows the
    depth of the transfer trees, not the number of calls. A walk that comes back to a call it
    passed (a loop a race may leave) stops with no application.
    """
    # call id -> (application id, parent call id) of every call read so far; the records
    # themselves are often the ancestors asked for (`calls()` returns whole trees).
    known = {record.call_id: (record.application_id, record.parent_call_id) for record in records}
    shown: dict[str, str | None] = {}
    # For each call still climbing: the ancestor to look at next, and the calls passed so far.
    climbing: dict[str, tuple[str, set[str]]] = {}
    for record in records:
        shown[record.call_id] = record.application_id
        if record.application_id is None and record.parent_call_id is not None:
            climbing[record.call_id] = (record.parent_call_id, {record.call_id})
    while climbing:
        unknown = sorted({ancestor for ancestor, _ in climbing.values()} - known.keys())
        for chunk in _chunks(unknown):
            for row in connection.execute(_SELECT_ANCESTORS, {"call_ids": chunk}):
                known[row.call_id] = (row.application_id, row.parent_call_id)
        still_climbing: dict[str, tuple[str, set[str]]] = {}
        for call_id, (ancestor, passed) in climbing.items():
            application_id, parent_id = known.get(ancestor, (None, None))  # gone: no parent
            passed.add(ancestor)
            if application_id is not None:
                shown[call_id] = application_id
            elif parent_id is not None and parent_id not in passed:
                still_climbing[call_id] = (parent_id, passed)
        climbing = still_climbing
    return shown


def where_calls_and_applied_keys(
    connection: Connection, call_ids: Iterable[str], wanted: Sequence[tuple[str, str]]
) -> tuple[dict[str, CallRecord], set[str]]:
    """The calls of `call_ids` (by id, those that exist), and of the (call id, content key)
    pairs `wanted`, the keys already applied. Only a call that exists can have had a delivery
    applied (applying one always writes its call), so a delivery that opens a call costs no
    look-up; and for one delivery (`apply`) the look-up rides on the read of its call, one
    statement (one round trip) for both."""
    ids = list(dict.fromkeys(call_ids))
    if not ids:
        return {}, set()
    if len(wanted) == 1 and len(ids) <= _HOT_IDS:
        ((_, key),) = wanted
        compiled = _hot(connection, _select_calls_with_applied_key, len(ids))
        parameters = {f"id_{index}": call_id for index, call_id in enumerate(ids)}
        parameters["key"] = key
        found: dict[str, CallRecord] = {}
        applied: set[str] = set()
        for row in driver.rows(compiled, driver.run(connection, compiled, parameters)):
            record = _record(row[:-1])
            found[record.call_id] = record
            if row[-1] is not None:
                applied.add(row[-1])
        return found, applied
    found = where_calls_by_id(connection, ids)
    existing = [(call_id, key) for call_id, key in wanted if call_id in found]
    return found, where_applied_keys(connection, existing) if existing else set()


def where_applied_keys(connection: Connection, wanted: Sequence[tuple[str, str]]) -> set[str]:
    """Of the (call id, content key) pairs `wanted`, the keys already applied. Asked by call id
    and key together, the log's one unique index answers it."""
    found: set[str] = set()
    for chunk in _padded_chunks(list(wanted), _HOT_PAIRS):
        compiled = _hot(connection, _select_applied_keys, len(chunk))
        parameters: dict[str, str] = {}
        for index, (call_id, key) in enumerate(chunk):
            parameters[f"call_id_{index}"] = call_id
            parameters[f"key_{index}"] = key
        cursor = driver.run(connection, compiled, parameters)
        found.update(row[0] for row in driver.rows(compiled, cursor))
    return found


def where_legs(
    connection: Connection, call_ids: Iterable[str]
) -> dict[str, list[tuple[str, datetime | None]]]:
    """(leg id, start time) of the legs of each call, in no particular order (legs are ordered
    by `lifecycle.leg_order`). A call without legs has no entry."""
    legs: dict[str, list[tuple[str, datetime | None]]] = {}
    for chunk in _chunks(list(dict.fromkeys(call_ids))):
        for row in connection.execute(_SELECT_LEGS, {"call_ids": chunk}):
            legs.setdefault(row.parent_call_id, []).append((row.call_id, row.start_time))
    return legs


def where_transfers(
    connection: Connection, call_ids: Iterable[str]
) -> dict[str, list[TransferAttempt]]:
    """The transfer attempts of each call, oldest first (by `eventTime`; attempts without one
    last), in the same order whatever order their deliveries came in."""
    found: dict[str, list[TransferAttempt]] = {}
    for chunk in _chunks(list(dict.fromkeys(call_ids))):
        for row in connection.execute(_SELECT_TRANSFERS, {"call_ids": chunk}):
            found.setdefault(row.call_id, []).append(
                TransferAttempt(
                    at=row.at,
                    cause=row.cause,
                    disposition=row.disposition,
                    transfer_to=row.transfer_to,
                    transfer_caller_id=row.transfer_caller_id,
                    error_message=row.error_message,
                    error_id=row.error_id,
                )
            )
    return found


def where_events(
    connection: Connection,
    *,
    call_id: str | None = None,
    outcome: str | None = None,
    after_id: int | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The log entries matching the filters, oldest first. With `after_id`, the first `limit`
    entries after that id (a page, read along the primary key); without it, the newest `limit`
    entries (all of them when `limit` is None)."""
    query = select(events)
    if call_id is not None:
        query = query.where(events.c.call_id == call_id)
    if outcome is not None:
        query = query.where(events.c.outcome == outcome)
        if outcome != Outcome.APPLIED:
            query = query.where(text(NOT_APPLIED))
    if after_id is not None:
        query = query.where(events.c.id > after_id).order_by(events.c.id)
        rows = list(connection.execute(query if limit is None else query.limit(limit)))
    elif limit is None:
        rows = list(connection.execute(query.order_by(events.c.id)))
    else:
        # The newest `limit` entries, still handed back oldest first.
        rows = list(connection.execute(query.order_by(events.c.id.desc()).limit(limit)))
        rows.reverse()
    return [_event(row) for row in rows]


def where_events_between(
    connection: Connection,
    *,
    after_id: int,
    through_id: int,
    outcome: str,
    reason: str | None = None,
    without_reason: str | None = None,
    call_id: str | None = None,
    limit: int,
) -> list[Event]:
    """At most `limit` entries of one outcome not applied, with ids in (`after_id`,
    `through_id`], oldest first: a page of the log, read again from the last id seen, so that
    walking the whole log holds one page at a time."""
    query = _not_applied(outcome, reason=reason, without_reason=without_reason, call_id=call_id)
    query = query.where(events.c.id > after_id, events.c.id <= through_id)
    return [_event(row) for row in connection.execute(query.order_by(events.c.id).limit(limit))]


def count_events_through(
    connection: Connection,
    *,
    through_id: int,
    outcome: str,
    reason: str,
    call_id: str | None = None,
) -> int:
    """How many entries of one outcome not applied and one reason have ids up to `through_id`."""
    query = _not_applied(outcome, reason=reason, call_id=call_id, columns=[func.count()])
    return int(connection.execute(query.where(events.c.id <= through_id)).scalar_one())


def last_event_id(connection: Connection) -> int:
    """The id of the newest log entry, 0 for an empty log: where a re-drive's reading or a
    rebuild's replay stops."""
    return int(connection.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())


def _not_applied(
    outcome: str,
    *,
    reason: str | None = None,
    without_reason: str | None = None,
    call_id: str | None = None,
    columns: Sequence[Any] = (),
) -> Select[Any]:
    if outcome == Outcome.APPLIED:
        raise ValueError("only entries that were not applied are read a page at a time")
    # The partial index's own words, for SQLite's sake (see `_partial`).
    query = select(*columns or [events]).where(events.c.outcome == outcome, text(NOT_APPLIED))
    if reason is not None:
        query = query.where(events.c.reason == reason)
    if without_reason is not None:
        query = query.where(or_(events.c.reason.is_(None), events.c.reason != without_reason))
    if call_id is not None:
        query = query.where(events.c.call_id == call_id)
    return query


def _event(row: Any) -> Event:
    return Event(
        id=row.id,
        received_at=row.received_at,
        body=bytes(row.body),
        outcome=Outcome(row.outcome),
        reason=row.reason,
        detail=row.detail,
        call_id=row.call_id,
        event_type=row.event_type,
        origin=row.origin,
    )


def where_log_entries(
    connection: Connection, ranges: Sequence[tuple[int, int]], after_id: int, limit: int
) -> list[Any]:
    """The first `limit` log entries, in id order, whose id is in one of the closed `ranges` or
    above `after_id`: the change feed's read (`tracker.feed`), ranges of the primary key only.
    Each row has the entry's id, outcome, received_at, call_id, event_type and origin."""
    wanted = [events.c.id > after_id]
    wanted += [events.c.id.between(first, last) for first, last in ranges]
    query = (
        select(
            events.c.id,
            events.c.outcome,
            events.c.received_at,
            events.c.call_id,
            events.c.event_type,
            events.c.origin,
        )
        .where(or_(*wanted))
        .order_by(events.c.id)
        .limit(limit)
    )
    return list(connection.execute(query))


def where_log_page(connection: Connection, after_id: int, size: int) -> list[tuple[int, datetime]]:
    """(id, received at) of the next `size` log entries after id `after_id`, in id order: a
    range of the primary key, so a page costs the same anywhere in the log (the log has no
    index on `received_at`, which would cost every delivery one more page to write)."""
    query = (
        select(events.c.id, events.c.received_at)
        .where(events.c.id > after_id)
        .order_by(events.c.id)
        .limit(size)
    )
    return [(row.id, row.received_at) for row in connection.execute(query)]


def delete_events(connection: Connection, after_id: int, through_id: int, before: datetime) -> int:
    """Delete the log entries with an id in (`after_id`, `through_id`] received before `before`;
    how many were deleted. A range of the primary key rather than a list of ids: no bound on
    parameters, and MariaDB takes no LIMIT in an IN subquery."""
    statement = events.delete().where(
        events.c.id > after_id, events.c.id <= through_id, events.c.received_at < before
    )
    return int(connection.execute(statement).rowcount)


def where_calls(
    connection: Connection,
    *,
    state: Sequence[str] | None = None,
    disposition: str | None = None,
    account_id: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    after: tuple[datetime | None, str] | None = None,
    limit: int | None = None,
) -> list[CallRecord]:
    """The calls matching every filter given, in `BY_START_TIME` order, at most `limit`.
    `after`: the start time and id of the last call of the previous page, to read the next one
    (keyset pagination, as `where_calls_page` does): the calls that started go along the
    start-time index from there, then the placeholders (no start time) by id."""

    def matching(query: Select[Any]) -> Select[Any]:
        query = _filtered(
            query,
            state=state,
            disposition=disposition,
            account_id=account_id,
            started_after=started_after,
            started_before=started_before,
        )
        return query if limit is None else query.limit(limit - len(found))

    found: list[CallRecord] = []
    if after is None:
        query = matching(select(*_CALL_COLUMNS).order_by(*BY_START_TIME))
        return [_record(row) for row in connection.execute(query)]
    after_start, after_id = after
    if after_start is not None:
        query = matching(
            select(*_CALL_COLUMNS)
            .where(
                calls.c.start_time >= after_start,
                or_(calls.c.start_time > after_start, calls.c.call_id > after_id),
            )
            .order_by(calls.c.start_time, calls.c.call_id)
        )
        found = [_record(row) for row in connection.execute(query)]
        if len(found) == limit or started_after is not None or started_before is not None:
            return found
    placeholders = select(*_CALL_COLUMNS).where(calls.c.start_time.is_(None))
    if after_start is None:
        placeholders = placeholders.where(calls.c.call_id > after_id)
    query = matching(placeholders.order_by(calls.c.call_id))
    return found + [_record(row) for row in connection.execute(query)]


def where_sweep_candidates(
    connection: Connection, after: str | None, cutoff: datetime, limit: int
) -> list[CallRecord]:
    """The next `limit` live calls after id `after`, by id, that may have been heard of last
    before `cutoff`: those that started before it or have no start time. Which of them the sweep
    ends is the lifecycle's to say (`lifecycle.expire`); this only keeps the read small, through
    the partial index of live calls."""
    query = _filtered(
        select(*_CALL_COLUMNS).order_by(calls.c.call_id).limit(limit),
        state=lifecycle.LIVE_STATES,
    ).where(or_(calls.c.start_time.is_(None), calls.c.start_time < cutoff))
    if after is not None:
        query = query.where(calls.c.call_id > after)
    return [_record(row) for row in connection.execute(query)]


def count_calls(connection: Connection, *, state: str | Sequence[str] | None = None) -> int:
    """How many calls are in `state` (one or several), counted by the database: the live calls
    a metrics scrape asks for without reading a row of them."""
    query = _filtered(select(func.count()).select_from(calls), state=state)
    return int(connection.execute(query).scalar_one())


def _filtered(
    query: Select[Any],
    *,
    state: str | Sequence[str] | None = None,
    disposition: str | None = None,
    account_id: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
) -> Select[Any]:
    states = [state] if isinstance(state, str) else state
    if states is not None:
        query = query.where(calls.c.state.in_(states))
        if lifecycle.DISCONNECTED not in states:  # the partial index's own words: see `_partial`
            query = query.where(text(NOT_ENDED))
    if disposition is not None:
        query = query.where(calls.c.disposition == disposition)
        if disposition != "completed":
            query = query.where(text(NOT_COMPLETED))
    if account_id is not None:
        query = query.where(calls.c.account_id == account_id)
    if started_after is not None:
        query = query.where(calls.c.start_time >= started_after)
    if started_before is not None:
        query = query.where(calls.c.start_time < started_before)
    return query


# --- export: call detail records, read a page at a time ---------------------------------------


class ExportedCall(NamedTuple):
    """The facts of a call a call detail record shows, as read for an export: no history, no
    ranks, so a page of a million-call export parses no history JSON and builds no record."""

    call_id: str
    parent_call_id: str | None
    account_id: str | None
    application_id: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    state: str
    cause: str | None
    disposition: str | None
    start_time: datetime | None
    answer_time: datetime | None
    end_time: datetime | None
    enqueued_time: datetime | None
    tag: str | None
    error_message: str | None
    error_id: str | None
    machine_detection: str | None
    attestation: str | None
    verstat: str | None
    caller_display_name: str | None
    swept_at: datetime | None
    legs: int  # calls whose parent it is
    transfer_attempts: int


# Counted in the row's own statement, each an index look-up per call (the partial index of legs,
# the transfers' index on call id): no second statement with a list of a page's ids.
_LEG: Final = calls.alias("leg")
_LEGS_OF_CALL: Final = (
    select(func.count()).where(_LEG.c.parent_call_id == calls.c.call_id).scalar_subquery()
)
_TRANSFERS_OF_CALL: Final = (
    select(func.count()).where(transfers.c.call_id == calls.c.call_id).scalar_subquery()
)
_EXPORTED_COLUMNS: Final = (
    *(calls.c[name] for name in ExportedCall._fields[:-2]),
    _LEGS_OF_CALL,
    _TRANSFERS_OF_CALL,
)


def where_calls_page(
    connection: Connection,
    *,
    after: tuple[datetime | None, str] | None,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    originals_only: bool,
    limit: int,
) -> list[ExportedCall]:
    """The next `limit` calls after `after` (the start time and id of the last call of the
    previous page) in `BY_START_TIME` order: started in [since, until), of `account_id`, with no
    parent when `originals_only`. Placeholders (no start time) come after the others, and only
    when no time bound is given: their start is unknown, so no window holds them.

    A page starts where the last one ended (keyset pagination, never an offset), read along the
    start-time index or the (account, start time) one, so every page costs the same however deep
    into the table it is. The statement runs on the driver (`_hot`): a page is a thousand rows,
    and SQLAlchemy's result objects would cost more than reading them."""
    values: dict[str, Any] = {"limit": limit, "since": since, "until": until}
    values["account_id"] = account_id
    filters = (since is not None, until is not None, account_id is not None, originals_only)
    found: list[ExportedCall] = []
    if after is None or after[0] is not None:
        if after is not None:
            values["after_start"], values["after_id"] = after
        compiled = _hot(connection, _select_calls_page, False, after is not None, *filters)
        cursor = driver.run(connection, compiled, values)
        found = [ExportedCall._make(row) for row in driver.rows(compiled, cursor)]
        if len(found) == limit or since is not None or until is not None:
            return found
    values["limit"] = limit - len(found)
    placeholders_after = after is not None and after[0] is None
    if placeholders_after:
        values["after_id"] = after[1] if after is not None else None
    compiled = _hot(connection, _select_calls_page, True, placeholders_after, *filters)
    cursor = driver.run(connection, compiled, values)
    return found + [ExportedCall._make(row) for row in driver.rows(compiled, cursor)]


def _select_calls_page(
    placeholders: bool, after: bool, since: bool, until: bool, account: bool, originals: bool
) -> tuple[ClauseElement, Sequence[str]]:
    query = select(*_EXPORTED_COLUMNS).limit(bindparam("limit", type_=Integer))
    keys = ["limit"]
    if placeholders:
        query = query.where(calls.c.start_time.is_(None)).order_by(calls.c.call_id)
        if after:
            query = query.where(calls.c.call_id > bindparam("after_id"))
            keys.append("after_id")
    else:
        query = query.where(calls.c.start_time.is_not(None))
        query = query.order_by(calls.c.start_time, calls.c.call_id)
        if after:
            # The range alone bounds the index scan; the OR only skips the ties already read.
            after_start = bindparam("after_start", type_=UTCDateTime)
            query = query.where(
                calls.c.start_time >= after_start,
                or_(calls.c.start_time > after_start, calls.c.call_id > bindparam("after_id")),
            )
            keys += ["after_start", "after_id"]
    for wanted, name, condition in (
        (since, "since", calls.c.start_time >= bindparam("since", type_=UTCDateTime)),
        (until, "until", calls.c.start_time < bindparam("until", type_=UTCDateTime)),
        (account, "account_id", calls.c.account_id == bindparam("account_id")),
    ):
        if wanted:
            query = query.where(condition)
            keys.append(name)
    if originals:
        query = query.where(calls.c.parent_call_id.is_(None))
    return query, keys


_SELECT_LEG_ANSWERS: Final = select(
    calls.c.call_id,
    calls.c.parent_call_id,
    calls.c.to_number,
    calls.c.answer_time,
    calls.c.end_time,
    _TRANSFERS_OF_CALL,
    _LEGS_OF_CALL,
).where(calls.c.parent_call_id.in_(bindparam("call_ids", expanding=True)))


class LegAnswer(NamedTuple):
    """What a conversation's row needs of each of its legs."""

    call_id: str
    parent_call_id: str
    to_number: str | None
    answer_time: datetime | None
    end_time: datetime | None
    transfer_attempts: int
    legs: int


def where_leg_answers(connection: Connection, parent_ids: Sequence[str]) -> list[LegAnswer]:
    """The legs of these calls: one level of their transfer trees."""
    found: list[LegAnswer] = []
    for chunk in _chunks(parent_ids):
        found.extend(
            LegAnswer._make(row)
            for row in connection.execute(_SELECT_LEG_ANSWERS, {"call_ids": chunk})
        )
    return found


# --- writes ---------------------------------------------------------------------------------


def insert_events(connection: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Append to the event log; the ids come back in the order of `rows`."""
    dialect = cast(DefaultDialect, connection.dialect)
    if len(rows) == 1 or not dialect.insert_executemany_returning:
        # `apply`; or a database that cannot return the ids of a many-row INSERT (MySQL 8 has no
        # INSERT ... RETURNING at all): one INSERT per row, each id its last row id.
        compiled = _hot(connection, _insert_event, dialect.postfetch_lastrowid)
        return [_inserted_event_id(connection, compiled, row) for row in rows]
    ids: list[int] = []
    for group in _by_statement_size(rows):
        result = connection.execute(_INSERT_EVENTS_RETURNING, group)
        ids.extend(sorted(int(event_id) for event_id in result.scalars()))
    return ids


def _inserted_event_id(
    connection: Connection, compiled: driver.Compiled, row: dict[str, Any]
) -> int:
    cursor = driver.run(connection, compiled, row)
    if compiled.returns_rows:
        return int(driver.rows(compiled, cursor)[0][0])
    return int(cursor.lastrowid)


# Bodies sent in one multi-row INSERT, at most. MariaDB refuses a statement over its
# `max_allowed_packet` (16 MiB by default) and the driver may double a body's bytes escaping
# them, so a batch of large bodies is split; one body alone is bounded by `MAX_BODY_BYTES`.
_STATEMENT_BODY_BYTES: Final = 4 * 1024 * 1024


def _by_statement_size(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    start, size = 0, 0
    for index, row in enumerate(rows):
        size += len(row["body"])
        if size > _STATEMENT_BODY_BYTES and index > start:
            yield rows[start:index]
            start, size = index, len(row["body"])
    if start < len(rows):
        yield rows[start:]


def write_calls(
    connection: Connection, changes: Sequence[tuple[CallRecord | None, CallRecord]]
) -> None:
    """Insert new calls and compare-and-set existing ones on the version they were read at.

    Row locks are taken in one order whatever the batch, so that concurrent batches never wait
    for each other in a cycle (a deadlock, which PostgreSQL takes a second to notice): first
    the calls that exist, by call id, then the new ones, level by level of their transfer trees
    (a parent before its legs, for the foreign key), by call id. Two batches that disagree on
    whether a call exists read it at different moments, and one of them loses that race anyway
    (a unique key, a compare-and-set). SQLite has one writer at a time: there the order is free.

    An UPDATE sets only the columns that changed: SQLite rewrites the entries of every index on
    a column the statement sets, even to the same value, and each page it touches is one more
    page to write at commit. Raises `LostRaceError` when another writer changed a call meanwhile.
    """
    ordered = sorted(changes, key=lambda change: change[1].call_id)
    server = connection.dialect.name != "sqlite"
    created = {after.call_id for before, after in ordered if before is None}
    updates = [_update_row(before, after) for before, after in ordered if before is not None]
    # An existing call that becomes a leg of a call created here can only be written once that
    # call is in: its row is then locked first, in order, and written after the inserts.
    after_inserts = any(row.get("parent_call_id") in created for _changed, row in updates)
    if after_inserts and server:
        _lock_calls(connection, [row["b_call_id"] for _changed, row in updates])
    if not after_inserts:
        _update_calls(connection, updates, in_order=server)
    _insert_calls(connection, [after for before, after in ordered if before is None], server)
    if after_inserts:
        _update_calls(connection, updates, in_order=False)


def _update_row(before: CallRecord, after: CallRecord) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The columns an UPDATE of this call sets, and its values (with the compare-and-set's)."""
    row = {
        name: new
        for name, old, new in zip(
            _RECORD_FIELDS, lifecycle.facts_of(before), lifecycle.facts_of(after), strict=True
        )
        if old != new and name not in ("call_id", "version")
    }
    changed = tuple(row)
    row.update(b_call_id=after.call_id, version=before.version + 1, expected_version=before.version)
    return changed, row


def _update_calls(
    connection: Connection,
    updates: Sequence[tuple[tuple[str, ...], dict[str, Any]]],
    *,
    in_order: bool,
) -> None:
    """Compare-and-set `updates` (in call-id order), one statement per set of columns changed.
    `in_order`: the rows must be locked in their order, so the statements follow it: one per
    run of rows changing the same columns, or, when that takes more statements than one per set
    plus one, the rows are locked first by one statement (`_lock_calls`)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    runs: list[tuple[tuple[str, ...], list[dict[str, Any]]]] = []
    for changed, row in updates:
        groups.setdefault(changed, []).append(row)
        if runs and runs[-1][0] == changed:
            runs[-1][1].append(row)
        else:
            runs.append((changed, [row]))
    statements = list(groups.items())
    if in_order and len(runs) > len(groups):
        if len(runs) <= len(groups) + 1:
            statements = runs
        else:
            _lock_calls(connection, [row["b_call_id"] for _changed, row in updates])
    for changed, rows in statements:
        compiled = _hot(connection, _update_call, changed)
        if _compare_and_set(connection, compiled, rows) != len(rows):
            raise LostRaceError("a call changed while this delivery was applied")


def _lock_calls(connection: Connection, call_ids: Sequence[str]) -> None:
    """Lock these calls' rows (in call-id order, as given), in one statement per chunk: by code
    point, as Python sorts, whatever the database's collation."""
    key: ColumnElement[Any] = calls.c.call_id
    if connection.dialect.name == "postgresql":
        key = key.collate("C")  # MySQL/MariaDB: the column's own collation is binary
    statement = (
        select(calls.c.call_id)
        .where(calls.c.call_id.in_(bindparam("call_ids", expanding=True)))
        .order_by(key)
        .with_for_update()
    )
    for chunk in _chunks(call_ids):
        connection.execute(statement, {"call_ids": chunk}).all()


def _insert_calls(connection: Connection, created: Sequence[CallRecord], server: bool) -> None:
    """Insert the new calls, level by level of the transfer trees being created, so a parent is
    in before its legs (a foreign key is checked per statement, on MySQL per row). On SQLite an
    INSERT names only the columns with a value (a placeholder has few), rows naming the same
    ones in one statement; on a server every column, so that one statement per level inserts
    its rows in call-id order (see `write_calls`)."""
    levels: dict[str, int] = {}
    groups: dict[tuple[int, tuple[str, ...]], list[dict[str, Any]]] = {}
    for after in _parents_first(created):
        parent_level = levels.get(after.parent_call_id) if after.parent_call_id else None
        level = levels[after.call_id] = 0 if parent_level is None else parent_level + 1
        row = {
            name: value
            for name, value in zip(_RECORD_FIELDS, lifecycle.facts_of(after), strict=True)
            if server or value is not None
        }
        row["version"] = 1
        groups.setdefault((level, tuple(row)), []).append(row)
    for (_level, present), rows in sorted(groups.items(), key=lambda group: group[0][0]):
        if server:
            rows.sort(key=lambda row: str(row["call_id"]))
        compiled = _hot(connection, _insert_call, present)
        driver.run(connection, compiled, rows[0] if len(rows) == 1 else rows)


def _compare_and_set(
    connection: Connection, statement: driver.Compiled, rows: list[dict[str, Any]]
) -> int:
    """Run a compare-and-set UPDATE for every row; how many rows matched their version."""
    if connection.dialect.supports_sane_multi_rowcount or len(rows) == 1:
        cursor = driver.run(connection, statement, rows[0] if len(rows) == 1 else rows)
        return int(cursor.rowcount)
    matched = 0
    for row in rows:
        matched += int(driver.run(connection, statement, row).rowcount)
    return matched


def _values(record: CallRecord) -> dict[str, Any]:
    return dict(zip(_RECORD_FIELDS, lifecycle.facts_of(record), strict=True))


def _parents_first(records: Sequence[CallRecord]) -> list[CallRecord]:
    """MySQL checks a foreign key row by row, so a parent inserted in the same statement as its
    leg must come first."""
    pending = {record.call_id: record for record in records}
    ordered: list[CallRecord] = []

    def place(record: CallRecord, path: set[str]) -> None:
        if record.call_id not in pending or record.call_id in path:
            return
        parent_id = record.parent_call_id
        if parent_id is not None and parent_id in pending:
            place(pending[parent_id], path | {record.call_id})
        if record.call_id in pending:
            ordered.append(pending.pop(record.call_id))

    for record in records:
        place(record, set())
    return ordered


def insert_transfers(
    connection: Connection, attempts: Sequence[tuple[str, int, TransferAttempt, str]]
) -> None:
    """Each (call id, id of the delivery, the attempt, the delivery's content key)."""
    rows = [
        {
            **dict(zip(_ATTEMPT_FIELDS, _attempt_facts(attempt), strict=True)),
            "call_id": call_id,
            "event_id": event_id,
            "sort_key": key,
        }
        for call_id, event_id, attempt, key in attempts
    ]
    if rows:
        compiled = _hot(connection, _insert_transfer)
        driver.run(connection, compiled, rows[0] if len(rows) == 1 else rows)


def fill_account(connection: Connection, call_id: str, account_id: str) -> None:
    """Give `account_id` to every call of `call_id`'s transfer tree that has no account yet.

    Each row is compare-and-set on the version the tree walk read: a leg attached to the tree
    by another writer meanwhile bumps its parent, so one of the two retries and no call of the
    tree is left without the account. Raises `LostRaceError` when that happens."""
    tree = _tree_of(connection, call_id)
    rows = [
        {"b_call_id": tree_call_id, "expected_version": version, "account_id": account_id}
        for tree_call_id, (account, version) in sorted(tree.items())
        if account is None
    ]
    fill = _hot(connection, _fill_account)
    if rows and _compare_and_set(connection, fill, rows) != len(rows):
        raise LostRaceError("a call of the transfer tree changed while its account was filled")


def _tree_of(connection: Connection, call_id: str) -> dict[str, tuple[str | None, int]]:
    """Every call of the tree `call_id` belongs to, with its account and version."""
    tree: dict[str, tuple[str | None, int]] = {}
    walked: set[str] = set()  # the ids whose parent and legs were asked for
    frontier = [call_id]
    while frontier:
        walked.update(frontier)
        found: set[str] = set()
        for chunk in _chunks(frontier):
            rows = connection.execute(_SELECT_TREE_STEP, {"call_ids": chunk})
            for row in rows:
                tree[row.call_id] = (row.account_id, row.version)
                found.update(x for x in (row.call_id, row.parent_call_id) if x is not None)
        frontier = sorted(found - walked)
    return tree


# --- rebuild: the log read in pages, the calls walked in pages ---------------------------------


def where_applied_bodies(
    connection: Connection, after_id: int, up_to_id: int, limit: int
) -> list[tuple[int, bytes, str | None, str | None]]:
    """(id, body, origin, event type) of the next `limit` applied deliveries with
    `after_id < id <= up_to_id`, by id: a page of the log for a replay, read by primary key
    whatever the log's size."""
    query = (
        select(events.c.id, events.c.body, events.c.origin, events.c.event_type)
        .where(
            events.c.outcome == Outcome.APPLIED.value,
            events.c.id > after_id,
            events.c.id <= up_to_id,
        )
        .order_by(events.c.id)
        .limit(limit)
    )
    return [
        (int(row.id), bytes(row.body), row.origin, row.event_type)
        for row in connection.execute(query)
    ]


def count_applied(connection: Connection, up_to_id: int) -> int:
    query = select(func.count()).where(
        events.c.outcome == Outcome.APPLIED.value, events.c.id <= up_to_id
    )
    return int(connection.execute(query).scalar_one())


def applied_after(connection: Connection, event_id: int) -> bool:
    """Whether a delivery logged after `event_id` was applied (read along the primary key)."""
    query = (
        select(events.c.id)
        .where(events.c.id > event_id, events.c.outcome == Outcome.APPLIED.value)
        .limit(1)
    )
    return connection.execute(query).first() is not None


def where_not_applied_ids(connection: Connection) -> list[int]:
    query = select(events.c.id).where(text(NOT_APPLIED)).order_by(events.c.id)
    return [int(event_id) for event_id in connection.execute(query).scalars()]


def page_call_ids(connection: Connection, after: str | None, limit: int) -> list[str]:
    """The next `limit` call ids after `after`, in the database's own order of ids."""
    query = select(calls.c.call_id).order_by(calls.c.call_id).limit(limit)
    if after is not None:
        query = query.where(calls.c.call_id > after)
    return list(connection.execute(query).scalars())


def where_transfer_rows(
    connection: Connection, call_ids: Iterable[str]
) -> dict[str, list[tuple[TransferAttempt, int, str]]]:
    """Each call's transfer attempts as `where_transfers` orders them, with the id of the
    delivery that told each and its content key."""
    found: dict[str, list[tuple[TransferAttempt, int, str]]] = {}
    for chunk in _chunks(list(dict.fromkeys(call_ids))):
        for row in connection.execute(_SELECT_TRANSFERS, {"call_ids": chunk}):
            attempt = TransferAttempt(*(getattr(row, name) for name in _ATTEMPT_FIELDS))
            found.setdefault(row.call_id, []).append((attempt, int(row.event_id), row.sort_key))
    return found


def delete_transfers(connection: Connection, call_ids: Sequence[str]) -> None:
    """Forget the transfer attempts of these calls: a rebuild writes them again."""
    for chunk in _chunks(call_ids):
        connection.execute(delete(transfers).where(transfers.c.call_id.in_(chunk)))


def _padded_chunks(items: list[_Item], most: int) -> Iterator[list[_Item]]:
    """`items` in chunks of at most `most` (a power of two), each padded to a power of two by
    repeating its last item (a look-up does not mind a repeat), so that a handful of compiled
    statements serve every size: a delivery's call and its parent, an `apply_many` of hundreds."""
    for start in range(0, len(items), most):
        chunk = items[start : start + most]
        size = 1 << (len(chunk) - 1).bit_length()
        yield chunk + chunk[-1:] * (size - len(chunk))


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
