"""The benchmark's figures as JSON and as Markdown tables, with the project's targets."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import subprocess
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from benchmarks.endpoint import HTTP_TARGET, HttpFigure
from benchmarks.measures import PARSE_TARGET, WAL_FRAMES_TARGET, ParseFigures, WalFrames
from benchmarks.runs import Mode

FLOOR_OF: Final[dict[Mode, Mode]] = {"apply": "floor", "apply_many": "floor_batched"}
# The project's targets: (backend, workers, mode) -> least ratio to the floor.
TARGETS: Final[dict[tuple[str, int, Mode], float]] = {
    ("sqlite", 1, "apply"): 0.45,
    ("sqlite", 1, "apply_many"): 0.35,
    ("postgresql", 4, "apply"): 0.6,
}


@dataclass
class Figure:
    """The runs of one mode on one backend with one number of workers."""

    backend: str
    workers: int
    mode: Mode
    rates: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    # CPU seconds per delivery in each repetition: of the applying processes, and of a local
    # PostgreSQL server (none on SQLite). On a shared machine this, not the rate, says where
    # the time goes: with 4 processes on 2 cores the rate is what the CPU allows.
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def cpu_us(self, side: str) -> float | None:
        """Median CPU per delivery, µs, of the clients or of the server (None: not measured)."""
        values = self.client_cpu if side == "client" else self.server_cpu
        return 1e6 * statistics.median(values) if values else None


@dataclass
class Report:
    machine: dict[str, str]
    deliveries: int
    repeat: int
    batch: int
    figures: list[Figure]
    parse: ParseFigures | None
    per_event_type: dict[str, dict[str, float]]  # database -> event type -> µs per apply
    wal_frames: WalFrames | None  # when SQLite was among the databases
    peak_rss_mb: float
    worker_peak_rss_mb: float | None

    def ratio(self, figure: Figure) -> float | None:
        floor_mode = FLOOR_OF.get(figure.mode)
        if floor_mode is None:
            return None
        floor = self._find(figure.backend, figure.workers, floor_mode)
        if floor is None:
            return None
        # Each repetition ran the tracker right after its floor: compare within a repetition, so
        # a neighbour's load that slowed both cancels out, then take the median.
        return statistics.median(
            tracker / floor for tracker, floor in zip(figure.rates, floor.rates, strict=True)
        )

    def _find(self, backend: str, workers: int, mode: Mode) -> Figure | None:
        for figure in self.figures:
            if (figure.backend, figure.workers, figure.mode) == (backend, workers, mode):
                return figure
        return None

    def as_json(self) -> dict[str, Any]:
        rows = []
        for figure in self.figures:
            ratio = self.ratio(figure)
            target = TARGETS.get((figure.backend, figure.workers, figure.mode))
            rows.append(
                {
                    "backend": figure.backend,
                    "workers": figure.workers,
                    "mode": figure.mode,
                    "deliveries_per_second": figure.rates,
                    "median": figure.median,
                    "ratio_to_floor": ratio,
                    "target": target,
                    "passed": None if target is None or ratio is None else ratio >= target,
                    "outcomes": dict(figure.outcomes),
                    "client_cpu_us": figure.cpu_us("client"),
                    "server_cpu_us": figure.cpu_us("server"),
                }
            )
        parse = None
        if self.parse is not None:
            parse = {
                "tracker_us": self.parse.tracker_us,
                "plain_us": self.parse.plain_us,
                "ratio": self.parse.ratio,
                "target": PARSE_TARGET,
                "passed": self.parse.ratio <= PARSE_TARGET,
            }
        return {
            "machine": self.machine,
            "deliveries": self.deliveries,
            "repeat": self.repeat,
            "batch": self.batch,
            "runs": rows,
            "parse": parse,
            "apply_us_per_event_type": self.per_event_type,
            "wal_frames_per_delivery": None
            if self.wal_frames is None
            else {
                **asdict(self.wal_frames),
                "target": WAL_FRAMES_TARGET,
                "passed": self.wal_frames.passed,
            },
            "peak_rss_mb": self.peak_rss_mb,
            "worker_peak_rss_mb": self.worker_peak_rss_mb,
        }

    def as_text(self) -> str:
        """A Markdown table, ready to paste into docs/benchmark.md."""
        lines = [
            f"{self.deliveries} distinct deliveries per run, median of {self.repeat} interleaved "
            f"repetitions, batches of {self.batch}; 'of floor' is the median over repetitions of "
            "the tracker's rate over its floor's in the same repetition",
            "machine: " + ", ".join(f"{key} {value}" for key, value in self.machine.items()),
            "",
            "| database | processes | run | deliveries/s (min-max) | client CPU µs "
            "| server CPU µs | of floor | target | |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for figure in self.figures:
            ratio = self.ratio(figure)
            target = TARGETS.get((figure.backend, figure.workers, figure.mode))
            verdict = "" if target is None or ratio is None else _verdict(ratio >= target)
            client, server = figure.cpu_us("client"), figure.cpu_us("server")
            lines.append(
                f"| {figure.backend} | {figure.workers} | {_MODE_LABELS[figure.mode](self.batch)} "
                f"| {figure.median:,.0f} ({min(figure.rates):,.0f}-{max(figure.rates):,.0f}) "
                f"| {'' if client is None else f'{client:,.0f}'} "
                f"| {'' if server is None else f'{server:,.0f}'} "
                f"| {'' if ratio is None else f'{ratio:.2f}'} "
                f"| {'' if target is None else f'>= {target:.2f}'} | {verdict} |"
            )
        lines.append("")
        if self.parse is not None:
            lines.append(
                f"parsing one body: tracker.parsing.read {self.parse.tracker_us:.1f} µs, plain "
                f"pydantic model_validate_json {self.parse.plain_us:.1f} µs: "
                f"{self.parse.ratio:.2f}x (target <= {PARSE_TARGET}x) "
                f"{_verdict(self.parse.ratio <= PARSE_TARGET)}"
            )
        if self.wal_frames is not None:
            lines.append(
                f"WAL frames per delivery on SQLite (1 commit each): tracker "
                f"{self.wal_frames.tracker:.1f}, floor {self.wal_frames.floor:.1f} "
                f"(target <= {WAL_FRAMES_TARGET}) {_verdict(self.wal_frames.passed)}"
            )
        for database, per_type in self.per_event_type.items():
            lines.append(
                f"apply per event type, {database}, µs: "
                + ", ".join(f"{event_type} {us:,.0f}" for event_type, us in per_type.items())
            )
        memory = f"peak RSS: {self.peak_rss_mb:.0f} MB (benchmark process)"
        if self.worker_peak_rss_mb is not None:
            memory += f", {self.worker_peak_rss_mb:.0f} MB (largest worker process)"
        lines.append(memory)
        for figure in self.figures:
            odd = {key: count for key, count in figure.outcomes.items() if key != "applied"}
            if odd:
                lines.append(
                    f"note: {figure.backend} {figure.mode} x{figure.workers}: outcomes other "
                    f"than applied: {odd}"
                )
        return "\n".join(lines)


_MODE_LABELS: Final[dict[Mode, Callable[[int], str]]] = {
    "floor": lambda _batch: "floor, 1 commit per delivery",
    "apply": lambda _batch: "tracker.apply",
    "floor_batched": lambda batch: f"floor, 1 commit per {batch}",
    "apply_many": lambda batch: f"tracker.apply_many({batch})",
}


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def describe_machine(postgresql: str | None) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    machine = {
        "platform": platform.platform(),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    if postgresql is not None:
        machine["postgresql"] = postgresql
    commit = _commit()
    if commit is not None:
        machine["commit"] = commit
    for package in ("tracker", "sqlalchemy", "pydantic", "psycopg"):
        with suppress(metadata.PackageNotFoundError):
            machine[package] = metadata.version(package)
    return machine


def _commit() -> str | None:
    """The checkout's commit, `+changes` when its tracked files differ from it; None outside
    git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changed else "")


# --- the webhook endpoint ----------------------------------------------------------------------


@dataclass
class EndpointReport:
    """`tracker serve` with 1 and 32 clients beside in-process `apply`, per database."""

    machine: dict[str, str]
    deliveries: int
    repeat: int
    apply_rates: dict[str, list[float]]  # database -> one-by-one apply, per repetition
    figures: list[HttpFigure]

    def ratio(self, figure: HttpFigure) -> float:
        """The median over repetitions of the endpoint's rate over `apply`'s in the same one."""
        return statistics.median(
            run.rate / apply
            for run, apply in zip(figure.runs, self.apply_rates[figure.backend], strict=True)
        )

    def target(self, figure: HttpFigure) -> float | None:
        return HTTP_TARGET if (figure.backend, figure.clients) == ("sqlite", 32) else None

    def as_json(self) -> dict[str, Any]:
        rows = []
        for figure in self.figures:
            target = self.target(figure)
            ratio = self.ratio(figure)
            rows.append(
                {
                    "backend": figure.backend,
                    "clients": figure.clients,
                    "deliveries_per_second": [run.rate for run in figure.runs],
                    "median": figure.rate,
                    "p50_ms": 1000 * figure.percentile(0.5),
                    "p99_ms": 1000 * figure.percentile(0.99),
                    "client_cpu_us": figure.cpu_us("client"),
                    "server_cpu_us": figure.cpu_us("server"),
                    "deliveries_per_commit": figure.per_commit,
                    "ratio_to_apply": ratio,
                    "target": target,
                    "passed": None if target is None else ratio >= target,
                    "statuses": dict(figure.runs[0].statuses),
                    "outcomes": dict(figure.runs[0].outcomes),
                }
            )
        return {
            "machine": self.machine,
            "deliveries": self.deliveries,
            "repeat": self.repeat,
            "apply_deliveries_per_second": self.apply_rates,
            "http": rows,
        }

    def as_text(self) -> str:
        lines = [
            f"{self.deliveries} distinct deliveries per run over HTTP to `tracker serve`, median "
            f"of {self.repeat} repetitions; 'of apply' is the median over repetitions of the "
            "endpoint's rate over one-by-one apply in the same process and repetition",
            "machine: " + ", ".join(f"{key} {value}" for key, value in self.machine.items()),
            "",
            "| database | run | deliveries/s | p50 ms | p99 ms | client CPU µs | server CPU µs "
            "| per commit | of apply | target | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for backend, rates in self.apply_rates.items():
            lines.append(
                f"| {backend} | tracker.apply, in process | {statistics.median(rates):,.0f} "
                "| | | | | 1 | | | |"
            )
            for figure in self.figures:
                if figure.backend != backend:
                    continue
                target = self.target(figure)
                ratio = self.ratio(figure)
                lines.append(
                    f"| {backend} | HTTP, {figure.clients} client"
                    f"{'' if figure.clients == 1 else 's'} | {figure.rate:,.0f} "
                    f"| {1000 * figure.percentile(0.5):.1f} | {1000 * figure.percentile(0.99):.1f} "
                    f"| {figure.cpu_us('client'):,.0f} | {figure.cpu_us('server'):,.0f} "
                    f"| {figure.per_commit:.1f} | {ratio:.2f} "
                    f"| {'' if target is None else f'>= {target:.1f}'} "
                    f"| {'' if target is None else _verdict(ratio >= target)} |"
                )
        for figure in self.figures:
            odd = {status: n for status, n in figure.runs[0].statuses.items() if status != 204}
            if odd:
                lines.append(f"note: {figure.backend} x{figure.clients}: statuses {odd}")
            other = {key: n for key, n in figure.runs[0].outcomes.items() if key != "applied"}
            if other:
                lines.append(
                    f"note: {figure.backend} x{figure.clients}: outcomes other than applied: "
                    f"{other}"
                )
        return "\n".join(lines)
