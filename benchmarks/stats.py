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
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy import insert, select

from tracker import Tracker, storage
from tracker.testing import EPOCH, terminal_bodies

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
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1 or args.batch < 1:
        parser.error("--calls, --repeat and --batch must be positive")
    if args.copy_from and not args.db:
        parser.error("--copy-from needs --db: the database to copy the calls into")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

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
