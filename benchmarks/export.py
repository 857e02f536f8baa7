"""How fast `tracker export` writes call detail records, and in how much memory.

    python -m benchmarks.export                     # 1,000,000 legs on SQLite (a few minutes)
    python -m benchmarks.export --legs 200000 --formats csv,jsonl,parquet

Run from the repository root: a development tool, kept out of the wheel. It fills a SQLite
database (durable=False, `apply_many` in large batches) with `--legs` calls from
`tracker.testing.call_trees`, about two thirds original calls and one third transfer legs (one,
or two to four ringing at once, one of them answered), then runs `tracker export` as a child
process per format and per row shape (leg, conversation) and reports the rows written per second
and the child's peak RSS. The export runs in a process of its own so that its peak memory is its
own, not the loading's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from tracker.testing import call_trees
from tracker.tracker import Tracker

ROOT: Final = Path(__file__).resolve().parents[1]
# The targets for a leg export to CSV on SQLite.
TARGET_ROWS_PER_SECOND: Final = 50_000
TARGET_PEAK_RSS_MB: Final = 200
LOAD_BATCH: Final = 5000


def load(url: str, legs: int, seed: int, progress: Callable[[str], None]) -> float:
    """Fill the database; the seconds it took."""
    began = time.perf_counter()
    with Tracker(url, durable=False) as tracker:
        tracker.upgrade()
        batch: list[bytes] = []
        done = 0
        for body in call_trees(legs, seed):
            batch.append(body)
            if len(batch) == LOAD_BATCH:
                _apply(tracker, batch)
                done += len(batch)
                batch = []
                if done % (LOAD_BATCH * 40) == 0:
                    progress(f"loaded {done:,} deliveries in {time.perf_counter() - began:.0f} s")
        if batch:
            _apply(tracker, batch)
    return time.perf_counter() - began


def _apply(tracker: Tracker, batch: Sequence[bytes]) -> None:
    outcomes = {result.outcome.value for result in tracker.apply_many(batch)}
    if outcomes != {"applied"}:
        raise RuntimeError(f"the generated bodies were not all applied: {outcomes}")


@dataclass(frozen=True)
class Run:
    file_format: str
    per: str
    rows: int
    seconds: float
    cpu_seconds: float  # the export process's own, user and system: what load elsewhere hides
    peak_rss_mb: float
    file_mb: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def rows_per_cpu_second(self) -> float:
        return self.rows / self.cpu_seconds


# `tracker export`, telling its own peak RSS as it exits. The rusage of a child counts the pages
# of the parent it was started from (Linux keeps the high-water mark across exec), and this
# parent holds the loading's; `VmHWM` is the peak of the exported process's own memory alone.
_REPORTING_PEAK: Final = """
import atexit, re, sys
from pathlib import Path

def peak():
    status = Path("/proc/self/status")
    if status.exists():
        found = re.search(r"VmHWM:\\s+(\\d+) kB", status.read_text())
        if found:
            print(f"peak_rss_kb={found.group(1)}", file=sys.stderr)

atexit.register(peak)
sys.argv[0] = "tracker"
from tracker.cli import main
main()
"""


def export(url: str, file_format: str, per: str, output: Path) -> Run:
    """Run `tracker export` in a child process: its wall time, rows, CPU time and peak RSS
    (the child's own resource usage, reported when it is reaped)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable, "-c", _REPORTING_PEAK, "--db", url, "export",
        "--format", file_format, "--per", per, "-o", str(output),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        began = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, env={**os.environ, "PYTHONPATH": path}
        )
        _pid, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - began
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        said, complaint = stdout.read().decode(), stderr.read().decode()
    if child.returncode != 0:
        raise RuntimeError(f"tracker export failed ({child.returncode}): {complaint}")
    rows = int(said.split()[1].replace(",", ""))  # "Wrote 1,234 legs to FILE."
    told = re.search(r"^peak_rss_kb=(\d+)$", complaint, re.M)
    if told is not None:
        peak = int(told.group(1)) / 2**10
    else:  # no /proc: the child's usage, which counts the parent's pages it started with
        peak = usage.ru_maxrss / 2**20 if sys.platform == "darwin" else usage.ru_maxrss / 2**10
    size = output.stat().st_size / 2**20
    output.unlink()
    cpu = usage.ru_utime + usage.ru_stime
    return Run(file_format, per, rows, seconds, cpu, peak, size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export",
        description="Measure `tracker export`: rows per second and peak memory, on SQLite.",
    )
    parser.add_argument("--legs", type=int, default=1_000_000, metavar="N", help="calls to load")
    parser.add_argument(
        "--formats", default="csv", metavar="csv,jsonl,parquet", help="formats to export to"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        help="where the SQLite file and the exports go (default: the system's temporary directory)",
    )
    parser.add_argument(
        "--database",
        type=Path,
        metavar="FILE",
        help="keep the loaded SQLite database in FILE, and use it as it is when it exists "
        "(to measure again without loading again)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    if args.legs < 1:
        parser.error("--legs must be positive")
    if not formats or set(formats) - {"csv", "jsonl", "parquet"}:
        parser.error("--formats takes csv, jsonl and parquet, separated by commas")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="tracker-export-", dir=args.sqlite_dir) as directory:
        database = args.database or Path(directory) / "calls.db"
        url = f"sqlite:///{database.resolve()}"
        loading = None
        if not database.exists():
            loading = load(url, args.legs, args.seed, progress)
            progress(f"loaded {args.legs:,} legs in {loading:.0f} s")
        runs = []
        for file_format in formats:
            for per in ("leg", "conversation"):
                run = export(url, file_format, per, Path(directory) / f"out.{file_format}")
                progress(f"{file_format} per {per}: {run.rows:,} rows, {run.seconds:.1f} s")
                runs.append(run)
    legs = runs[0].rows
    report = {
        "legs": legs,
        "load_seconds": loading,
        "sqlite": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
        "runs": [
            {
                **asdict(run),
                "rows_per_second": run.rows_per_second,
                "rows_per_cpu_second": run.rows_per_cpu_second,
            }
            for run in runs
        ],
        "targets": {"rows_per_second": TARGET_ROWS_PER_SECOND, "peak_rss_mb": TARGET_PEAK_RSS_MB},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    loaded = "" if loading is None else f", loaded in {loading:.0f} s"
    print(f"{legs:,} legs on SQLite {sqlite3.sqlite_version}{loaded}")
    print("| format | per | rows | seconds | rows/s | rows/CPU s | peak RSS (MB) | file (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(
            f"| {run.file_format} | {run.per} | {run.rows:,} | {run.seconds:.1f} | "
            f"{run.rows_per_second:,.0f} | {run.rows_per_cpu_second:,.0f} | "
            f"{run.peak_rss_mb:.0f} | {run.file_mb:.0f} |"
        )
    leg_csv = next((run for run in runs if (run.file_format, run.per) == ("csv", "leg")), None)
    if leg_csv is not None:
        fast = leg_csv.rows_per_second >= TARGET_ROWS_PER_SECOND
        small = max(run.peak_rss_mb for run in runs) < TARGET_PEAK_RSS_MB
        print(
            f"targets: leg CSV >= {TARGET_ROWS_PER_SECOND:,} rows/s {'met' if fast else 'missed'}"
            f" ({leg_csv.rows_per_second:,.0f}); peak RSS < {TARGET_PEAK_RSS_MB} MB in every run "
            f"{'met' if small else 'missed'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
