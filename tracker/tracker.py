"""The facade: one transaction around parse -> decide -> store, retried when it loses a race."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from tracker import (
    exporting,
    feed,
    housekeeping,
    joining,
    lifecycle,
    parsing,
    rebuilding,
    statistics,
    storage,
)
from tracker.applying import apply_deliveries, expire_calls
from tracker.errors import (
    StorageError,
    check_account,
    check_choice,
    check_choices,
    check_limit,
    check_positive,
    check_text,
    check_window,
)
from tracker.records import (
    Call,
    CallStatistics,
    ChangesPage,
    Event,
    Outcome,
    RebuildReport,
    RedriveReport,
    Result,
    SchemaUpgrade,
    SweepReport,
)
from tracker.schema import check_current, upgrade_schema
from tracker.writing import Writer, is_transient, is_unavailable

DEFAULT_DATABASE_URL: Final = "sqlite:///tracker.db"
# The default of `timeout`, and of the command line's --timeout.
DEFAULT_TIMEOUT: Final = storage.DEFAULT_TIMEOUT
# The most entries `calls()` and `events()` list when given no limit: past it they refuse, and
# `iter_calls`/`iter_events` read any number, `PAGE_SIZE` at a time.
MAX_LISTED: Final = 10_000
PAGE_SIZE: Final = 1000

T = TypeVar("T")


class Tracker:
    """Follows Bandwidth calls in one database. Safe to share between threads; run one per
    process, as many processes and hosts as you like against the same database."""

    def __init__(
        self,
        database: str | URL | Engine | None = None,
        *,
        durable: bool = True,
        schema: str | None = None,
        max_attempts: int = 30,
        max_body_bytes: int = parsing.MAX_BODY_BYTES,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        """`database` is a URL or an Engine; None reads TRACKER_DATABASE_URL, else uses
        `sqlite:///tracker.db`. `durable=False` relaxes SQLite to `synchronous=NORMAL`: faster,
        and a power loss may forget the last deliveries (never corrupt the database).
        `schema` (PostgreSQL) keeps the tracker's tables in that schema, apart from the host's.
        `max_attempts` bounds the retries of a delivery that keeps losing races.
        `max_body_bytes`: a larger body is not parsed but logged as `invalid` (`too_large`),
        its first 64 KiB kept with its length and hash.
        `timeout` (seconds; None for no bound) bounds every wait of a delivery for a lock, a
        statement or a silent server: it then fails with `StorageError`, without retrying.

        An Engine of the host application is shared, not owned: `close()` leaves it open. A
        SQLite engine gets the same setup as one the tracker creates, for all its connections;
        a server engine keeps its own settings, the tracker's connections run READ COMMITTED
        (see the README for what `timeout` covers there). `schema` needs a URL."""
        if database is None:
            database = os.environ.get("TRACKER_DATABASE_URL", DEFAULT_DATABASE_URL)
        if isinstance(database, Engine):
            self.engine = storage.adopt_engine(
                database, durable=durable, schema=schema, timeout=timeout
            )
        else:
            self.engine = storage.create_engine(
                database, durable=durable, schema=schema, timeout=timeout
            )
        self._owns_engine = not isinstance(database, Engine)
        self._durable = durable
        self._timeout = timeout
        self._schema = schema
        self._max_body_bytes = max_body_bytes
        self._schema_checked = False
        self._writer = Writer(self.engine, owns_engine=self._owns_engine, max_attempts=max_attempts)

    def close(self) -> None:
        """Close the engine's pooled connections, unless the engine is the host's."""
        self._writer.close()
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def max_body_bytes(self) -> int:
        """The largest body parsed; a larger one is logged `invalid` (`too_large`). The webhook
        endpoint answers such a body `413` instead, unread."""
        return self._max_body_bytes

    # --- schema ---------------------------------------------------------------------------

    def upgrade(self) -> SchemaUpgrade:
        """Migrate the database to the schema this tracker needs. Safe to call again, and from
        many processes at once."""
        with _database_errors(), self._upgrading_engine() as engine:
            before, after = upgrade_schema(engine, self._schema)
        self._schema_checked = False
        return SchemaUpgrade(before, after)

    @contextmanager
    def _upgrading_engine(self) -> Iterator[Engine]:
        """An upgrade waits for another's lock and may rewrite a large table: a delivery's
        `timeout` is no bound for it. A server engine the tracker made carries the bound in its
        sessions, so the upgrade gets an unbounded engine of its own."""
        if not self._owns_engine or self._timeout is None or self.engine.dialect.name == "sqlite":
            yield self.engine
            return
        engine = storage.create_engine(
            self.engine.url, durable=self._durable, schema=self._schema, timeout=None
        )
        try:
            yield engine
        finally:
            engine.dispose()

    def check(self) -> None:
        """Ask the database now whether it answers and its schema is current: `SchemaError` or
        `StorageError` when not. A health check calls this; deliveries check once, on first use."""
        with _database_errors():
            check_current(self.engine)
        self._schema_checked = True

    def _check_schema(self) -> None:
        if not self._schema_checked:
            self.check()

    # --- writing --------------------------------------------------------------------------

    def apply(
        self, body: bytes | str | object, *, connection: Connection | Session | None = None
    ) -> Result:
        """Apply one callback body. Never raises for bad input; raises `StorageError` only when
        the database failed, and then nothing of the body was written.

        `connection`: write inside the host's transaction on this Connection or Session instead,
        to commit or roll back with the host's rows; nothing is committed or retried, and a lost
        race raises `ConflictError` (see `tracker.joining`)."""
        if connection is not None:
            return self._in_host_transaction(connection, [body])[0]
        self._check_schema()
        delivery = parsing.read(body, self._max_body_bytes)
        received_at = datetime.now(UTC)
        return self._writer.run(lambda c: apply_deliveries(c, [delivery], received_at)[0])

    def apply_many(
        self,
        bodies: Iterable[bytes | str | object],
        *,
        connection: Connection | Session | None = None,
    ) -> list[Result]:
        """Apply bodies in order in one transaction: the outcomes of applying them one by one,
        for one commit. `connection`: in the host's transaction, as for `apply`."""
        if connection is not None:
            return self._in_host_transaction(connection, bodies)
        return self._apply_many(bodies)

    def _in_host_transaction(
        self, given: Connection | Session, bodies: Iterable[bytes | str | object]
    ) -> list[Result]:
        connection = joining.host_connection(given, self.engine)
        deliveries = [parsing.read(body, self._max_body_bytes) for body in bodies]
        received_at = datetime.now(UTC)
        return joining.apply_in_savepoint(
            connection,
            lambda c: apply_deliveries(c, deliveries, received_at),
            is_lost_race=is_transient,
            subject="these deliveries" if len(deliveries) > 1 else "this delivery",
        )

    def _apply_many(
        self, bodies: Iterable[bytes | str | object], origin: str | None = None
    ) -> list[Result]:
        self._check_schema()
        deliveries = [parsing.read(body, self._max_body_bytes) for body in bodies]
        received_at = datetime.now(UTC)
        return self._writer.run(
            lambda c: apply_deliveries(c, deliveries, received_at, origin),
            subject="these deliveries" if len(deliveries) > 1 else "this delivery",
        )

    # --- reading --------------------------------------------------------------------------

    def get_call(self, call_id: str) -> Call | None:
        self._check_schema()
        with _database_errors(), _one_moment(self.engine) as connection:
            record = storage.find_call(connection, call_id)
            return None if record is None else _snapshots(connection, [record])[0]

    def calls(
        self,
        *,
        state: str | Sequence[str] | None = None,
        disposition: str | None = None,
        account_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        limit: int | None = None,
    ) -> list[Call]:
        """Calls matching every filter given, by start time, then id (placeholders, with none,
        last). `state` is one state or several: `calls(state=LIVE_STATES)` lists the calls
        ringing or talking now. `started_after <= start_time < started_before` (aware
        datetimes). At most `limit` calls; with no limit, every match, and a `ValueError` when
        more than `MAX_LISTED` match, so a list never outgrows memory unnoticed: read those with
        `iter_calls`, a page at a time. Bad arguments raise `ValueError` at once."""
        filters = _CallFilters.checked(
            state, disposition, account_id, started_after, started_before
        )
        check_limit(limit)
        self._check_schema()
        with _database_errors(), _one_moment(self.engine) as connection:
            records = storage.where_calls(
                connection, **filters.arguments(), limit=_within_cap(limit)
            )
            _refuse_past_cap(records, limit, "calls", "iter_calls")
            return _snapshots(connection, records)

    def iter_calls(
        self,
        *,
        state: str | Sequence[str] | None = None,
        disposition: str | None = None,
        account_id: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Call]:
        """Every call `calls()` would list with these filters, in the same order, read
        `page_size` calls at a time, each page in a short read of its own: memory follows
        `page_size`, never the number of calls. Bad arguments raise `ValueError` at once."""
        filters = _CallFilters.checked(
            state, disposition, account_id, started_after, started_before
        )
        check_positive("page_size", page_size)
        self._check_schema()
        return _read_with_database_errors(self._call_pages(filters, page_size))

    def _call_pages(self, filters: _CallFilters, page_size: int) -> Iterator[Call]:
        after: tuple[datetime | None, str] | None = None
        while True:
            with _one_moment(self.engine) as connection:
                records = storage.where_calls(
                    connection, **filters.arguments(), after=after, limit=page_size
                )
                page = _snapshots(connection, records)
            yield from page
            if len(records) < page_size:
                return
            after = (records[-1].start_time, records[-1].call_id)

    def count_calls(self, *, state: str | Sequence[str] | None = None) -> int:
        """How many calls are in `state` (one or several; every call when None), counted by the
        database: `count_calls(state=LIVE_STATES)` is the number of calls ringing or talking."""
        states = _check_states(state)
        self._check_schema()
        with _database_errors(), self.engine.connect() as connection:
            return storage.count_calls(connection, state=states)

    def events(
        self,
        call_id: str | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """The event log, oldest first, of `call_id` and with `outcome` when given; `limit`
        keeps the newest entries. With no limit, every entry, and a `ValueError` when more than
        `MAX_LISTED` match: read those with `iter_events`, a page at a time. Bad arguments raise
        `ValueError` at once."""
        _check_event_filters(call_id, outcome)
        check_limit(limit)
        self._check_schema()
        with _database_errors(), self.engine.connect() as connection:
            found = storage.where_events(
                connection, call_id=call_id, outcome=outcome, limit=_within_cap(limit)
            )
        _refuse_past_cap(found, limit, "log entries", "iter_events")
        return found

    def iter_events(
        self,
        call_id: str | None = None,
        outcome: str | None = None,
        *,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Event]:
        """Every entry `events()` would list with these filters, oldest first, read `page_size`
        entries at a time, each page in a short read of its own along the log's primary key:
        memory follows `page_size`, never the size of the log. Bad arguments raise `ValueError`
        at once."""
        _check_event_filters(call_id, outcome)
        check_positive("page_size", page_size)
        self._check_schema()
        return _read_with_database_errors(self._event_pages(call_id, outcome, page_size))

    def _event_pages(
        self, call_id: str | None, outcome: str | None, page_size: int
    ) -> Iterator[Event]:
        after_id = 0
        while True:
            with self.engine.connect() as connection:
                page = storage.where_events(
                    connection, call_id=call_id, outcome=outcome, after_id=after_id, limit=page_size
                )
            yield from page
            if len(page) < page_size:
                return
            after_id = page[-1].id

    # --- calls out ------------------------------------------------------------------------

    def export(
        self,
        *,
        per: str = exporting.PER_LEG,
        since: datetime | None = None,
        until: datetime | None = None,
        account_id: str | None = None,
        batch_size: int = exporting.EXPORT_BATCH_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Call detail records: one dict per call (`per="leg"`) or per original call with its
        transfer legs folded in (`per="conversation"`), keys in the order of
        `tracker.exporting.columns(per)`, by start time then id. Only calls that started in
        [since, until) (aware datetimes) and of `account_id` when given; placeholders (no start
        time yet) come last, and only when neither bound is given. Read `batch_size` calls at a
        time, each page in a short read of its own, so memory stays bounded whatever the number
        of calls (see `tracker.exporting`). Bad arguments raise ValueError at once."""
        self._check_schema()
        rows = exporting.export(
            self.engine,
            per=per,
            since=since,
            until=until,
            account_id=account_id,
            batch_size=batch_size,
        )
        return _read_with_database_errors(rows)

    def changes(self, after: str | None = None, limit: int = 1000) -> ChangesPage:
        """The applied deliveries after the cursor `after` (None: from the beginning of the
        log), at most `limit` of them, each with its call, and the cursor to pass next time.
        Keeping the cursor, a consumer sees every applied delivery at least once and never skips
        one, however many workers commit in whatever order (see `tracker.feed`). A cursor this
        tracker did not give raises `ValueError`."""
        self._check_schema()
        with _database_errors():
            return feed.changes(self.engine, after, limit, _snapshots)

    def stats(
        self,
        *,
        by: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        account_id: str | None = None,
        now: datetime | None = None,
    ) -> list[CallStatistics]:
        """Attempts, answers, ASR, ACD, ring time, dispositions, causes and peak concurrency of
        the calls that started in `since <= start_time < until` (aware datetimes; None leaves
        that side open), of `account_id` when given, in one bucket, or one per UTC `hour` or
        `day` or per `account` (`by`), counted by the database. Hours, days and accounts without
        an attempt are left out; `by=None` always gives one row. Live calls count as up until
        `now` (default: the current time). What each figure counts is in the README
        ("Statistics")."""
        window = statistics.Window(
            by, since, until, account_id, datetime.now(UTC) if now is None else now
        )
        self._check_schema()
        with _database_errors(), self.engine.connect() as connection:
            return statistics.statistics(connection, window)

    # --- housekeeping -----------------------------------------------------------------------

    def sweep(
        self,
        older_than: timedelta,
        *,
        now: datetime | None = None,
        resolve: housekeeping.Resolve | None = None,
        batch_size: int = housekeeping.SWEEP_BATCH_SIZE,
    ) -> SweepReport:
        """End every live call (`initiated` or `answered`, placeholders included) last heard of
        more than `older_than` before `now` (default: the current time): its terminal event was
        lost. Each becomes `disconnected`, disposition `expired`, no cause, `swept_at` set, with
        a history step and a log entry of its own; a real terminal event arriving later replaces
        the sweep entirely. `resolve(call)` may return a body (built, say, from Bandwidth's call
        state API) to apply instead, logged with origin `sweep`; None lets the sweep expire the
        call. Safe while other processes apply (see `tracker.housekeeping.sweep`)."""
        self._check_schema()
        run = partial(self._writer.run, subject="this batch of the sweep")
        with _database_errors():
            return housekeeping.sweep(
                self.engine,
                run,
                self.get_call,
                partial(self._apply_many, origin=parsing.SWEEP_ORIGIN),
                older_than,
                now=datetime.now(UTC) if now is None else now,
                resolve=resolve,
                batch_size=batch_size,
            )

    def prune(self, before: datetime, *, batch_size: int = housekeeping.PRUNE_BATCH_SIZE) -> int:
        """Delete the log entries received before `before` (an aware datetime); how many were
        deleted. Calls, their history and transfer attempts stay; deliveries applied meanwhile
        never wait long (see `tracker.housekeeping.prune`). What a pruned log can no longer do
        is in the README."""
        self._check_schema()
        run = partial(self._writer.run, subject="this batch of the prune")
        with _database_errors():
            return housekeeping.prune(self.engine, run, before, batch_size=batch_size)

    def redrive(
        self,
        outcome: str,
        *,
        reason: str | None = None,
        call_id: str | None = None,
        batch_size: int = housekeeping.REDRIVE_BATCH_SIZE,
    ) -> RedriveReport:
        """Apply again the logged deliveries that came out `outcome` (`rejected` or `invalid`),
        with that `reason` and about that call when given: after an upgrade that accepts more,
        or once the calls they met changed. Each new outcome is a new log entry; the entries
        re-driven stay as they were (see `tracker.housekeeping.redrive`)."""
        self._check_schema()
        with _database_errors():
            return housekeeping.redrive(
                self.engine,
                self.apply_many,
                outcome,
                reason=reason,
                call_id=call_id,
                batch_size=batch_size,
            )

    def rebuild(self, *, apply: bool = False) -> RebuildReport:
        """Recompute every call from the event log and report the calls whose live record
        differs; `apply=True` also writes the recomputed records of those calls, in batches,
        each by compare-and-set, and stops when deliveries arrive meanwhile (see
        `tracker.rebuilding`). The replay goes into a temporary SQLite file (in TMPDIR), about
        the size of the applied part of the log."""
        self._check_schema()
        with (
            _database_errors(),
            tempfile.TemporaryDirectory(prefix="tracker-rebuild-") as folder,
            Tracker(
                f"sqlite:///{folder}/replay.db",
                durable=False,
                timeout=None,
                max_body_bytes=self._max_body_bytes,
            ) as scratch,
        ):
            scratch.upgrade()
            write = partial(self._writer.run, subject="this batch of the rebuild")
            return rebuilding.rebuild(
                self.engine, scratch, scratch._replay_sweep, write if apply else None
            )

    def _replay_sweep(self, entry: parsing.SweepEntry) -> None:
        """Replay one sweep's log entry here (a rebuild's scratch tracker)."""
        self._writer.run(
            partial(
                expire_calls,
                call_ids=[entry.call_id],
                swept_at=entry.swept_at,
                cutoff=None,
                replaying=True,
            )
        )


@dataclass(frozen=True, slots=True)
class _CallFilters:
    """The filters of `calls` and `iter_calls`, checked once for both."""

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
    ) -> _CallFilters:
        states = _check_states(state)
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


def _check_states(state: object) -> list[str] | None:
    """One state or a non-empty list of them. `live` is no state a call is in: the calls
    ringing or talking are asked for by their two states (`LIVE_STATES`), as they are stored."""
    if state == "live":
        raise ValueError(
            "state='live' is not a state: pass state=LIVE_STATES (initiated and answered, "
            "`from tracker import LIVE_STATES`) for the calls ringing or talking now"
        )
    return check_choices("state", state, lifecycle.STATES)


def _check_event_filters(call_id: object, outcome: object) -> None:
    check_text("call_id", call_id)
    if outcome is not None:
        check_choice("outcome", outcome, [outcome.value for outcome in Outcome])


def _within_cap(limit: int | None) -> int:
    """The rows a list reads: `limit`, or one more than `MAX_LISTED` to tell it was passed."""
    return MAX_LISTED + 1 if limit is None else limit


def _refuse_past_cap(found: Sequence[object], limit: int | None, what: str, paged: str) -> None:
    if limit is None and len(found) > MAX_LISTED:
        raise ValueError(
            f"more than {MAX_LISTED:,} {what} match, more than a list should hold in memory: "
            f"pass limit=N for the first N, or read them all with `{paged}(...)`, a page at a time"
        )


@contextmanager
def _one_moment(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see the database at one moment, for a snapshot read with
    several statements (`_snapshots`): one transaction, REPEATABLE READ on the servers (where
    the tracker's READ COMMITTED gives each statement a moment of its own), and on SQLite a read
    transaction, which in WAL sees one snapshot from its first read. The pool resets the
    isolation level when the connection returns."""
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def _snapshots(connection: Connection, records: Sequence[lifecycle.CallRecord]) -> list[Call]:
    """The `Call` of each record, in the same order. Legs, transfers and inherited applications
    are read for all the records at once, so any number of calls costs a few statements: read
    them on a connection of `_one_moment`, so that they never mix two moments."""
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
        )
        for record in records
    ]


def _read_with_database_errors(items: Iterator[T]) -> Iterator[T]:
    """`items`, read lazily, failing as `StorageError` as a read does (`_database_errors`)."""
    with _database_errors():
        yield from items


@contextmanager
def _database_errors() -> Iterator[None]:
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
