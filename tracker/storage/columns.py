"""The column types: instants, JSON documents and a call's history, read back as written on
every backend."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json, to_json
from sqlalchemy import DateTime, Dialect, Text, TypeDecorator
from sqlalchemy.dialects import mysql

from tracker.errors import check_instant
from tracker.records import Transition


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
