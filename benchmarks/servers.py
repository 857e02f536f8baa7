"""Several `tracker serve` processes on one PostgreSQL, against one, under many clients.

    python -m benchmarks.endpoint --database postgresql+psycopg://postgres@127.0.0.1/postgres \\
        --servers 1,4 --clients 64

`tracker serve` does not share its port with another process (uvicorn, as the tracker starts
it, sets no SO_REUSEPORT), so each server listens on a loopback port of its own and the clients'
keep-alive connections are spread over them in turn, as a load balancer in front of them would
spread Bandwidth's callbacks. The deliveries are the curve's (`curve.shared_conversations`):
each client posts the next delivery as soon as it is free, so the callbacks of one conversation,
and a body's two deliveries, go at once to different clients and different servers.

Each run starts the servers on a fresh database, posts a warm-up, waits until the server has
published its count of transactions, then times the deliveries (`endpoint.run_http`); once the
servers have stopped it reads the transactions rolled back (`transactions`) and compares the
records with a serial replay (`exactness`). A run that differs is reported with its first
difference, and the benchmark exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url

from benchmarks.curve import shared_conversations
from benchmarks.endpoint import HTTP_WARMUP_DELIVERIES, HttpFigure, HttpRun, run_http
from benchmarks.exactness import Records, exactness_lines, serial_replay
from benchmarks.report import describe_machine
from benchmarks.runs import Databases
from benchmarks.transactions import PUBLISH_SECONDS, Counts, ServerTransactions
from tracker.testing import realistic_bodies

SERVER_COUNTS: Final = (1, 4)
CLIENTS: Final = 64
DELIVERIES: Final = 8000


@dataclass
class ServersFigure(HttpFigure):
    """The runs with one number of servers: the endpoint's figures, and per run the
    transactions rolled back per commit and the first difference from the serial replay."""

    servers: int = 1
    rollbacks_per_commit: list[float] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.differences


@dataclass
class ServersReport:
    machine: dict[str, str]
    deliveries: int
    duplicates: int
    repeat: int
    figures: list[ServersFigure]

    @property
    def exact(self) -> bool:
        return all(figure.exact for figure in self.figures)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "deliveries": self.deliveries,
            "duplicates": self.duplicates,
            "repeat": self.repeat,
            "servers_share_a_port": False,
            "runs": [
                {
                    "servers": figure.servers,
                    "clients": figure.clients,
                    "deliveries_per_second": [run.rate for run in figure.runs],
                    "median": figure.rate,
                    "p50_ms": 1000 * figure.percentile(0.5),
                    "p90_ms": 1000 * figure.percentile(0.9),
                    "p99_ms": 1000 * figure.percentile(0.99),
                    "deliveries_per_commit": figure.per_commit,
                    "rollbacks_per_commit": figure.rollbacks_per_commit,
                    "client_cpu_us": figure.cpu_us("client"),
                    "server_cpu_us": figure.cpu_us("server"),
                    "statuses": dict(figure.runs[0].statuses),
                    "outcomes": dict(figure.runs[0].outcomes),
                    "exact": figure.exact,
                    "differences": figure.differences,
                }
                for figure in self.figures
            ],
            "exact": self.exact,
        }

    def as_text(self) -> str:
        lines = [
            f"{self.deliveries:,} deliveries per run over HTTP ({self.duplicates} of them a "
            "body's second delivery), conversations whose callbacks are posted at once by "
            f"different clients; median of {self.repeat}; each server on a port of its own, the "
            "clients spread over them in turn (no shared port); latency from the request "
            "written to the answer read; rolled back per commit: pg_stat_database "
            "xact_rollback of the run's database over the servers' group commits",
            "machine: " + ", ".join(f"{key} {value}" for key, value in self.machine.items()),
            "",
            "| servers | clients | deliveries/s (min-max) | p50 ms | p90 ms | p99 ms "
            "| per commit | rolled back per commit | server CPU µs | exact |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for figure in self.figures:
            rates = [run.rate for run in figure.runs]
            lines.append(
                f"| {figure.servers} | {figure.clients} | {figure.rate:,.0f} "
                f"({min(rates):,.0f}-{max(rates):,.0f}) "
                f"| {1000 * figure.percentile(0.5):.1f} | {1000 * figure.percentile(0.9):.1f} "
                f"| {1000 * figure.percentile(0.99):.1f} | {figure.per_commit:.1f} "
                f"| {statistics.median(figure.rollbacks_per_commit):.2f} "
                f"| {figure.cpu_us('server'):,.0f} | {'yes' if figure.exact else 'NO'} |"
            )
        lines.append("")
        for figure in self.figures:
            odd = {status: n for status, n in figure.runs[0].statuses.items() if status != 204}
            if odd:
                lines.append(f"note: {figure.servers} servers: statuses {odd}")
            other = {key: n for key, n in figure.runs[0].outcomes.items() if key != "applied"}
            if other:
                lines.append(f"outcomes with {figure.servers} servers: {other}")
        differences = [
            (f"{figure.servers} servers", difference)
            for figure in self.figures
            for difference in figure.differences
        ]
        lines += exactness_lines(self.exact, "run", differences)
        return "\n".join(lines)


def run_servers(
    target: str,
    directory: Path,
    *,
    servers: Sequence[int] = SERVER_COUNTS,
    clients: int = CLIENTS,
    deliveries: int = DELIVERIES,
    repeat: int = 1,
    seed: int = 1,
    publish_seconds: float = PUBLISH_SECONDS,
    progress: Callable[[str], None] = lambda _line: None,
) -> ServersReport:
    databases = Databases(target, directory)
    if databases.backend != "postgresql":
        raise SystemExit("several servers on one database: give a PostgreSQL --database URL")
    bodies = shared_conversations(deliveries, seed)
    warmup = realistic_bodies(HTTP_WARMUP_DELIVERIES, seed + 2_000_003)
    with databases.fresh() as url:
        progress(f"serial replay of {len(warmup) + len(bodies):,} deliveries for the check")
        reference = serial_replay(url, [*warmup, *bodies])
    figures = {count: ServersFigure("postgresql", clients, servers=count) for count in servers}
    for repetition in range(repeat):
        for count, figure in figures.items():
            run, rolled, difference = _run_once(
                databases, count, clients, bodies, warmup, reference, publish_seconds
            )
            figure.runs.append(run)
            figure.rollbacks_per_commit.append(rolled / run.commits if run.commits else 0.0)
            if difference is not None:
                figure.differences.append(difference)
            progress(
                f"[{repetition + 1}/{repeat}] {count} servers, {clients} clients: "
                f"{run.rate:,.0f} deliveries/s, "
                f"{figure.rollbacks_per_commit[-1]:.2f} rolled back per commit"
                + (", exact" if difference is None else ", NOT EXACT")
            )
    return ServersReport(
        machine=describe_machine(databases.server_version()),
        deliveries=len(bodies),
        duplicates=len(bodies) - len(set(bodies)),
        repeat=repeat,
        figures=list(figures.values()),
    )


def _run_once(
    databases: Databases,
    servers: int,
    clients: int,
    bodies: Sequence[bytes],
    warmup: Sequence[bytes],
    reference: Records,
    publish_seconds: float,
) -> tuple[HttpRun, int, str | None]:
    """One run on a fresh database: its figures, the transactions rolled back in its timed
    part, and its first difference from the serial replay (None: exact)."""
    with databases.fresh() as url:
        name = make_url(url).database
        assert name is not None
        transactions = ServerTransactions(databases.admin, name)
        before: list[Counts] = []

        def published() -> None:
            before.append(transactions.read_once_published(publish_seconds))

        run = run_http(
            url, databases.directory, bodies, warmup, clients, servers=servers,
            before_start=published,
        )  # fmt: skip
        rolled = (transactions.read_once_closed() - before[0]).rollbacks
        difference = reference.first_difference(Records.read(url, [*warmup, *bodies]))
    return run, rolled, difference


def _counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,4, not {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers like 1,4")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.endpoint",
        description="Drive 1 and several `tracker serve` processes on one PostgreSQL database "
        "with many concurrent clients posting the callbacks of shared calls.",
    )
    parser.add_argument(
        "--database",
        "--db",
        required=True,
        metavar="URL",
        help="a PostgreSQL URL whose server may create and drop databases named tracker_bench_*",
    )
    parser.add_argument("--servers", type=_counts, default=list(SERVER_COUNTS), metavar="1,4")
    parser.add_argument("--clients", type=int, default=CLIENTS, metavar="N")
    parser.add_argument(
        "--deliveries", type=int, default=DELIVERIES, metavar="N", help="distinct ones per run"
    )
    parser.add_argument("--repeat", type=int, default=1, metavar="R")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--publish-wait",
        type=float,
        default=PUBLISH_SECONDS,
        metavar="SECONDS",
        help="how long the servers stay idle after the warm-up before the server's count of "
        "transactions is read (shorter makes the rollback counts approximate)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.clients, args.deliveries, args.repeat) < 1:
        parser.error("--clients, --deliveries and --repeat must be positive")
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as directory:
        report = run_servers(
            args.database,
            Path(directory),
            servers=args.servers,
            clients=args.clients,
            deliveries=args.deliveries,
            repeat=args.repeat,
            seed=args.seed,
            publish_seconds=args.publish_wait,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    print(json.dumps(report.as_json(), indent=2) if args.json else report.as_text())
    return 0 if report.exact else 1
