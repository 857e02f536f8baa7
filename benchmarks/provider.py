"""How fast the sweep asks Bandwidth about the calls it would expire, and in how much memory.

    python -m benchmarks.provider                      # 10,000 live calls, SQLite, 1 and 4 threads
    python -m benchmarks.provider --calls 50000 --db sqlite --db postgresql+psycopg://postgres@127.0.0.1/postgres

Run from the repository root (a development tool, outside the wheel). Each run loads `--calls`
live calls into a fresh database: whole calls from `tracker.testing.conversation` (inbound and
outbound, answered or not, some with machine detection) started between a day and five hours
ago, their terminal callback withheld, as if lost. Bandwidth is `tracker.testing.FakeBandwidth`
in a process of its own (so its HTTP serving does not share the sweep's interpreter lock), and
it knows the calls as Bandwidth would: most disconnected (the withheld callback's facts), some
still active, some not at all (404). Then `Tracker.sweep(4h, resolve=BandwidthResolver)` runs
in a process of its own too, with the client's default settings but its `concurrency` (one
look-up at a time, then the default), and once without a resolver for comparison.

Each run reports the calls swept, the look-ups a second (requests the client sent, over the
sweep's wall time), the requests by outcome on both sides, the CPU of the sweeping process and of
the fake per look-up, and memory: the sweeping process's resident set when the sweep began and
its peak during the sweep (Linux's `VmHWM`, reset just before through `/proc/self/clear_refs`),
so the growth is the sweep's own and not the imports'. Without `/proc`, the peak is
`getrusage`'s `ru_maxrss` over the process's life. A run whose sweep does not end each call as
Bandwidth says fails the benchmark: a fast wrong sweep is no figure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Literal

from benchmarks.bench import _workers
from benchmarks.report import describe_machine
from benchmarks.runs import Databases
from tracker import Tracker
from tracker.bandwidth import BandwidthClient, BandwidthResolver
from tracker.testing import FakeBandwidth, call_state_from, conversation

OLDER_THAN: Final = timedelta(hours=4)
# What Bandwidth says of the calls the sweep asks about: a share of them each.
MIX: Final = {"disconnected": 0.85, "active": 0.10, "unknown": 0.05}
LOAD_BATCH: Final = 1000
DEFAULT_CONCURRENCY: Final[int] = (
    inspect.signature(BandwidthClient).parameters["concurrency"].default
)
# Processes started fresh (not forked from a parent holding the loaded calls), so that each one's
# memory and CPU are its own.
_PROCESSES: Final = multiprocessing.get_context("spawn")


# --- the calls ---------------------------------------------------------------------------------


@dataclass
class LostEnds:
    """Live calls to load (their callbacks but the last), and what Bandwidth knows of them."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)


def lost_ends(count: int, seed: int, now: datetime) -> LostEnds:
    """`count` calls started between a day and five hours before `now`, each with its terminal
    callback withheld, and Bandwidth's call state of each (`MIX`)."""
    draw = random.Random(seed)
    calls = LostEnds()
    span = timedelta(hours=19) / count
    for index in range(count):
        direction: Literal["inbound", "outbound"] = (
            "inbound" if draw.random() < 0.55 else "outbound"
        )
        answered = direction == "outbound" or draw.random() < 0.8
        talk = conversation(
            direction,
            answered=answered,
            machine_detection="human" if direction == "outbound" and draw.random() < 0.2 else None,
            start=now - timedelta(hours=24) + index * span,
        )
        *received, lost = talk.bodies
        calls.bodies += received
        told = draw.choices(list(MIX), weights=list(MIX.values()))[0]
        calls.expected[told] += 1
        if told == "disconnected":
            calls.states.append(call_state_from(lost))
        elif told == "active":
            state = "answered" if answered else "initiated"
            calls.states.append(
                call_state_from(lost, state=state, endTime=..., disconnectCause=...)
            )
    return calls


def load(url: str, bodies: Sequence[dict[str, Any]]) -> float:
    """Apply the bodies; the seconds it took."""
    began = time.perf_counter()
    with Tracker(url, durable=False, timeout=None) as tracker:
        tracker.upgrade()
        for first in range(0, len(bodies), LOAD_BATCH):
            results = tracker.apply_many(bodies[first : first + LOAD_BATCH])
            outcomes = {result.outcome.value for result in results}
            if outcomes != {"applied"}:
                raise RuntimeError(f"the generated bodies were not all applied: {outcomes}")
    return time.perf_counter() - began


# --- the fake, in a process of its own ---------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve_fake(commands: Connection, states: list[dict[str, Any]], latency: float) -> None:
    """The fake's process: answers `reset` (forget the requests, start counting CPU) and
    `report` (the Voice API requests by status since, the most in flight at once, the CPU
    spent), until `stop`. Each answer waits `latency` seconds first, when more than 0."""
    with FakeBandwidth() as fake:
        fake.put_many(states)
        if latency > 0:
            fake.slow(delay=latency, times=None)
        commands.send(fake.environment())
        since = _cpu_seconds()
        while True:
            command = commands.recv()
            if command == "reset":
                fake.reset_requests()
                since = _cpu_seconds()
                commands.send(None)
            elif command == "report":
                statuses = Counter(
                    str(request.status)
                    for request in fake.requests
                    if request.path.startswith("/api/v2/")
                )
                commands.send((dict(statuses), fake.max_in_flight, _cpu_seconds() - since))
            else:
                return


class FakeProcess:
    """`FakeBandwidth` holding `states`, served by a child process, each answer `latency`
    seconds late (a round trip to Bandwidth's data centre)."""

    def __init__(self, states: list[dict[str, Any]], latency: float = 0.0) -> None:
        self.commands, theirs = _PROCESSES.Pipe()
        self.process = _PROCESSES.Process(
            target=_serve_fake, args=(theirs, states, latency), daemon=True
        )
        self.process.start()
        theirs.close()
        self.environment: dict[str, str] = self.commands.recv()

    def ask(self, command: str) -> Any:
        self.commands.send(command)
        return self.commands.recv()

    def close(self) -> None:
        self.commands.send("stop")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


# --- the sweep, in a process of its own --------------------------------------------------------


def _memory_kib() -> dict[str, int] | None:
    """This process's resident set and its peak, from /proc; None without /proc."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return {name: int(value) for name, value in found.items()}


def _reset_peak() -> bool:
    """Start Linux's peak resident set (`VmHWM`) afresh from the current one."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _sweep(answer: Connection, url: str, environment: dict[str, str], concurrency: int) -> None:
    """The sweeping process: one sweep of every call older than `OLDER_THAN`, with a
    `BandwidthResolver` of `concurrency` threads (none when 0); its figures sent back."""
    resolver = (
        BandwidthResolver.from_environment(environment, concurrency=concurrency)
        if concurrency
        else None
    )
    with Tracker(url) as tracker:
        tracker.count_calls()  # connected, the schema checked: not the sweep's cost
        before = _memory_kib()
        from_proc = before is not None and _reset_peak()
        cpu = _cpu_seconds()
        began = time.perf_counter()
        report = tracker.sweep(OLDER_THAN, resolve=resolver)
        seconds = time.perf_counter() - began
        cpu = _cpu_seconds() - cpu
        after = _memory_kib()
    if from_proc and before is not None and after is not None:
        rss, peak, measured = before["VmRSS"], after["VmHWM"], "VmHWM"
    else:
        rss, peak = 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak //= 1024 if sys.platform == "darwin" else 1
        measured = "ru_maxrss"
    answer.send(
        {
            "checked": report.checked,
            "resolved": len(report.resolved),
            "kept": len(report.kept),
            "expired": len(report.expired),
            "failed": len(report.failed),
            "seconds": seconds,
            "cpu_seconds": cpu,
            "requests": dict(resolver.requests) if resolver is not None else {},
            "rss_before_mb": rss / 1024,
            "peak_rss_mb": peak / 1024,
            "memory_from": measured,
        }
    )
    if resolver is not None:
        resolver.close()


def sweep_in_child(url: str, environment: dict[str, str], concurrency: int) -> dict[str, Any]:
    mine, theirs = _PROCESSES.Pipe()
    child = _PROCESSES.Process(target=_sweep, args=(theirs, url, environment, concurrency))
    child.start()
    theirs.close()
    try:
        figures: dict[str, Any] = mine.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"the sweeping process failed (exit code {child.exitcode})") from None
    child.join()
    return figures


# --- the runs ----------------------------------------------------------------------------------


@dataclass
class SweepRun:
    database: str
    # Threads asking Bandwidth at once; 0: the sweep without a resolver, for comparison.
    concurrency: int
    calls: int
    checked: int
    resolved: int
    kept: int
    expired: int
    failed: int
    seconds: float
    cpu_seconds: float
    requests: dict[str, int]
    fake_statuses: dict[str, int]
    fake_max_in_flight: int
    fake_cpu_seconds: float
    rss_before_mb: float
    peak_rss_mb: float
    memory_from: str

    @property
    def lookups(self) -> int:
        return sum(self.requests.values())

    @property
    def lookups_per_second(self) -> float:
        return self.lookups / self.seconds

    @property
    def calls_per_second(self) -> float:
        return self.checked / self.seconds

    @property
    def growth_mb(self) -> float:
        return self.peak_rss_mb - self.rss_before_mb

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "lookups": self.lookups,
            "lookups_per_second": self.lookups_per_second,
            "calls_per_second": self.calls_per_second,
            "growth_mb": self.growth_mb,
        }


def _checked(run: SweepRun, expected: Counter[str]) -> SweepRun:
    """`run`, when its sweep ended each call as Bandwidth says; a `RuntimeError` otherwise."""
    settled = (run.resolved, run.kept, run.expired, run.failed)
    if run.concurrency == 0:
        wanted = (0, 0, run.calls, 0)
    else:
        wanted = (expected["disconnected"], expected["active"], expected["unknown"], 0)
    if run.checked != run.calls or settled != wanted:
        raise RuntimeError(
            f"the sweep on {run.database} (concurrency {run.concurrency}) checked {run.checked} "
            f"of {run.calls} calls and resolved, kept, expired, failed {settled}, not {wanted}"
        )
    return run


def run(
    targets: Sequence[str],
    *,
    calls: int,
    concurrencies: Sequence[int],
    repeat: int,
    seed: int,
    directory: Path,
    latency: float = 0.0,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    lost = lost_ends(calls, seed, datetime.now(UTC))
    progress(f"{calls:,} live calls; Bandwidth says {dict(lost.expected)}")
    fake = FakeProcess(lost.states, latency)
    runs: list[SweepRun] = []
    backends = [Databases(target, directory) for target in targets]
    try:
        for repetition in range(repeat):
            for databases in backends:
                for concurrency in (*concurrencies, 0):
                    with databases.fresh() as url:
                        loaded = load(url, lost.bodies)
                        fake.ask("reset")
                        figures = sweep_in_child(url, fake.environment, concurrency)
                    statuses, in_flight, fake_cpu = fake.ask("report")
                    done = _checked(
                        SweepRun(
                            database=databases.label,
                            concurrency=concurrency,
                            calls=calls,
                            fake_statuses=statuses,
                            fake_max_in_flight=in_flight,
                            fake_cpu_seconds=fake_cpu,
                            **figures,
                        ),
                        lost.expected,
                    )
                    runs.append(done)
                    progress(
                        f"[{repetition + 1}/{repeat}] {databases.label} concurrency "
                        f"{concurrency or 'none'}: loaded in {loaded:.1f} s, swept in "
                        f"{done.seconds:.1f} s, {done.lookups_per_second:,.0f} look-ups/s"
                    )
        versions = [v for v in (b.server_version() for b in backends) if v is not None]
    finally:
        fake.close()
    return {
        "machine": describe_machine(versions[0] if versions else None),
        "calls": calls,
        "older_than_hours": OLDER_THAN / timedelta(hours=1),
        "bandwidth_says": dict(lost.expected),
        "latency_ms": latency * 1000,
        "repeat": repeat,
        "runs": [one.as_json() for one in runs],
    }


def as_text(report: Mapping[str, Any]) -> str:
    """The runs as a Markdown table, the median of the repetitions of each."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for one in report["runs"]:
        groups.setdefault((one["database"], one["concurrency"]), []).append(one)
    says = ", ".join(f"{number:,} {name}" for name, number in report["bandwidth_says"].items())
    lines = [
        f"{report['calls']:,} live calls older than {report['older_than_hours']:g} h; Bandwidth "
        f"says {says}; each answer {report['latency_ms']:g} ms late; median of "
        f"{report['repeat']}",
        "",
        "| database | resolver threads | seconds | calls/s | look-ups | look-ups/s | sweep CPU µs "
        "per call | fake CPU µs per look-up | in flight | RSS at start MB | peak MB | growth MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(float(one[key]) for one in runs)

    for (database, concurrency), runs in groups.items():
        lookups = median(runs, "lookups")
        fake_cpu = f"{1e6 * median(runs, 'fake_cpu_seconds') / lookups:,.0f}" if lookups else ""
        lines.append(
            f"| {database} | {concurrency or 'no resolver'} | {median(runs, 'seconds'):.2f} | "
            f"{median(runs, 'calls_per_second'):,.0f} | {lookups:,.0f} | "
            f"{median(runs, 'lookups_per_second'):,.0f} | "
            f"{1e6 * median(runs, 'cpu_seconds') / runs[0]['checked']:,.0f} | {fake_cpu} | "
            f"{max(one['fake_max_in_flight'] for one in runs)} | "
            f"{median(runs, 'rss_before_mb'):.0f} | {median(runs, 'peak_rss_mb'):.0f} | "
            f"{median(runs, 'growth_mb'):.1f} |"
        )
    lines.append("")
    for (database, concurrency), runs in groups.items():
        if concurrency:
            client = ", ".join(f"{k} {v:,}" for k, v in sorted(runs[0]["requests"].items()))
            fake = ", ".join(f"{k} {v:,}" for k, v in sorted(runs[0]["fake_statuses"].items()))
            lines.append(
                f"{database}, {concurrency} thread(s): the client's requests {client}; the "
                f"fake answered {fake}"
            )
    lines.append(f"memory: {report['runs'][0]['memory_from']} of the sweeping process")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.provider",
        description="Measure Tracker.sweep with the Bandwidth resolver against a fake of "
        "Bandwidth's Voice API in another process: look-ups per second and memory.",
    )
    parser.add_argument(
        "--db",
        action="append",
        metavar="sqlite|URL",
        help="'sqlite' (files in a temporary directory; the default) or a PostgreSQL URL whose "
        "server may create and drop databases named tracker_bench_*; repeat to run several",
    )
    parser.add_argument("--calls", type=int, default=10_000, metavar="N", help="live calls")
    parser.add_argument(
        "--concurrency",
        type=_workers,
        default=[1, DEFAULT_CONCURRENCY],
        metavar=f"1,{DEFAULT_CONCURRENCY}",
        help="look-ups in flight at once, one run each (default: 1 and the client's default, "
        f"{DEFAULT_CONCURRENCY}); a run without a resolver is added for comparison",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds the fake waits before each answer, as a round trip to Bandwidth "
        "would take (default: 0, loopback only)",
    )
    parser.add_argument("--repeat", type=int, default=1, metavar="R")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        help="where the SQLite files go (default: the system's temporary directory)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1:
        parser.error("--calls and --repeat must be positive")
    if not 0 <= args.latency < 60_000:
        parser.error("--latency takes milliseconds, 0 or more and under a minute")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="tracker-provider-", dir=args.sqlite_dir) as folder:
        report = run(
            args.db or ["sqlite"],
            calls=args.calls,
            concurrencies=args.concurrency,
            repeat=args.repeat,
            seed=args.seed,
            directory=Path(folder),
            latency=args.latency / 1000,
            progress=progress,
        )
    print(json.dumps(report, indent=2) if args.json else as_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
