"""The facade: one transaction around parse -> decide -> store, retried when it loses a race."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from tracker import (
    exporting,
    feed,
    housekeeping,
    instants,
    joining,
    parsing,
    rebuilding,
    reconciling,
    statistics,
    storage,
)
from tracker.applying import apply_bodies
from tracker.billing import BillingPolicy, billing_policy
from tracker.errors import check_instant, check_limit, check_positive, check_text, check_window
from tracker.provider import PROVIDER_ORIGIN
from tracker.reading import (
    CallFilters,
    call_pages,
    check_event_filters,
    check_states,
    database_errors,
    event_pages,
    get_call,
    one_moment,
    read_with_database_errors,
    snapshots,
)
from tracker.reconciling import CallLister, OnPage, ReconcileReport
from tracker.records import (
    Call,
    CallStatistics,
    ChangesPage,
    Event,
    RebuildReport,
    RedriveReport,
    Result,
    SchemaUpgrade,
    SweepReport,
)
from tracker.schema import check_current, upgrade_schema
from tracker.writing import MAX_ATTEMPTS, Writer

DEFAULT_DATABASE_URL: Final = "sqlite:///tracker.db"
# The default of `timeout`, and of the command line's --timeout.
DEFAULT_TIMEOUT: Final = storage.DEFAULT_TIMEOUT
# The most entries `calls()` and `events()` list when given no limit: past it they refuse, and
# `iter_calls`/`iter_events` read any number, `PAGE_SIZE` at a time.
MAX_LISTED: Final = 10_000
PAGE_SIZE: Final = 1000


class Tracker:
    """Follows Bandwidth calls in one database. Safe to share between threads; run one per
    process, as many processes and hosts as you like against the same database."""

    def __init__(
        self,
        database: str | URL | Engine | None = None,
        *,
        durable: bool = True,
        schema: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        max_body_bytes: int = parsing.MAX_BODY_BYTES,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        """`database` is a URL or an Engine (None: TRACKER_DATABASE_URL, else
        `sqlite:///tracker.db`); a host's Engine is shared, not owned. `durable=False` relaxes
        SQLite's syncing, `schema` (PostgreSQL) names the tables' schema, `max_attempts` bounds
        the retries of a delivery losing races, a body over `max_body_bytes` is logged
        `invalid` (`too_large`) unparsed, and `timeout` (seconds) bounds every wait of a
        delivery, which then fails with `StorageError`."""
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
        with database_errors(), self._upgrading_engine() as engine:
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
        with database_errors():
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
        the database failed, and then nothing of the body was written. `connection`: write
        inside the host's transaction on this Connection or Session instead, committing and
        retrying nothing (a lost race raises `ConflictError`)."""
        if connection is not None:
            return joining.apply_in_host_transaction(
                connection, self.engine, [body], self._max_body_bytes
            )[0]
        self._check_schema()
        return apply_bodies(self._writer, [body], self._max_body_bytes)[0]

    def apply_many(
        self,
        bodies: Iterable[bytes | str | object],
        *,
        connection: Connection | Session | None = None,
    ) -> list[Result]:
        """Apply bodies in order in one transaction: the outcomes of applying them one by one,
        for one commit. `connection`: in the host's transaction, as for `apply`."""
        if connection is not None:
            return joining.apply_in_host_transaction(
                connection, self.engine, bodies, self._max_body_bytes
            )
        self._check_schema()
        return apply_bodies(self._writer, bodies, self._max_body_bytes)

    def apply_call_states(self, documents: Iterable[bytes | str | object]) -> list[Result]:
        """Apply what Bandwidth's call state API says of calls (`GET .../calls/{callId}`, as
        received; a terminal callback built from it is read the same way) in one transaction:
        a call it says disconnected ends with its facts as the provider's end (`end_source`
        `provider`), logged with origin `provider`. Below every callback: a terminal callback,
        before or after, wins, and one ended by its callback is left as it is (`ignored`)."""
        self._check_schema()
        return apply_bodies(self._writer, documents, self._max_body_bytes, PROVIDER_ORIGIN)

    # --- reading --------------------------------------------------------------------------

    def get_call(self, call_id: str) -> Call | None:
        """The call `call_id`, or None when the tracker never heard of it."""
        self._check_schema()
        with database_errors():
            return get_call(self.engine, call_id)

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
        """Calls matching every filter given (`state`: one or several, e.g. `LIVE_STATES`;
        `started_after <= start_time < started_before`, aware datetimes), by start time, then
        id, placeholders last. At most `limit`; with none, a `ValueError` when more than
        `MAX_LISTED` match (read those with `iter_calls`). Bad arguments raise `ValueError`."""
        filters = CallFilters.checked(state, disposition, account_id, started_after, started_before)
        check_limit(limit)
        self._check_schema()
        with database_errors(), one_moment(self.engine) as connection:
            records = storage.where_calls(
                connection, **filters.arguments(), limit=_within_cap(limit)
            )
            _refuse_past_cap(records, limit, "calls", "iter_calls")
            return snapshots(connection, records)

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
        filters = CallFilters.checked(state, disposition, account_id, started_after, started_before)
        check_positive("page_size", page_size)
        self._check_schema()
        return read_with_database_errors(call_pages(self.engine, filters, page_size))

    def count_calls(self, *, state: str | Sequence[str] | None = None) -> int:
        """How many calls are in `state` (one or several; every call when None), counted by the
        database: `count_calls(state=LIVE_STATES)` is the number of calls ringing or talking."""
        states = check_states(state)
        self._check_schema()
        with database_errors(), self.engine.connect() as connection:
            return storage.count_calls(connection, state=states)

    def events(
        self,
        call_id: str | None = None,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """The event log, oldest first, of `call_id` and with `outcome` when given; `limit`
        keeps the newest entries. With no limit, every entry, and a `ValueError` when more than
        `MAX_LISTED` match: read those with `iter_events`. Bad arguments raise `ValueError`."""
        check_event_filters(call_id, outcome)
        check_limit(limit)
        self._check_schema()
        with database_errors(), self.engine.connect() as connection:
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
        entries at a time, each page in a short read of its own: memory follows `page_size`,
        never the size of the log. Bad arguments raise `ValueError` at once."""
        check_event_filters(call_id, outcome)
        check_positive("page_size", page_size)
        self._check_schema()
        return read_with_database_errors(event_pages(self.engine, call_id, outcome, page_size))

    # --- calls out ------------------------------------------------------------------------

    def export(
        self,
        *,
        per: str = exporting.PER_LEG,
        since: datetime | None = None,
        until: datetime | None = None,
        account_id: str | None = None,
        batch_size: int = exporting.EXPORT_BATCH_SIZE,
        billing: BillingPolicy | str | None = None,
        tz: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Call detail records, one dict per call (`per="leg"`) or per original call with its
        legs folded in (`per="conversation"`), keys in `tracker.exporting.columns(per)` order,
        of the calls that started in [since, until), by start time then id, read `batch_size`
        calls at a time (see `tracker.exporting`). With `billing` (a `BillingPolicy` or its text
        `"FIRST/NEXT"`), a last column `billable_seconds`. `tz` (an IANA zone name) gives every
        instant in that zone (default UTC). Bad arguments raise ValueError at once."""
        self._check_schema()
        rows = exporting.export(
            self.engine,
            per=per,
            since=since,
            until=until,
            account_id=account_id,
            batch_size=batch_size,
            billing=billing,
            tz=tz,
        )
        return read_with_database_errors(rows)

    def changes(self, after: str | None = None, limit: int = feed.DEFAULT_LIMIT) -> ChangesPage:
        """The applied deliveries after the cursor `after` (None: from the start), at most
        `limit`, each with its call, and the cursor to pass next: a consumer keeping it sees
        every applied delivery at least once, never skipping one (see `tracker.feed`). A
        cursor this tracker did not give raises `ValueError`."""
        self._check_schema()
        with database_errors():
            return feed.changes(self.engine, after, limit)

    def stats(
        self,
        *,
        by: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        account_id: str | None = None,
        now: datetime | None = None,
        billing: BillingPolicy | str | None = None,
        number_side: str = "to",
        top: int | None = None,
        tz: str | None = None,
    ) -> list[CallStatistics]:
        """Attempts, answers, ASR, ACD, ring time, dispositions, causes and peak concurrency of
        the calls that started in [since, until), of `account_id` when given, in one row or one
        per UTC `hour`, `day` or `account` (`by`), counted by the database; live calls count
        as up until `now` (see `tracker.statistics`). With `billing` (a `BillingPolicy` or
        `"FIRST/NEXT"`), the billable seconds too. `by="number"` gives one row per `to` number
        (`number_side="from"`: per calling number), most attempts first, the first `top`.
        `tz` (an IANA zone name) buckets hours and days by that zone's local time instead of
        UTC, DST included (docs/reporting.md); an unknown zone raises ValueError."""
        window = statistics.Window(
            by,
            since,
            until,
            account_id,
            datetime.now(UTC) if now is None else now,
            billing_policy(billing),
            number_side,
            top,
            tz=None if tz is None or tz == "UTC" else instants.zone(tz),
        )
        self._check_schema()
        with database_errors(), self.engine.connect() as connection:
            return statistics.statistics(connection, window)

    # --- housekeeping -----------------------------------------------------------------------

    def sweep(
        self,
        older_than: timedelta,
        *,
        now: datetime | None = None,
        resolve: housekeeping.Resolve | None = None,
        batch_size: int = housekeeping.SWEEP_BATCH_SIZE,
        should_stop: Callable[[], bool] | None = None,
    ) -> SweepReport:
        """End every live call last heard of more than `older_than` before `now` (its terminal
        event was lost): `disconnected`, disposition `expired`, `swept_at` set, until a real
        end replaces it. `resolve(call)` may return a body to apply instead (origin `sweep`).
        `should_stop()` returning True stops it between two transactions (a server stopping).
        Safe while other processes apply (see `tracker.housekeeping.sweep`)."""
        self._check_schema()
        with database_errors():
            return housekeeping.sweep(
                self._writer,
                older_than,
                now=datetime.now(UTC) if now is None else now,
                resolve=resolve,
                batch_size=batch_size,
                max_body_bytes=self._max_body_bytes,
                should_stop=should_stop,
            )

    def prune(self, before: datetime, *, batch_size: int = housekeeping.PRUNE_BATCH_SIZE) -> int:
        """Delete the log entries received before `before` (an aware datetime); how many were
        deleted. Calls, their history and transfer attempts stay; deliveries applied meanwhile
        never wait long (see `tracker.housekeeping.prune`)."""
        self._check_schema()
        with database_errors():
            return housekeeping.prune(self._writer, before, batch_size=batch_size)

    def redrive(
        self,
        outcome: str,
        *,
        reason: str | None = None,
        call_id: str | None = None,
        batch_size: int = housekeeping.REDRIVE_BATCH_SIZE,
    ) -> RedriveReport:
        """Apply again the logged deliveries that came out `outcome` (`rejected` or `invalid`),
        with that `reason` and about that call when given; each new outcome is a new log entry
        (see `tracker.housekeeping.redrive`)."""
        self._check_schema()
        with database_errors():
            return housekeeping.redrive(
                self._writer,
                outcome,
                reason=reason,
                call_id=call_id,
                batch_size=batch_size,
                max_body_bytes=self._max_body_bytes,
            )

    def rebuild(self, *, apply: bool = False) -> RebuildReport:
        """Recompute every call from the event log, in a temporary SQLite file, and report the
        calls whose live record differs; `apply=True` also writes those back by
        compare-and-set, stopping when deliveries arrive meanwhile (see `tracker.rebuilding`)."""
        self._check_schema()
        write = partial(self._writer.run, subject="this batch of the rebuild")
        with database_errors():
            return rebuilding.rebuild(
                self.engine, write if apply else None, max_body_bytes=self._max_body_bytes
            )

    def reconcile(
        self,
        since: datetime,
        until: datetime | None = None,
        *,
        account_id: str | None = None,
        apply: bool = False,
        client: CallLister | None = None,
        on_page: OnPage | None = None,
        now: datetime | None = None,
        batch_size: int = reconciling.RECONCILE_BATCH_SIZE,
    ) -> ReconcileReport:
        """Compare the calls Bandwidth lists as started in [since, until) (None: `now`) of
        `account_id` (None: BANDWIDTH_ACCOUNT_ID) with the tracker's, call by call, and count
        each status (`ReconcileStatus`); `on_page(page)` gets the calls that do not agree a
        page at a time, as they are found, so memory stays bounded for any window.
        `apply=True` applies Bandwidth's facts to the `missing` and `live_here` calls (never
        `differs`) as the provider's end, logged with origin `provider`; without it nothing is
        written. `client` lists Bandwidth's calls (None: `tracker.bandwidth`, configured from
        the environment). A `ProviderError` ends the run; what was applied before it stays
        (see `tracker.reconciling`)."""
        check_instant("since", since)
        if now is not None:
            check_instant("now", now)
        clock = datetime.now(UTC) if now is None else now
        check_window(since, clock if until is None else until)
        check_text("account_id", account_id)
        check_positive("batch_size", batch_size)
        with reconciling.lister_and_account(client) as (lister, default_account):
            account = reconciling.account_to_list(account_id, default_account)
            self._check_schema()
            with database_errors():
                return reconciling.reconcile(
                    self.engine,
                    lister,
                    since=since.astimezone(UTC),
                    until=(clock if until is None else until).astimezone(UTC),
                    account_id=account,
                    now=now,
                    apply_documents=self.apply_call_states if apply else None,
                    on_page=on_page,
                    batch_size=batch_size,
                )


def _within_cap(limit: int | None) -> int:
    """The rows a list reads: `limit`, or one more than `MAX_LISTED` to tell it was passed."""
    return MAX_LISTED + 1 if limit is None else limit


def _refuse_past_cap(found: Sequence[object], limit: int | None, what: str, paged: str) -> None:
    if limit is None and len(found) > MAX_LISTED:
        raise ValueError(
            f"more than {MAX_LISTED:,} {what} match, more than a list should hold in memory: "
            f"pass limit=N for the first N, or read them all with `{paged}(...)`, a page at a time"
        )
