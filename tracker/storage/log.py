"""The log: appending deliveries (`insert_events`), reading entries by filter and by page (the
change feed, the re-drive, a rebuild's replay) and deleting the old ones (`prune`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, Select, func, insert, or_, select, text
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.sql.elements import ClauseElement

from tracker.records import Event, Outcome
from tracker.storage import driver
from tracker.storage.statements import cached
from tracker.storage.tables import NOT_APPLIED, events

# The ids of a multi-row INSERT come back in no promised order; sorted, they are in the order of
# the rows, because every backend numbers the rows of one statement in order: a new SQLite row
# takes one more than the largest rowid, a PostgreSQL row the sequence's next value, a MariaDB
# row the next AUTO_INCREMENT. (`sort_by_parameter_order` would make SQLite send one INSERT per
# row.)
_INSERT_EVENTS_RETURNING: Final = insert(events).returning(events.c.id)

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
    # The partial index's own words, for SQLite's sake (see `_partial` in `tables`).
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


def insert_events(connection: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Append to the event log; the ids come back in the order of `rows`."""
    dialect = cast(DefaultDialect, connection.dialect)
    if len(rows) == 1 or not dialect.insert_executemany_returning:
        # `apply`; or a database that cannot return the ids of a many-row INSERT (MySQL 8 has no
        # INSERT ... RETURNING at all): one INSERT per row, each id its last row id.
        compiled = cached(connection, _insert_event, dialect.postfetch_lastrowid)
        return [_inserted_event_id(connection, compiled, row) for row in rows]
    if dialect.name == "sqlite" and rows:
        return _insert_events_on_sqlite(connection, rows)
    ids: list[int] = []
    for group in _by_statement_size(rows):
        result = connection.execute(_INSERT_EVENTS_RETURNING, group)
        ids.extend(sorted(int(event_id) for event_id in result.scalars()))
    return ids


def _select_last_row_id() -> tuple[ClauseElement, Sequence[str]]:
    return select(func.last_insert_rowid()), ()


def _insert_events_on_sqlite(connection: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """The rows in one `executemany` on the driver, a fraction of the cost of SQLAlchemy's
    multi-row INSERT ... RETURNING (which builds and binds one statement of hundreds of rows).
    Their ids follow from the last one: SQLite has one writer at a time, and a new row of the
    log (`AUTOINCREMENT`) takes one more than the largest id given, so the rows of one
    `executemany` take consecutive ids in their order."""
    driver.run(connection, cached(connection, _insert_event, True), rows)
    last_row_id = cached(connection, _select_last_row_id)
    last = int(driver.rows(last_row_id, driver.run(connection, last_row_id, {}))[0][0])
    return list(range(last - len(rows) + 1, last + 1))


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


# --- the log read in pages for a rebuild ------------------------------------------------------


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
