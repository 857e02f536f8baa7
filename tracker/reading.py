"""Reading calls as `Call` snapshots and the log a page at a time: the filters of
`Tracker.calls` and `Tracker.events`, a read at one moment, and the failures of a read told as
`StorageError`.

Part of the storage stage, used by the facade, the feed and the sweep: a snapshot reads a
call's legs, transfers and inherited application with statements of its own, so every reader
of snapshots takes them from here rather than assembling them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tracker import lifecycle, storage
from tracker.errors import (
    StorageError,
    check_account,
    check_choice,
    check_choices,
    check_text,
    check_window,
)
from tracker.records import Call, Event, Outcome
from tracker.writing import is_unavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallFilters:
    """The filters of `Tracker.calls` and `Tracker.iter_calls`, checked once for both."""

    state: list[str] | None
    disposition: str | None
    account_id: str | None
    started_after: datetime | None
    started_before: datetime | None

    @classmethod
    def checked(
        cls,
        state: object,
        disposition: object,
        account_id: object,
        started_after: object,
        started_before: object,
    ) -> CallFilters:
        states = check_states(state)
        if disposition is not None:
            check_choice("disposition", disposition, lifecycle.ALL_DISPOSITIONS)
        check_account(account_id)
        check_window(started_after, started_before, ("started_after", "started_before"))
        return cls(
            states,
            cast(str | None, disposition),
            cast(str | None, account_id),
            cast(datetime | None, started_after),
            cast(datetime | None, started_before),
        )

    def arguments(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "disposition": self.disposition,
            "account_id": self.account_id,
            "started_after": self.started_after,
            "started_before": self.started_before,
        }


def check_states(state: object) -> list[str] | None:
    """One state or a non-empty list of them. `live` is no state a call is in: the calls
    ringing or talking are asked for by their two states (`LIVE_STATES`), as they are stored."""
    if state == "live":
        raise ValueError(
            "state='live' is not a state: pass state=LIVE_STATES (initiated and answered, "
            "`from tracker import LIVE_STATES`) for the calls ringing or talking now"
        )
    return check_choices("state", state, lifecycle.STATES)


def check_event_filters(call_id: object, outcome: object) -> None:
    """The filters of `Tracker.events` and `Tracker.iter_events`: a call id, an outcome."""
    check_text("call_id", call_id)
    if outcome is not None:
        check_choice("outcome", outcome, [outcome.value for outcome in Outcome])


def call_pages(engine: Engine, filters: CallFilters, page_size: int) -> Iterator[Call]:
    """The calls matching `filters` in start-time order, `page_size` at a time, each page read
    at one moment of its own (`one_moment`), the next page starting after the last call read."""
    after: tuple[datetime | None, str] | None = None
    while True:
        with one_moment(engine) as connection:
            records = storage.where_calls(
                connection, **filters.arguments(), after=after, limit=page_size
            )
            page = snapshots(connection, records)
        yield from page
        if len(records) < page_size:
            return
        after = (records[-1].start_time, records[-1].call_id)


def event_pages(
    engine: Engine, call_id: str | None, outcome: str | None, page_size: int
) -> Iterator[Event]:
    """The log entries of `call_id` and with `outcome` when given, oldest first, `page_size` at
    a time, each page a short read of its own along the log's primary key."""
    after_id = 0
    while True:
        with engine.connect() as connection:
            page = storage.where_events(
                connection, call_id=call_id, outcome=outcome, after_id=after_id, limit=page_size
            )
        yield from page
        if len(page) < page_size:
            return
        after_id = page[-1].id


def get_call(engine: Engine, call_id: str) -> Call | None:
    """The snapshot of one call, or None when the database has no such call."""
    with one_moment(engine) as connection:
        record = storage.find_call(connection, call_id)
        return None if record is None else snapshots(connection, [record])[0]


@contextmanager
def one_moment(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see the database at one moment, for a snapshot read with
    several statements (`snapshots`): one transaction, REPEATABLE READ on the servers (where
    the tracker's READ COMMITTED gives each statement a moment of its own), and on SQLite a read
    transaction, which in WAL sees one snapshot from its first read. The pool resets the
    isolation level when the connection returns."""
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def snapshots(connection: Connection, records: Sequence[lifecycle.CallRecord]) -> list[Call]:
    """The `Call` of each record, in the same order. Legs, transfers and inherited applications
    are read for all the records at once, so any number of calls costs a few statements: read
    them on a connection of `one_moment`, so that they never mix two moments."""
    call_ids = [record.call_id for record in records]
    legs = storage.where_legs(connection, call_ids)
    transfers = storage.where_transfers(connection, call_ids)
    applications = storage.where_applications(connection, records)
    return [
        Call(
            call_id=record.call_id,
            parent_call_id=record.parent_call_id,
            legs=tuple(
                leg_id
                for leg_id, _start in sorted(
                    legs.get(record.call_id, ()), key=lambda leg: lifecycle.leg_order(*leg)
                )
            ),
            account_id=record.account_id,
            application_id=applications[record.call_id],
            direction=record.direction,
            from_number=record.from_number,
            to_number=record.to_number,
            state=record.state,
            cause=record.cause,
            disposition=record.disposition,
            start_time=record.start_time,
            answer_time=record.answer_time,
            end_time=record.end_time,
            enqueued_time=record.enqueued_time,
            tag=record.tag,
            error_message=record.error_message,
            error_id=record.error_id,
            history=record.history,
            machine_detection=record.machine_detection,
            attestation=record.attestation,
            verstat=record.verstat,
            diversion=record.diversion,
            caller_display_name=record.caller_display_name,
            transfers=tuple(transfers.get(record.call_id, ())),
            swept_at=record.swept_at,
            end_source=record.end_source,
        )
        for record in records
    ]


def read_with_database_errors(items: Iterator[T]) -> Iterator[T]:
    """`items`, read lazily, failing as `StorageError` as a read does (`database_errors`)."""
    with database_errors():
        yield from items


@contextmanager
def database_errors() -> Iterator[None]:
    """Reads and upgrades fail as `StorageError` too, so a caller handles one error type."""
    try:
        yield
    except DBAPIError as error:
        raise StorageError(
            f"the database failed: {error.orig}", unavailable=is_unavailable(error)
        ) from error
    except PoolTimeoutError as error:
        raise StorageError(
            f"no database connection became free in time: {error}", unavailable=True
        ) from error
