"""How fast the tracker applies deliveries, against the least work any tracker must do.

    python -m benchmarks.bench                              # SQLite in a temporary directory
    python -m benchmarks.bench --db postgresql+psycopg://postgres@127.0.0.1/postgres --workers 1,4
    python -m benchmarks.bench --database postgresql+psycopg://postgres@127.0.0.1/postgres \
        --processes 1,2,4,8 --batch 100,500                 # many processes on shared calls

Run from the repository root: a development tool, kept out of the wheel, that takes its bodies
from the realistic stream of `tracker.testing` (`realistic_bodies`). On those bodies it measures:

- the *floor*: what any tracker honouring the contract must at least do, written directly on the
  driver (stdlib `sqlite3`, `psycopg`): parse the JSON, hash its canonical form, read the call row,
  insert the delivery under its unique hash, upsert the call, insert the parent if unseen, commit;
  once per delivery, and once per batch;
- the tracker's `apply` (one transaction per delivery) and `apply_many` (one per batch), with its
  default settings (on SQLite: WAL and `synchronous=FULL`, which the floor uses too).

Each repetition runs the four in turn on fresh databases, so a noisy neighbour slows them alike;
the table shows the median deliveries per second and the tracker's ratio to its floor, next to the
project's targets. A micro-benchmark compares `tracker.parsing.read` with a plain pydantic model
of the same fields. On SQLite, the pages each commit writes are counted too, as WAL frames per
delivery of the floor and of `apply`: a count which, unlike a rate, is the same on any machine
however busy. `--profile apply` shows where the tracker's time goes.

With `--processes`, instead, the curve of many processes on one PostgreSQL (`curve`): the
stream laid out so that a conversation's callbacks go to different processes at once, and
every run checked against a serial replay.

This module runs the whole and reads the command line; its parts sit beside it: `floor` (the
floor on the driver), `runs` (one timed run, in one process or several), `cpu` (the CPU and
memory a run takes), `measures` (parsing, `apply` per event type, WAL frames), `report` (the
figures as JSON and as Markdown), `curve` with `transactions` and `exactness` (the curve).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event

from benchmarks import curve
from benchmarks.cpu import peak_rss_mb
from benchmarks.endpoint import CLIENT_COUNTS, HTTP_WARMUP_DELIVERIES, HttpFigure, run_http
from benchmarks.measures import measure_parsing, measure_per_event_type, measure_wal_frames
from benchmarks.report import EndpointReport, Figure, Report, describe_machine
from benchmarks.runs import Databases, Mode, apply_with, run_once
from benchmarks.transactions import PUBLISH_SECONDS
from tracker.testing import realistic_bodies
from tracker.tracker import Tracker

# The order of one repetition: each tracker run right after the floor it is compared with.
MODES: Final[tuple[Mode, ...]] = ("floor", "apply", "floor_batched", "apply_many")
WARMUP_DELIVERIES: Final = 50


def run(
    targets: Sequence[str],
    *,
    deliveries: int,
    repeat: int,
    workers: Sequence[int] | None,
    batch: int,
    seed: int,
    directory: Path,
    parse: bool = True,
    progress: Callable[[str], None] = lambda _line: None,
) -> Report:
    bodies = realistic_bodies(deliveries, seed)
    warmup = realistic_bodies(WARMUP_DELIVERIES, seed + 1_000_003)
    backends = [Databases(target, directory) for target in targets]
    figures: dict[tuple[str, int, Mode], Figure] = {}
    plan = [
        (databases, count)
        for databases in backends
        for count in (workers or ((1,) if databases.backend == "sqlite" else (1, 4)))
    ]
    for repetition in range(repeat):
        for databases, count in plan:
            for mode in MODES:
                result = run_once(databases, mode, bodies, warmup, batch, count)
                key = (databases.label, count, mode)
                figure = figures.setdefault(key, Figure(databases.label, count, mode))
                figure.rates.append(len(bodies) / result.seconds)
                figure.client_cpu.append(result.client_cpu_seconds / len(bodies))
                if result.server_cpu_seconds is not None:
                    figure.server_cpu.append(result.server_cpu_seconds / len(bodies))
                if repetition == 0:
                    figure.outcomes.update(result.outcomes)
                progress(
                    f"[{repetition + 1}/{repeat}] {databases.label} x{count} {mode}: "
                    f"{len(bodies) / result.seconds:,.0f} deliveries/s"
                )
    versions = [v for v in (b.server_version() for b in backends) if v is not None]
    children = peak_rss_mb(resource.RUSAGE_CHILDREN)
    return Report(
        machine=describe_machine(versions[0] if versions else None),
        deliveries=deliveries,
        repeat=repeat,
        batch=batch,
        figures=list(figures.values()),
        parse=measure_parsing(bodies) if parse else None,
        per_event_type={
            databases.label: measure_per_event_type(databases, bodies, warmup)
            for databases in backends
        },
        wal_frames=next(
            (
                measure_wal_frames(databases, bodies, warmup)
                for databases in backends
                if databases.backend == "sqlite"
            ),
            None,
        ),
        peak_rss_mb=peak_rss_mb(resource.RUSAGE_SELF),
        worker_peak_rss_mb=children if children > 0 else None,
    )


# --- the webhook endpoint ----------------------------------------------------------------------


def run_endpoint(
    targets: Sequence[str],
    *,
    deliveries: int,
    repeat: int,
    seed: int,
    directory: Path,
    progress: Callable[[str], None] = lambda _line: None,
) -> EndpointReport:
    bodies = realistic_bodies(deliveries, seed)
    warmup = realistic_bodies(WARMUP_DELIVERIES, seed + 1_000_003)
    # A server lives long: its warm-up also sends groups of every size the load will, so that
    # the statements for them are compiled before the clock starts, as they are in a running one.
    http_warmup = realistic_bodies(HTTP_WARMUP_DELIVERIES, seed + 2_000_003)
    backends = [Databases(target, directory) for target in targets]
    apply_rates: dict[str, list[float]] = {}
    figures: dict[tuple[str, int], HttpFigure] = {}
    for repetition in range(repeat):
        for databases in backends:
            result = run_once(databases, "apply", bodies, warmup, 1, 1)
            apply_rates.setdefault(databases.label, []).append(len(bodies) / result.seconds)
            progress(
                f"[{repetition + 1}/{repeat}] {databases.label} apply: "
                f"{len(bodies) / result.seconds:,.0f} deliveries/s"
            )
            for clients in CLIENT_COUNTS:
                with databases.fresh() as url:
                    run = run_http(url, directory, bodies, http_warmup, clients)
                key = (databases.label, clients)
                figures.setdefault(key, HttpFigure(databases.label, clients)).runs.append(run)
                progress(
                    f"[{repetition + 1}/{repeat}] {databases.label} HTTP x{clients}: "
                    f"{run.rate:,.0f} deliveries/s"
                )
    versions = [v for v in (b.server_version() for b in backends) if v is not None]
    return EndpointReport(
        machine=describe_machine(versions[0] if versions else None),
        deliveries=deliveries,
        repeat=repeat,
        apply_rates=apply_rates,
        figures=list(figures.values()),
    )


# --- profiling ---------------------------------------------------------------------------------


def profile(mode: Mode, deliveries: int, batch: int, seed: int, directory: Path) -> str:
    """cProfile of the tracker's `mode` on SQLite, with the SQL statements it sends per delivery."""
    bodies = realistic_bodies(deliveries, seed)
    warmup = realistic_bodies(WARMUP_DELIVERIES, seed + 1_000_003)
    databases = Databases("sqlite", directory)
    statements: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        words = statement.split()
        table = next((word for word in words if word.startswith("tracker_")), "")
        statements[f"{' '.join(words[:1])} {table.split('.')[0]}".strip()] += 1

    with databases.fresh() as url, Tracker(url) as tracker:
        tracker.upgrade()
        apply_with(tracker, mode, warmup, batch)
        event.listen(tracker.engine, "before_cursor_execute", count)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        apply_with(tracker, mode, bodies, batch)
        profiler.disable()
        seconds = time.perf_counter() - started
    out = io.StringIO()
    out.write(
        f"{mode} of {deliveries} deliveries on SQLite under cProfile: {seconds:.2f} s, "
        f"{1e6 * seconds / deliveries:.0f} µs per delivery (profiler overhead included)\n"
        f"SQL statements per delivery: {sum(statements.values()) / deliveries:.2f}\n"
    )
    for name, number in statements.most_common():
        out.write(f"  {number / deliveries:6.2f}  {name}\n")
    for order in ("cumulative", "tottime"):
        out.write(f"\n--- sorted by {order} ---\n")
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(30)
    return out.getvalue()


# --- command line ------------------------------------------------------------------------------


def _workers(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,4, not {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers like 1,4")
    return counts


def _curve(args: argparse.Namespace, directory: Path) -> int:
    targets = args.db or []
    if len(targets) != 1 or targets[0] == "sqlite":
        raise SystemExit("--processes runs on one PostgreSQL: give --database URL once")
    report = curve.run_curve(
        targets[0],
        directory,
        deliveries=args.deliveries or curve.DELIVERIES,
        processes=args.processes,
        batches=args.batch or curve.BATCHES,
        repeat=args.repeat or 1,
        seed=args.seed,
        warmup_per_process=args.warmup,
        publish_seconds=args.publish_wait,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps(report.as_json(), indent=2) if args.json else report.as_text())
    return 0 if report.exact else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Measure the tracker's apply and apply_many against the least work any "
        "tracker must do, on the same bodies and the same kind of database.",
    )
    parser.add_argument(
        "--db",
        "--database",
        action="append",
        metavar="sqlite|URL",
        help="'sqlite' (files in a temporary directory; the default) or a PostgreSQL URL whose "
        "server may create and drop databases named tracker_bench_*; repeat to run several",
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        metavar="N",
        help=f"per run (default 2000; with --processes {curve.DELIVERIES} distinct ones)",
    )
    parser.add_argument(
        "--repeat", type=int, metavar="R", help="repetitions (default 3; with --processes 1)"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="1,4",
        help="numbers of processes to run with (default: 1 on SQLite, 1,4 on PostgreSQL)",
    )
    parser.add_argument(
        "--processes",
        type=_workers,
        metavar="1,2,4,8",
        help="instead, the curve of that many processes on one PostgreSQL (--database), "
        "writing the same calls at once, each run checked against a serial replay",
    )
    parser.add_argument(
        "--batch",
        type=_workers,
        metavar="500",
        help="deliveries per apply_many (default 500; with --processes, sizes like 100,500, "
        "default 100,500)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=curve.WARMUP_PER_PROCESS,
        metavar="N",
        help="with --processes: deliveries each process applies before the timed part",
    )
    parser.add_argument(
        "--publish-wait",
        type=float,
        default=PUBLISH_SECONDS,
        metavar="SECONDS",
        help="with --processes: how long the warm-up stays idle before the server's count of "
        "transactions is read (PostgreSQL publishes a connection's within 10 s; shorter "
        "makes the rollback counts approximate)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        help="where the SQLite files go (default: the system's temporary directory)",
    )
    parser.add_argument("--no-parse", action="store_true", help="skip the parsing benchmark")
    parser.add_argument(
        "--profile",
        choices=("apply", "apply_many"),
        help="instead, profile the tracker's apply or apply_many on SQLite",
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="instead, drive `tracker serve` with 1 and 32 concurrent clients, beside "
        "in-process apply",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if (args.deliveries is not None and args.deliveries < 1) or (
        args.repeat is not None and args.repeat < 1
    ):
        parser.error("--deliveries and --repeat must be positive")
    if args.processes is None and args.batch is not None and len(args.batch) > 1:
        parser.error("several --batch sizes go with --processes")
    batch = args.batch[0] if args.batch else 500
    deliveries = args.deliveries or 2000
    repeat = args.repeat or 3

    with tempfile.TemporaryDirectory(prefix="tracker-bench-", dir=args.sqlite_dir) as directory:
        if args.processes is not None:
            return _curve(args, Path(directory))
        if args.profile:
            print(profile(args.profile, deliveries, batch, args.seed, Path(directory)))
            return 0
        report: Report | EndpointReport
        if args.http:
            report = run_endpoint(
                args.db or ["sqlite"],
                deliveries=deliveries,
                repeat=repeat,
                seed=args.seed,
                directory=Path(directory),
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
        else:
            report = run(
                args.db or ["sqlite"],
                deliveries=deliveries,
                repeat=repeat,
                workers=args.workers,
                batch=batch,
                seed=args.seed,
                directory=Path(directory),
                parse=not args.no_parse,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
