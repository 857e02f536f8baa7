"""The numbers of the calls (`Tracker.stats`): attempts, answers, ASR, ACD, ring time,
dispositions, causes and peak concurrency, per hour, day or account.

Everything is counted by the database, so the cost grows with the database and not with this
process: one grouped scan of the calls that started in the window, and one for concurrency,
whose running count of calls up is a window function. The backends disagree on how to subtract
two instants, how to cut one to its hour and how to read a bound one; `microseconds_between`,
`start_of_hour`, `start_of_day` and `bound_instant` say it once for each (SQLite keeps instants
as text, see `storage.UTCDateTime`), and tests/test_stats_figures.py holds every backend to the
figures counted in Python, equal to the last bit.

What counts as what (docs/statistics.md says it for users):

- An *attempt* is a call (a leg: a transferred leg is an attempt of its own, as it is a CDR of
  its own) whose `start_time` falls in the window, `since <= start_time < until`. A parent known
  only through its legs has no start time and is no attempt. A bucket is the UTC hour or day of
  the attempts' start (with `tz`, the local hour or day: see the end of this module), or their
  account.
- *answered*: attempts with an answer time; *live*: attempts not ended yet (no disposition);
  every disposition, `expired` included, and every cause are counted as stored.
- ACD is the mean of end - answer over the answered attempts that have an end time (calls
  talking now and calls the sweep expired have none); the mean ring time is the mean of
  answer - start over the answered attempts. Both are sums of whole microseconds, exact
  integers in the database, divided once here: the same float on every backend.
- A call is *up* on [start, end): from its start time, and no longer at its end time; a live
  call until `now`; an expired call, whose end nobody knows, until its last known time (its
  answer, else its start). The peak concurrency of a bucket is the most calls up at one instant
  of the bucket (within the window), counting calls that started before the bucket, or before
  the window, and were still up in it. A call that ends at the instant another starts, or a
  bucket starts, or `since` is, is not counted with it, nor in it.
- With `by="number"` a bucket is the call's `to` (or `from`) number, and each number has a
  running count of its own (the window function is partitioned by it); `top` ranks the numbers
  by attempts in the database first (`_top_numbers`) and counts only those.
- With a billing policy, the billable seconds of each attempt with a talk time are summed in the
  database by `tracker.billing.billable_seconds_sql`, in integers (docs/reporting.md).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Connection,
    Integer,
    Select,
    and_,
    case,
    func,
    literal,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.sqltypes import NullType

from tracker import lifecycle
from tracker.billing import BillingPolicy, billable_seconds_sql
from tracker.errors import check_account, check_instant, check_window
from tracker.records import CallStatistics
from tracker.storage.columns import UTCDateTime
from tracker.storage.tables import LONG_CALL, LONG_CALL_CONDITIONS, NOT_ENDED, calls

BY_CHOICES: Final = ("account", "hour", "day", "number")
# `by="number"` groups by the called (`to`) or calling (`from`) number of each call.
NUMBER_SIDES: Final = ("to", "from")
_BUCKET_LENGTH: Final = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


# --- instants, per dialect --------------------------------------------------------------------


class microseconds_between(FunctionElement[int]):  # noqa: N801 (used like a SQL function)
    """`later - earlier` in whole microseconds, an exact integer on every backend: the means
    are sums of these divided once, so every backend gives the same float to the last bit."""

    type = BigInteger()
    name = "microseconds_between"
    inherit_cache = True


@compiles(microseconds_between, "sqlite")
def _microseconds_between_sqlite(
    element: microseconds_between, compiler: SQLCompiler, **kw: Any
) -> str:
    # The text `YYYY-MM-DD HH:MM:SS.ffffff` (`storage.UTCDateTime` always writes six digits):
    # whole seconds from strftime of the first 19 characters, the fraction's digits from the
    # 21st on, both integers. strftime of the whole text rounds a fraction of .9995 up to the
    # next second, and julianday() keeps only milliseconds.
    earlier, later = (compiler.process(clause, **kw) for clause in element.clauses)

    def seconds(instant: str) -> str:
        return f"CAST(strftime('%s', substr({instant}, 1, 19)) AS INTEGER)"

    def fraction(instant: str) -> str:
        return f"CAST(substr({instant}, 21) AS INTEGER)"

    return (
        f"(({seconds(later)} - {seconds(earlier)}) * 1000000"
        f" + ({fraction(later)} - {fraction(earlier)}))"
    )


@compiles(microseconds_between, "postgresql")
def _microseconds_between_postgresql(
    element: microseconds_between, compiler: SQLCompiler, **kw: Any
) -> str:
    earlier, later = (compiler.process(clause, **kw) for clause in element.clauses)
    # EXTRACT gives a numeric (exact) since PostgreSQL 14; ROUND keeps an older server's
    # double precision from landing a microsecond short.
    return f"CAST(ROUND(EXTRACT(EPOCH FROM ({later}) - ({earlier})) * 1000000) AS BIGINT)"


@compiles(microseconds_between, "mysql")
@compiles(microseconds_between, "mariadb")
def _microseconds_between_mysql(
    element: microseconds_between, compiler: SQLCompiler, **kw: Any
) -> str:
    earlier, later = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"TIMESTAMPDIFF(MICROSECOND, {earlier}, {later})"


class bound_instant(FunctionElement[datetime]):  # noqa: N801
    """A bound instant of the columns' own type. MariaDB takes a bare parameter for text: in a
    CASE beside a DATETIME column the result is text, compared and ordered as text
    (`'...12:00:00.000000' > '...12:00:00'`), so an instant equal to a bound would be after it."""

    type = UTCDateTime()
    name = "bound_instant"
    inherit_cache = True


@compiles(bound_instant)
def _bound_instant(element: bound_instant, compiler: SQLCompiler, **kw: Any) -> str:
    (value,) = (compiler.process(clause, **kw) for clause in element.clauses)
    return value


@compiles(bound_instant, "mysql")
@compiles(bound_instant, "mariadb")
def _bound_instant_mysql(element: bound_instant, compiler: SQLCompiler, **kw: Any) -> str:
    (value,) = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST({value} AS DATETIME(6))"


class start_of_hour(FunctionElement[datetime]):  # noqa: N801
    """The instant cut to its UTC hour (instants are stored in UTC on every backend)."""

    type = UTCDateTime()
    name = "start_of_hour"
    inherit_cache = True


class start_of_day(FunctionElement[datetime]):  # noqa: N801
    """The instant cut to its UTC day."""

    type = UTCDateTime()
    name = "start_of_day"
    inherit_cache = True


# No bound parameter inside: a bucket is selected and grouped by, and PostgreSQL takes two
# placeholders for two different expressions. On SQLite, the leading characters of the instant's
# text `YYYY-MM-DD HH:MM:SS.ffffff` (`storage.UTCDateTime`), which `UTCDateTime` reads back: a
# cut costs far less than strftime's parse and print, on every row of the scan. The cut keeps
# the six digits of the fraction: instants are compared and ordered as text there, and
# `...12:00:00` would sort before the same instant stored as `...12:00:00.000000`.
_SQLITE_KEPT: Final = {
    start_of_hour: (13, ":00:00.000000"),
    start_of_day: (10, " 00:00:00.000000"),
}


@compiles(start_of_hour, "sqlite")
@compiles(start_of_day, "sqlite")
def _start_of_sqlite(
    element: start_of_hour | start_of_day, compiler: SQLCompiler, **kw: Any
) -> str:
    (instant,) = (compiler.process(clause, **kw) for clause in element.clauses)
    kept, rest = _SQLITE_KEPT[type(element)]
    return f"(substr({instant}, 1, {kept}) || '{rest}')"


@compiles(start_of_hour, "postgresql")
@compiles(start_of_day, "postgresql")
def _start_of_postgresql(
    element: start_of_hour | start_of_day, compiler: SQLCompiler, **kw: Any
) -> str:
    (instant,) = (compiler.process(clause, **kw) for clause in element.clauses)
    unit = "hour" if isinstance(element, start_of_hour) else "day"
    return f"date_trunc('{unit}', {instant})"


@compiles(start_of_hour, "mysql")
@compiles(start_of_hour, "mariadb")
def _start_of_hour_mysql(element: start_of_hour, compiler: SQLCompiler, **kw: Any) -> str:
    # No DATE_FORMAT: its `%` would have to be doubled for the driver's paramstyle.
    (instant,) = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(CAST(DATE({instant}) AS DATETIME) + INTERVAL HOUR({instant}) HOUR)"


@compiles(start_of_day, "mysql")
@compiles(start_of_day, "mariadb")
def _start_of_day_mysql(element: start_of_day, compiler: SQLCompiler, **kw: Any) -> str:
    (instant,) = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST(DATE({instant}) AS DATETIME)"


# --- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What `Tracker.stats` was asked: checked, so the queries below can trust it."""

    by: str | None
    since: datetime | None
    until: datetime | None
    account_id: str | None
    now: datetime
    billing: BillingPolicy | None = None
    number_side: str = "to"
    top: int | None = None
    # The zone whose local hours and days bucket the calls (None: UTC, as stored).
    tz: ZoneInfo | None = None
    # The local buckets' bounds as UTC instants, in order (`local_buckets`), when `tz` is set.
    boundaries: tuple[datetime, ...] | None = None

    def __post_init__(self) -> None:
        if self.by is not None and self.by not in BY_CHOICES:
            raise ValueError(
                f"by must be one of {', '.join(map(repr, BY_CHOICES))} or None; got {self.by!r}"
            )
        check_window(self.since, self.until)
        check_instant("now", self.now)
        check_account(self.account_id)
        if self.number_side not in NUMBER_SIDES:
            raise ValueError(f"number_side must be 'to' or 'from'; got {self.number_side!r}")
        if self.top is not None:
            if self.by != "number":
                raise ValueError('top keeps the first numbers: it needs by="number"')
            if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 1:
                raise ValueError(f"top must be a whole number of rows above 0; got {self.top!r}")


@dataclass
class _Tally:
    """One bucket's sums while the grouped rows are folded."""

    attempts: int = 0
    answered: int = 0
    live: int = 0
    talk_microseconds: int = 0
    talked: int = 0
    ring_microseconds: int = 0
    rang: int = 0
    dispositions: dict[str, int] = field(default_factory=dict)
    causes: dict[str, int] = field(default_factory=dict)
    end_sources: dict[str, int] = field(default_factory=dict)
    billable_seconds: int = 0
    answered_without_end: int = 0


def statistics(connection: Connection, window: Window) -> list[CallStatistics]:
    """The buckets of `window` that hold at least one attempt, in order (hours and days by
    time, accounts by id, the unknown account last); with `by=None`, always one bucket."""
    if window.tz is not None and window.by in _BUCKET_LENGTH:
        window = replace(window, boundaries=_window_boundaries(connection, window))
        if not window.boundaries:
            return []
    tallies: dict[Any, _Tally] = {}
    for row in connection.execute(_figures_query(window)):
        tally = tallies.setdefault(row.bucket, _Tally())
        attempts = int(row.attempts)
        tally.attempts += attempts
        tally.answered += int(row.answered)
        # Exact integers (a DECIMAL or NUMERIC sum on the servers): divided once, below.
        tally.talk_microseconds += int(row.talk_microseconds or 0)
        tally.talked += int(row.talked)
        tally.ring_microseconds += int(row.ring_microseconds or 0)
        tally.rang += int(row.rang)
        if row.disposition is None:
            tally.live += attempts
        else:
            _add(tally.dispositions, row.disposition, attempts)
        if row.cause is not None:
            _add(tally.causes, row.cause, attempts)
        if row.end_source is not None:
            _add(tally.end_sources, row.end_source, attempts)
        if window.billing is not None:
            tally.billable_seconds += int(row.billable_seconds or 0)
            tally.answered_without_end += int(row.answered_without_end)
    if window.by is None and not tallies:
        tallies[None] = _Tally()
    peaks = {row.bucket: int(row.peak or 0) for row in connection.execute(_peaks_query(window))}
    ordered = _ordered(tallies) if window.by != "number" else _by_attempts(tallies, window.top)
    return [
        _statistics(window, bucket, tallies[bucket], peaks.get(bucket, 0)) for bucket in ordered
    ]


def _by_attempts(tallies: dict[Any, _Tally], top: int | None) -> list[Any]:
    """Numbers by attempts, most first, then by number (no known number last); the first
    `top`. The database kept only the `top` numbers already (`_top_numbers`): this orders them."""
    ordered = sorted(
        tallies, key=lambda number: (-tallies[number].attempts, number is None, number or "")
    )
    return ordered if top is None else ordered[:top]


def _add(counts: dict[str, int], key: str, count: int) -> None:
    counts[key] = counts.get(key, 0) + count


def _ordered(buckets: Iterable[Any]) -> list[Any]:
    return sorted(buckets, key=lambda bucket: (bucket is None, bucket))


def _statistics(window: Window, bucket: Any, tally: _Tally, peak: int) -> CallStatistics:
    start: datetime | None
    end: datetime | None
    if window.tz is not None and window.by in _BUCKET_LENGTH:
        start, end = _local_bucket(window, bucket)
        account_id = window.account_id
    elif window.by in _BUCKET_LENGTH:
        start, end, account_id = bucket, bucket + _BUCKET_LENGTH[window.by], window.account_id
    elif window.by == "account":
        start, end, account_id = window.since, window.until, bucket
    else:
        start, end, account_id = window.since, window.until, window.account_id
    billing = window.billing
    return CallStatistics(
        start=start,
        end=end,
        account_id=account_id,
        attempts=tally.attempts,
        answered=tally.answered,
        live=tally.live,
        acd=_mean_seconds(tally.talk_microseconds, tally.talked),
        mean_ring_time=_mean_seconds(tally.ring_microseconds, tally.rang),
        dispositions=dict(sorted(tally.dispositions.items())),
        causes=dict(sorted(tally.causes.items())),
        peak_concurrent_calls=peak,
        end_sources=dict(sorted(tally.end_sources.items())),
        billable_seconds=None if billing is None else tally.billable_seconds,
        mean_billable_seconds=(
            None if billing is None or not tally.talked else tally.billable_seconds / tally.talked
        ),
        answered_without_end=None if billing is None else tally.answered_without_end,
        number=bucket if window.by == "number" else None,
    )


def _mean_seconds(microseconds: int, count: int) -> float | None:
    """One division of two integers, rounded once: the same float whatever summed them."""
    return microseconds / (count * 1_000_000) if count else None


def _bucket_of(
    by: str | None,
    instant: ColumnElement[Any],
    account: ColumnElement[Any] | None = None,
    number: ColumnElement[Any] | None = None,
    boundaries: tuple[datetime, ...] | None = None,
) -> ColumnElement[Any] | None:
    """What a row is grouped by: its hour, day, account or number; None for one bucket of
    everything. With `boundaries` (a zone's local hours or days), the UTC start of its local
    bucket."""
    if boundaries is not None and by in _BUCKET_LENGTH:
        return _utc_hours_or_bucket(instant, boundaries)
    if by == "number":
        assert number is not None
        return number
    if by == "hour":
        return start_of_hour(instant)
    if by == "day":
        return start_of_day(instant)
    if by == "account":
        assert account is not None
        return account
    return None


def _grouped(query: Select[Any], bucket: ColumnElement[Any] | None, *keys: Any) -> Select[Any]:
    """`query` with a `bucket` column, grouped by it and `keys`. One bucket of everything has no
    key of its own: PostgreSQL refuses `GROUP BY NULL`."""
    if bucket is None:
        return query.add_columns(literal_column("NULL").label("bucket")).group_by(*keys)
    return query.add_columns(bucket.label("bucket")).group_by(bucket, *keys)


def _figures_query(window: Window) -> Select[Any]:
    """The attempts grouped by bucket, disposition, cause and end source: one scan of the
    window's calls, folded into buckets by `statistics` (a bucket has a few dozen such groups
    at most)."""
    c = calls.c
    answered = c.answer_time.is_not(None)
    talked = and_(answered, c.end_time.is_not(None))
    # Counted by their conditions: SQLite would work a duration out again for its count.
    one: ColumnElement[int] = literal_column("1")
    query = select(
        c.disposition,
        c.cause,
        c.end_source,
        func.count().label("attempts"),
        func.count(c.answer_time).label("answered"),
        func.sum(case((talked, microseconds_between(c.answer_time, c.end_time)))).label(
            "talk_microseconds"
        ),
        func.count(case((talked, one))).label("talked"),
        func.sum(case((answered, microseconds_between(c.start_time, c.answer_time)))).label(
            "ring_microseconds"
        ),
        func.count(case((answered, one))).label("rang"),
    )
    if window.billing is not None:
        talk = microseconds_between(c.answer_time, c.end_time)
        query = query.add_columns(
            func.sum(case((talked, billable_seconds_sql(window.billing, talk)))).label(
                "billable_seconds"
            ),
            func.count(case((and_(answered, c.end_time.is_(None)), one))).label(
                "answered_without_end"
            ),
        )
    bucket = _bucket_of(
        window.by, c.start_time, c.account_id, _number_column(window), window.boundaries
    )
    return _grouped(_of_attempts(query, window), bucket, c.disposition, c.cause, c.end_source)


def _of_attempts(query: Select[Any], window: Window) -> Select[Any]:
    """`query` over the calls that are attempts of `window`: started in it, of its account."""
    c = calls.c
    query = query.where(c.start_time.is_not(None))
    if window.since is not None:
        query = query.where(c.start_time >= _instant(window.since))
    if window.until is not None:
        query = query.where(c.start_time < _instant(window.until))
    if window.account_id is not None:
        query = query.where(c.account_id == window.account_id)
    if window.top is not None:
        query = query.where(_number_column(window).in_(_top_numbers(window)))
    return query


def _number_column(window: Window) -> ColumnElement[Any]:
    """The number a call counts for with `by="number"`: its `to` or its `from`."""
    return calls.c.to_number if window.number_side == "to" else calls.c.from_number


def _top_numbers(window: Window) -> Select[Any]:
    """The `top` known numbers of the window by attempts (then by number), in the database.
    Selected again from a derived table: MariaDB takes no LIMIT in an IN subquery."""
    number = _number_column(window)
    ranked = (
        _of_attempts(select(number.label("number")), replace(window, top=None))
        .where(number.is_not(None))
        .group_by(number)
        .order_by(func.count().desc(), number)
        .limit(window.top)
        .subquery("top_numbers")
    )
    return select(ranked.c.number)


def _instant(value: datetime) -> ColumnElement[datetime]:
    return bound_instant(literal(value, UTCDateTime()))


def _peaks_query(window: Window) -> Select[Any]:
    """The peak concurrency of each bucket: a move of +1 at every start and -1 at every end,
    their running sum in time order (a window function: the calls up after each move), and its
    maximum per bucket.

    A call is up on [start, end). Calls that started before `since` and were still up after it
    count from `since`: their +1 moves there. Moves from `until` on are left out."""
    c = calls.c
    now = _instant(window.now)
    down = case(
        (c.end_time.is_not(None), c.end_time),
        # Live: up until now (a start after now, from a clock ahead of ours, makes it empty).
        (c.state != lifecycle.DISCONNECTED, case((c.start_time < now, now), else_=c.start_time)),
        # Expired by the sweep: known up until its last known time.
        else_=func.coalesce(c.answer_time, c.start_time),
    )
    # Calls up for no time are kept: their moves, +1 and -1 at one instant, put an attempt's
    # bucket among the moves, with the count of the calls up through it.
    by_number = window.by == "number"
    span = _spans_query(window, down).cte("spans").c

    up: ColumnElement[Any] = span.up
    if window.since is not None:
        since = _instant(window.since)
        up = case((span.up < since, since), else_=span.up)
    span_numbers = [span.number] if by_number else []
    ups = select(
        up.label("at"), literal(1, Integer()).label("change"), span.account_id, *span_numbers
    )
    downs = select(
        span.down.label("at"),
        literal(-1, Integer()).label("change"),
        span.account_id,
        *span_numbers,
    )
    if window.until is not None:
        downs = downs.where(span.down < _instant(window.until))
    moves = union_all(ups, downs).subquery("moves").c

    # The running count of calls up after each move, in time order; at one instant the ends
    # come first. Each account has a count of its own.
    per_account = window.by == "account"
    # With `by="number"`, each number has a count of its own, in the same window function.
    partition = moves.number if by_number else None
    level = func.sum(moves.change).over(
        partition_by=moves.account_id if per_account else partition,
        order_by=(moves.at, moves.change),
        rows=(None, 0),
    )
    move_numbers = [moves.number] if by_number else []
    levels = select(moves.account_id, *move_numbers, moves.at, moves.change, level.label("level"))
    counts = levels.subquery("levels").c
    # Every count a bucket holds for a while is the count after a start or just before an end
    # of the bucket, and no other move makes a count the bucket did not hold: between the moves
    # of one instant the count may dip, never rise above the counts before and after it. Before
    # an end at the bucket's very first instant (12:00 for the 12:00 bucket) the count was the
    # bucket before's: that call is not up in this one. (No end is at `since`: those calls were
    # left out above.)
    before_end: ColumnElement[Any] = counts.level + 1
    first_instant = (
        _bucket_of(window.by, counts.at, boundaries=window.boundaries)
        if window.by in _BUCKET_LENGTH
        else None
    )
    if first_instant is not None:
        before_end = case((counts.at > first_instant, before_end))
    peak = case((counts.change > 0, counts.level), else_=before_end)
    bucket = _bucket_of(
        window.by,
        counts.at,
        counts.account_id,
        counts.number if by_number else None,
        window.boundaries,
    )
    return _grouped(select(func.max(peak).label("peak")), bucket)


def _spans_query(window: Window, down: ColumnElement[Any]) -> Select[Any] | CompoundSelect[Any]:
    """The calls up in the window (`down > since`) that started before `until`, each as its
    start (`up`), the instant it is no longer up (`down`), its account and, for `by="number"`,
    its number (the other reads keep their narrower rows).

    `down` is a CASE no index can serve, so with `since` the calls are found in four parts, each
    through an index of its own, and the work follows the window, not the history before it:
    the calls that started in the window or less than `LONG_CALL` before it (by start time);
    of those that started earlier still, the live ones (the partial index of live calls), and
    the ones that ended after `since` or that the sweep ended (no end time) after an answer
    after `since`. Those were up more than `LONG_CALL`: the index of long calls holds them, by
    end, then answer. The parts never share a call, and together they are exactly the calls
    `down > since` holds for."""
    c = calls.c
    numbers = [_number_column(window).label("number")] if window.by == "number" else []
    spans = select(c.start_time.label("up"), down.label("down"), c.account_id, *numbers)
    if window.account_id is not None:
        spans = spans.where(c.account_id == window.account_id)
    until = None if window.until is None else _instant(window.until)
    if window.since is None:
        spans = spans.where(c.start_time.is_not(None))
        if window.top is not None:
            spans = spans.where(_number_column(window).in_(_top_numbers(window)))
        return spans if until is None else spans.where(c.start_time < until)
    since = _instant(window.since)
    long_before = _instant(window.since - LONG_CALL)
    recent = spans.where(c.start_time >= long_before, down > since)
    if until is not None:
        recent = recent.where(c.start_time < until)
    # Before `since`, so before `until` too: a window holds at least one instant.
    earlier = spans.where(c.start_time < long_before)
    # Asked for by name, as `calls --live` does (SQLite looks a `<>` up in no index), with the
    # partial index's own words (see `_partial` in `storage.tables`): the live states are the
    # only ones besides `disconnected`.
    live = earlier.where(
        c.end_time.is_(None), c.state.in_(lifecycle.LIVE_STATES), text(NOT_ENDED), down > since
    )
    # Up until `since` or later, from before `long_before`: long calls, each found by the very
    # words of the index's condition (which SQLite and PostgreSQL need to use it).
    ended = earlier.where(c.end_time > since, long_call())
    # Up until its answer, else until its start, which is before `since`.
    swept = earlier.where(
        c.end_time.is_(None),
        c.state == lifecycle.DISCONNECTED,
        c.answer_time > since,
        long_call(),
    )
    parts = union_all(recent, live, ended, swept)
    if window.top is None:
        return parts
    # The top numbers are ranked once, for the four parts together.
    found = parts.subquery("parts")
    return select(found).where(found.c.number.in_(_top_numbers(window)))


class long_call(FunctionElement[Any]):  # noqa: N801
    """The condition of the index of long calls, in each backend's words (`LONG_CALL`). Of no
    SQL type: SQLAlchemy would compare a boolean with 1 where the backend has no booleans, and
    the words would no longer be the index's."""

    type = NullType()
    name = "long_call"
    inherit_cache = True


@compiles(long_call)
def _long_call(element: long_call, compiler: SQLCompiler, **kw: Any) -> str:
    dialect = compiler.dialect.name
    return f"({LONG_CALL_CONDITIONS['mysql' if dialect == 'mariadb' else dialect]})"


# --- local hours and days (`tz`) --------------------------------------------------------------
#
# The databases are not asked to convert time zones: MariaDB ships without zone tables, and a
# server's tables may be older than Python's. The zone's rules are applied here, by `zoneinfo`,
# to the few instants that bound the window's local buckets (a spring-forward day is 23 hours
# long, a fall-back day 25, its repeated hour two buckets), and the database only places each
# instant between two of those bounds: the same comparisons of stored UTC instants on every
# backend, so the same figures.


def local_buckets(by: str, tz: ZoneInfo, first: datetime, last: datetime) -> list[datetime]:
    """The UTC instants at which the local hours (`by="hour"`) or local days (`by="day"`) of
    `tz` begin, from the one holding `first` to the one after the bucket holding `last`."""
    first_local, last_local = first.astimezone(tz), last.astimezone(tz)
    starts: set[datetime] = set()
    day = first_local.date() - timedelta(days=1)
    while day <= last_local.date() + timedelta(days=1):
        if by == "day":
            # A local midnight a spring-forward skips (fold 0) reads as the instant the clocks
            # jump: the day begins there.
            starts.add(_utc(datetime.combine(day, time(), tzinfo=tz)))
        else:
            for hour in range(24):
                for fold in (0, 1):
                    wall = datetime.combine(day, time(hour, fold=fold), tzinfo=tz)
                    starts.add(_utc(wall))
        day += timedelta(days=1)
    ordered = sorted(starts)
    # From the last start at or before `first` to the first start after `last`.
    low = max(index for index, start in enumerate(ordered) if start <= first)
    high = min(index for index, start in enumerate(ordered) if start > last)
    return ordered[low : high + 1]


def _utc(instant: datetime) -> datetime:
    return instant.astimezone(UTC)


def _window_boundaries(connection: Connection, window: Window) -> tuple[datetime, ...]:
    """The bounds of the local buckets the window's attempts fall in, from the first start time
    to the last (read on the `start_time` index): a long window holding a few days of calls
    costs those days' bounds, not the window's."""
    assert window.tz is not None and window.by is not None
    c = calls.c
    span = _of_attempts(select(func.min(c.start_time), func.max(c.start_time)), window)
    first, last = connection.execute(span).one()
    if first is None:
        return ()
    return tuple(local_buckets(window.by, window.tz, first, last))


def _local_bucket(window: Window, bucket: datetime) -> tuple[datetime, datetime]:
    """The start and end of the local bucket that begins at the UTC instant `bucket`, in the
    window's zone (each with its own offset: the two halves of a repeated hour differ)."""
    assert window.tz is not None and window.boundaries is not None
    after = window.boundaries[bisect_right(window.boundaries, bucket)]
    return bucket.astimezone(window.tz), after.astimezone(window.tz)


def _utc_hours_or_bucket(
    instant: ColumnElement[Any], boundaries: tuple[datetime, ...]
) -> ColumnElement[Any]:
    """The UTC start of `instant`'s local bucket. Where every bound is a UTC hour an hour after
    the last (a zone whose offsets are whole hours, bucketed by hour), that is the UTC hour, cut
    as without a zone: the very queries of UTC. (A move of the peaks query outside the bounds
    then lands in a UTC hour no attempt started in, which `statistics` never reads.)"""
    if all(bound.minute == 0 and bound.second == 0 for bound in boundaries) and all(
        later - earlier == timedelta(hours=1) for earlier, later in pairwise(boundaries)
    ):
        return start_of_hour(instant)
    return local_bucket_start(instant, boundaries)


class local_bucket_start(FunctionElement[datetime]):  # noqa: N801
    """The bound in `boundaries` at or before the instant, before the last bound (else NULL),
    found by a balanced tree of CASE comparisons: a few per row whatever the window's length.
    The bounds are written into the SQL as constants, no bound parameters: the bucket is
    selected and grouped by, and PostgreSQL takes two placeholders for two expressions.
    Outside the bounds, no bucket: a move of the peaks query after the last bucket (an end)
    must not raise the last bucket's peak."""

    type = UTCDateTime()
    name = "local_bucket_start"
    inherit_cache = False

    def __init__(self, instant: ColumnElement[Any], boundaries: tuple[datetime, ...]) -> None:
        super().__init__(instant)
        self.boundaries = boundaries


def _constant(instant: datetime, dialect: str) -> str:
    text = instant.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    if dialect == "sqlite":
        return f"'{text}'"
    if dialect == "postgresql":
        return f"CAST('{text}' AS TIMESTAMP)"
    return f"CAST('{text}' AS DATETIME(6))"


@compiles(local_bucket_start)
def _local_bucket_start(element: local_bucket_start, compiler: SQLCompiler, **kw: Any) -> str:
    (instant,) = (compiler.process(clause, **kw) for clause in element.clauses)
    dialect = compiler.dialect.name
    bounds = [_constant(bound, dialect) for bound in element.boundaries]
    if len(bounds) < 2:
        return "NULL"

    def tree(low: int, high: int) -> str:
        # The bucket of an instant known to be in [bounds[low], bounds[high]).
        if high - low == 1:
            return bounds[low]
        middle = (low + high) // 2
        earlier, later = tree(low, middle), tree(middle, high)
        return f"CASE WHEN {instant} < {bounds[middle]} THEN {earlier} ELSE {later} END"

    return (
        f"CASE WHEN {instant} >= {bounds[0]} AND {instant} < {bounds[-1]}"
        f" THEN {tree(0, len(bounds) - 1)} END"
    )
