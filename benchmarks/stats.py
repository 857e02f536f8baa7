"""How long `Tracker.stats` takes over many calls.

    python -m benchmarks.stats                          # 1,000,000 calls, SQLite, temporary
    python -m benchmarks.stats --calls 200000 --db sqlite:///stats-bench.db   # kept, reused
    python -m benchmarks.stats --tz Europe/Berlin      # also local hours and days, vs UTC

Run from the repository root (a development tool, outside the wheel). The calls come from the
realistic stream of `tracker.testing` (`terminal_bodies`): its terminal callbacks only
(`disconnect`, `transferDisconnect`, which carry every time a call has), loaded with
`apply_many` in big batches (on SQLite with `durable=False`). Then `stats` is timed by day, by
account, by hour and in one bucket, over all the calls, the median of `--repeat` runs each.

`--db URL` keeps the database: a database that already holds calls is measured as it is, not
loaded again, so one load serves many runs. `--copy-from URL` fills an empty `--db` with the
calls of a database loaded earlier (say the SQLite file of a first run), so PostgreSQL and
MariaDB are measured on the same calls without a load through `apply_many` each.

`--history-days 1,30` measures instead one day's window after growing history: one day of
calls (`--calls-per-day`, through `apply_many`, with `--live` calls still talking at its end),
then copies of that day's ended calls shifted one, two, ... days back until each count of days
precedes it, and `stats` over the day after each (one bucket and by hour). The window's figures
must come out the same whatever the history (the benchmark checks it and says so). With
`--explain` (PostgreSQL), the plans of the reads that touch only their window follow:
stats' peak concurrency, `calls --live`, the sweep's scan and an export of the day.

    python -m benchmarks.stats --db postgresql://.../stats_history --history-days 1,30 --explain
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, event, insert, select, text

from tracker import LIVE_STATES, Tracker, storage
from tracker.housekeeping import SWEEP_BATCH_SIZE
from tracker.testing import EPOCH, answer, new_call_id, terminal_bodies

BUCKETINGS: Final = ("day", "account", "hour", None)


@dataclass
class Report:
    database: str
    calls: int
    loaded: bool
    # `apply_many`, or `copy` (--copy-from); None when the database held calls already.
    loaded_by: str | None
    load_seconds: float | None
    calls_per_second_loaded: float | None
    first_start: str | None
    last_start: str | None
    # by -> median seconds of `stats(by=...)`, and the buckets it returned.
    seconds: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, int] = field(default_factory=dict)
    repeat: int = 1
    # --tz: the zone, and by -> median seconds of `stats(by=..., tz=...)` for hours and days.
    tz: str | None = None
    tz_seconds: dict[str, float] = field(default_factory=dict)

    def as_text(self) -> str:
        lines = [
            f"{self.calls:,} calls in {self.database}"
            + (f", started {self.first_start} to {self.last_start}" if self.first_start else ""),
        ]
        if self.loaded and self.load_seconds is not None:
            lines.append(
                f"loaded in {self.load_seconds:,.1f} s "
                f"({self.calls_per_second_loaded:,.0f} calls/s, {self.loaded_by})"
            )
        lines.append(f"Tracker.stats over all of them, median of {self.repeat}:")
        for by, seconds in self.seconds.items():
            lines.append(f"  by={by:<8} {seconds:8.3f} s   ({self.buckets[by]:,} rows)")
        for by, seconds in self.tz_seconds.items():
            ratio = seconds / self.seconds[by]
            lines.append(f"  by={by:<8} {seconds:8.3f} s   tz={self.tz}, {ratio:.2f}x the UTC time")
        return "\n".join(lines)


def daily(second: float) -> float:
    """Calls a second on a working day's curve: about four at 15:00 UTC, a few a minute at
    night (the stream starts at 19:00 UTC)."""
    hour = (EPOCH.hour + second / 3600) % 24
    return 0.05 + 4.0 * math.exp(-(((hour - 15) / 3.5) ** 2))


def load(
    tracker: Tracker,
    calls: int,
    seed: int,
    batch: int,
    progress: Callable[[str], None],
    *,
    curve: bool = False,
) -> float:
    began = time.perf_counter()
    pending: list[bytes] = []
    applied = 0
    for body in terminal_bodies(calls, seed, daily if curve else None):
        pending.append(body)
        if len(pending) == batch:
            tracker.apply_many(pending)
            applied += len(pending)
            pending = []
            if applied % (batch * 20) == 0:
                progress(f"loaded {applied:,} of {calls:,} calls")
    if pending:
        tracker.apply_many(pending)
    return time.perf_counter() - began


def copy_calls(
    source: Tracker, target: Tracker, batch: int, progress: Callable[[str], None]
) -> float:
    """The call rows of another tracker database, copied as they are (parents first, for the
    foreign key): a database for another backend in a minute instead of a load through
    `apply_many`. `stats` reads nothing else."""
    began = time.perf_counter()
    table = storage.calls
    copied = 0
    with source.engine.connect() as reading:
        for legs in (False, True):
            after = ""
            while True:
                query = (
                    select(table)
                    .where(table.c.call_id > after)
                    .where(
                        table.c.parent_call_id.is_not(None)
                        if legs
                        else table.c.parent_call_id.is_(None)
                    )
                    .order_by(table.c.call_id)
                    .limit(batch)
                )
                rows = [dict(row._mapping) for row in reading.execute(query)]
                if not rows:
                    break
                with target.engine.begin() as writing:
                    writing.execute(insert(table), rows)
                after = rows[-1]["call_id"]
                copied += len(rows)
                if copied % (batch * 20) < batch:
                    progress(f"copied {copied:,} calls")
    return time.perf_counter() - began


def measure(
    url: str,
    *,
    calls: int,
    repeat: int,
    batch: int,
    seed: int,
    progress: Callable[[str], None],
    curve: bool = False,
    copy_from: str | None = None,
    tz: str | None = None,
) -> Report:
    # durable=False: SQLite's synchronous=NORMAL for the load; no other backend reads it.
    with Tracker(url, durable=False, timeout=None) as tracker:
        tracker.upgrade()
        found = tracker.count_calls()
        load_seconds = None
        if found == 0 and copy_from is not None:
            progress(f"copying the calls of {copy_from} into {url}")
            with Tracker(copy_from, timeout=None) as source:
                load_seconds = copy_calls(source, tracker, batch, progress)
            found = tracker.count_calls()
        elif found == 0:
            progress(f"loading {calls:,} calls into {url}")
            load_seconds = load(tracker, calls, seed, batch, progress, curve=curve)
            found = tracker.count_calls()
        else:
            progress(f"{url} holds {found:,} calls already: measuring them as they are")
        (everything,) = tracker.stats()
        first = tracker.stats(by="day")
        report = Report(
            database=tracker.engine.url.render_as_string(hide_password=True),
            calls=found,
            loaded=load_seconds is not None,
            loaded_by=None if load_seconds is None else "copy" if copy_from else "apply_many",
            load_seconds=load_seconds,
            calls_per_second_loaded=found / load_seconds if load_seconds else None,
            first_start=first[0].start.date().isoformat() if first and first[0].start else None,
            last_start=first[-1].start.date().isoformat() if first and first[-1].start else None,
            repeat=repeat,
        )
        assert everything.attempts <= found
        for by in BUCKETINGS:
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                rows = tracker.stats(by=by)
                times.append(time.perf_counter() - began)
            report.seconds[str(by)] = statistics.median(times)
            report.buckets[str(by)] = len(rows)
            progress(f"stats(by={by}): {report.seconds[str(by)]:.3f} s, {len(rows):,} rows")
        if tz is not None:
            report.tz = tz
            for by in ("day", "hour"):
                times = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    tracker.stats(by=by, tz=tz)
                    times.append(time.perf_counter() - began)
                report.tz_seconds[by] = statistics.median(times)
                progress(f"stats(by={by}, tz={tz}): {report.tz_seconds[by]:.3f} s")
        return report


# --- one day's window after growing history (--history-days) ----------------------------------

DAY: Final = timedelta(days=1)
# The measured day: the stream's first day. History is copied before it, never after.
SINCE: Final = EPOCH
UNTIL: Final = EPOCH + DAY
# The instants a copy of a call moves back with it.
_INSTANTS: Final = (
    "start_time",
    "answer_time",
    "end_time",
    "enqueued_time",
    "swept_at",
    "numbers_leg_start",
)


@dataclass
class HistoryRow:
    history_days: int
    calls: int
    # by -> median seconds of `stats(by=..., since=SINCE, until=UNTIL)`.
    seconds: dict[str, float]
    attempts: int
    peak_concurrent_calls: int


@dataclass
class HistoryReport:
    database: str
    calls_per_day: int
    live: int
    since: str
    until: str
    repeat: int
    day_load_seconds: float
    rows: list[HistoryRow] = field(default_factory=list)
    # Whether every history gave the window the same figures (every bucket, every field).
    same_figures: bool = True
    # read -> EXPLAIN (ANALYZE, BUFFERS) text (--explain, PostgreSQL).
    plans: dict[str, str] = field(default_factory=dict)

    def as_text(self) -> str:
        lines = [
            f"{self.database}: one day's window [{self.since}, {self.until}), "
            f"{self.calls_per_day:,} calls a day and {self.live} live at its end "
            f"(the day loaded through apply_many in {self.day_load_seconds:,.1f} s)",
            f"Tracker.stats over the day, median of {self.repeat}:",
        ]
        for row in self.rows:
            timings = "  ".join(f"by={by}: {seconds:.3f} s" for by, seconds in row.seconds.items())
            lines.append(
                f"  {row.history_days:>3} days of history, {row.calls:>9,} calls: {timings}"
                f"  ({row.attempts:,} attempts, peak {row.peak_concurrent_calls})"
            )
        lines.append(
            "the window's figures are the same with every history"
            if self.same_figures
            else "THE WINDOW'S FIGURES DIFFER BETWEEN HISTORIES"
        )
        for read, plan in self.plans.items():
            lines += ["", f"EXPLAIN (ANALYZE, BUFFERS): {read}", plan]
        return "\n".join(lines)


def one_day(calls_per_day: int, seed: int) -> Iterator[bytes]:
    """The terminal callbacks of the stream's first day at `calls_per_day` calls a day: the
    calls and legs that started in [SINCE, UNTIL). The stream runs on until its deliveries are
    six hours past the day (no call of it lasts that long)."""
    rate = calls_per_day / DAY.total_seconds()
    for body in terminal_bodies(sys.maxsize, seed, lambda _second: rate):
        fields = json.loads(body)
        start = fields.get("startTime")
        if start is not None and datetime.fromisoformat(start) < UNTIL:
            yield body
        elif datetime.fromisoformat(fields["eventTime"]) > UNTIL + timedelta(hours=6):
            return


def talking_at_the_end(live: int, seed: int) -> list[dict[str, Any]]:
    """`live` calls answered in the last six hours of the day and not ended: the live set that
    `calls --live` lists and the sweep reads."""
    draw = random.Random(seed)
    return [
        answer(
            new_call_id(),
            start=UNTIL - timedelta(seconds=draw.uniform(60, 6 * 3600)),
            ring=draw.uniform(1, 20),
        )
        for _ in range(live)
    ]


def copy_back(
    tracker: Tracker, day: Sequence[dict[str, Any]], days_back: range, batch: int
) -> None:
    """The rows of `day` again, `days` days earlier for each of `days_back`, with ids of their
    own: a parent before its legs (the foreign key), a day at a time."""
    for days in days_back:
        shift = DAY * days
        rows = []
        for row in day:
            copy = dict(row)
            copy["call_id"] = f"{row['call_id']}-d{days}"
            if row["parent_call_id"] is not None:
                copy["parent_call_id"] = f"{row['parent_call_id']}-d{days}"
            for name in _INSTANTS:
                if row[name] is not None:
                    copy[name] = row[name] - shift
            rows.append(copy)
        for start in range(0, len(rows), batch):
            with tracker.engine.begin() as connection:
                connection.execute(insert(storage.calls), rows[start : start + batch])


def parents_first(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    parents = {row["call_id"]: row["parent_call_id"] for row in rows}

    def depth(call_id: str) -> int:
        seen = 0
        parent = parents.get(call_id)
        while parent is not None:
            seen += 1
            parent = parents.get(parent)
        return seen

    return sorted(rows, key=lambda row: depth(row["call_id"]))


def measure_history(
    url: str,
    *,
    history_days: Sequence[int],
    calls_per_day: int,
    live: int,
    repeat: int,
    batch: int,
    seed: int,
    explain: bool,
    progress: Callable[[str], None],
) -> HistoryReport:
    with Tracker(url, durable=False, timeout=None) as tracker:
        tracker.upgrade()
        if tracker.count_calls():
            raise SystemExit(f"{url} holds calls: --history-days needs an empty database")
        progress(f"loading one day of {calls_per_day:,} calls a day into {url}")
        began = time.perf_counter()
        pending: list[bytes] = []
        for body in one_day(calls_per_day, seed):
            pending.append(body)
            if len(pending) == batch:
                tracker.apply_many(pending)
                pending = []
        tracker.apply_many(pending)
        day_load_seconds = time.perf_counter() - began
        with tracker.engine.connect() as connection:
            day = parents_first(
                [dict(row._mapping) for row in connection.execute(select(storage.calls))]
            )
        tracker.apply_many(talking_at_the_end(live, seed))
        report = HistoryReport(
            database=tracker.engine.url.render_as_string(hide_password=True),
            calls_per_day=len(day),
            live=live,
            since=SINCE.isoformat(),
            until=UNTIL.isoformat(),
            repeat=repeat,
            day_load_seconds=day_load_seconds,
        )
        first_figures = None
        copied = 0
        for days in sorted(set(history_days)):
            progress(f"copying the day {copied + 1} to {days} days back")
            copy_back(tracker, day, range(copied + 1, days + 1), batch)
            copied = days
            if tracker.engine.dialect.name == "postgresql":
                # As autovacuum's analyze would after the inserts: the planner's statistics.
                with tracker.engine.begin() as connection:
                    connection.execute(text("ANALYZE tracker_calls"))
            seconds: dict[str, float] = {}
            figures = {}
            for by in (None, "hour"):
                tracker.stats(by=by, since=SINCE, until=UNTIL, now=UNTIL)  # warm the caches
                times = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    figures[by] = tracker.stats(by=by, since=SINCE, until=UNTIL, now=UNTIL)
                    times.append(time.perf_counter() - began)
                seconds[str(by)] = statistics.median(times)
            (whole,) = figures[None]
            report.rows.append(
                HistoryRow(
                    history_days=days,
                    calls=tracker.count_calls(),
                    seconds=seconds,
                    attempts=whole.attempts,
                    peak_concurrent_calls=whole.peak_concurrent_calls,
                )
            )
            progress(f"{days} days of history: {seconds}")
            first_figures = first_figures or figures
            report.same_figures = report.same_figures and figures == first_figures
        if explain and tracker.engine.dialect.name == "postgresql":
            report.plans = plans(tracker)
        return report


def plans(tracker: Tracker) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement each read sends, as the library sends it
    (caught on its way to the driver), run again on the same database."""

    def peak(connection: Connection) -> None:
        tracker.stats(since=SINCE, until=UNTIL, now=UNTIL)

    def live(connection: Connection) -> None:
        tracker.calls(state=LIVE_STATES, limit=1000)

    def sweep(connection: Connection) -> None:
        cutoff = UNTIL - timedelta(hours=4)
        storage.where_sweep_candidates(connection, None, cutoff, SWEEP_BATCH_SIZE)

    def export(connection: Connection) -> None:
        list(islice(tracker.export(since=SINCE, until=UNTIL), 1))

    reads: dict[str, tuple[Callable[[Connection], None], str]] = {
        "stats' peak concurrency, one day": (peak, "spans"),
        "calls --live (first page)": (live, "FROM tracker_calls"),
        "the sweep's scan (first batch)": (sweep, "FROM tracker_calls"),
        "export of one day (first page)": (export, "FROM tracker_calls"),
    }
    found: dict[str, str] = {}
    for read, (run, marker) in reads.items():
        sent: list[tuple[str, Any]] = []

        def catch(_connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            sent.append((statement, parameters))  # noqa: B023 (removed before the next read)

        event.listen(tracker.engine, "before_cursor_execute", catch)
        try:
            with tracker.engine.connect() as connection:
                run(connection)
        finally:
            event.remove(tracker.engine, "before_cursor_execute", catch)
        statement, parameters = next((s, p) for s, p in sent if marker in s)
        with tracker.engine.connect() as connection:
            explained = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + statement,
                tuple(parameters) if isinstance(parameters, list) else parameters,
            )
            found[read] = "\n".join(row[0] for row in explained)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stats",
        description="Time Tracker.stats by day, account and hour over many calls.",
    )
    parser.add_argument("--calls", type=int, default=1_000_000, metavar="N")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="a database to keep: loaded with N calls when it holds none, else measured as it "
        "is (default: a temporary SQLite file)",
    )
    parser.add_argument("--repeat", type=int, default=3, metavar="R")
    parser.add_argument("--batch", type=int, default=5000, help="bodies per apply_many")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        help="where the temporary SQLite file goes (default: the system's temporary directory)",
    )
    parser.add_argument(
        "--copy-from",
        metavar="URL",
        help="with --db naming an empty database: copy the calls of this tracker database "
        "(one loaded earlier) instead of loading N calls",
    )
    parser.add_argument(
        "--daily",
        action="store_true",
        help="calls start on a daily curve (busiest at 15:00 UTC, few at night) instead of a "
        "steady two a second: the documentation's plot",
    )
    parser.add_argument(
        "--tz",
        metavar="ZONE",
        help="also time stats by day and hour in this IANA zone (e.g. Europe/Berlin), "
        "against the UTC figures",
    )
    parser.add_argument(
        "--history-days",
        metavar="N,N,...",
        help="instead: time stats over one day's window after each of these counts of days of "
        "history before it (e.g. 1,30), on the same growing database (needs an empty --db, or "
        "the temporary SQLite file)",
    )
    parser.add_argument(
        "--calls-per-day",
        type=int,
        default=22_000,
        metavar="N",
        help="with --history-days: conversations started in the day, each a call and its legs "
        "(about 1.5 calls; 31 days of 22,000 are about a million calls)",
    )
    parser.add_argument(
        "--live", type=int, default=200, help="with --history-days: calls talking at the day's end"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="with --history-days on PostgreSQL: print EXPLAIN (ANALYZE, BUFFERS) of the reads",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1 or args.batch < 1:
        parser.error("--calls, --repeat and --batch must be positive")
    if args.copy_from and not args.db:
        parser.error("--copy-from needs --db: the database to copy the calls into")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.history_days is not None:
        try:
            days = [int(part) for part in args.history_days.split(",")]
        except ValueError:
            parser.error("--history-days takes whole numbers of days, as 1,30")
        if not days or min(days) < 0 or args.calls_per_day < 1 or args.live < 0:
            parser.error("--history-days, --calls-per-day and --live must not be negative")
        history_options: dict[str, Any] = {
            "history_days": days,
            "calls_per_day": args.calls_per_day,
            "live": args.live,
            "repeat": args.repeat,
            "batch": args.batch,
            "seed": args.seed,
            "explain": args.explain,
            "progress": progress,
        }
        if args.db:
            history = measure_history(args.db, **history_options)
        else:
            with tempfile.TemporaryDirectory(prefix="tracker-stats-", dir=args.sqlite_dir) as tmp:
                history = measure_history(f"sqlite:///{tmp}/stats.db", **history_options)
        print(json.dumps(asdict(history), indent=2) if args.json else history.as_text())
        return 0 if history.same_figures else 1

    options: dict[str, Any] = {
        "calls": args.calls,
        "repeat": args.repeat,
        "batch": args.batch,
        "seed": args.seed,
        "progress": progress,
        "curve": args.daily,
        "copy_from": args.copy_from,
        "tz": args.tz,
    }
    if args.db:
        report = measure(args.db, **options)
    else:
        with tempfile.TemporaryDirectory(prefix="tracker-stats-", dir=args.sqlite_dir) as folder:
            report = measure(f"sqlite:///{folder}/stats.db", **options)
    print(json.dumps(asdict(report), indent=2) if args.json else report.as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
