"""Many processes on one PostgreSQL: the tracker's rate from 1, 2, 4 and 8 processes writing
the same calls at once, each beside the floor at the same number of processes.

    python -m benchmarks.bench --database postgresql+psycopg://postgres@127.0.0.1/postgres \\
        --processes 1,2,4,8 --batch 100,500

The deliveries are the realistic stream of `tracker.testing` laid out conversation by
conversation (`shared_conversations`): a call's callbacks, its transfer legs' and their
parent's, one after another, with now and then a body delivered twice. Dealt round robin to the
processes, the callbacks of one conversation go to different processes at the same moment, and
every process's batch holds callbacks of the calls in every other's: the contention a load
balancer in front of Bandwidth's callbacks gives. For each number of processes, on a fresh
database each, the floor with one commit per delivery and `apply`, then for each batch size the
floor with one commit per batch and `apply_many`.

Beside each rate: its ratio to the floor at the same number of processes, and the transactions
rolled back per batch committed. For the tracker, the server counts them
(`benchmarks.transactions`: `pg_stat_database.xact_rollback` of the run's database, from the end
of the warm-up to the last process's exit), so a batch run again counts whatever the tracker's
code does; the floor counts its own (it runs a batch again on a deadlock, which its locking
order is meant to prevent). After every tracker run, the records are compared with a serial
replay of the same deliveries in one process (`benchmarks.exactness`): a run that differs is
reported with its first difference, and the benchmark exits 1.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url

from benchmarks.exactness import Records, exactness_lines, serial_replay
from benchmarks.report import describe_machine
from benchmarks.runs import Crew, Databases, Mode, prepare
from benchmarks.transactions import PUBLISH_SECONDS, Counts, ServerTransactions
from tracker.testing import realistic_bodies

PROCESS_COUNTS: Final = (1, 2, 4, 8)
BATCHES: Final = (100, 500)
DELIVERIES: Final = 8000  # distinct ones; the duplicates come on top
DUPLICATE_EVERY: Final = 50  # one body in this many is delivered a second time
DUPLICATE_LATER: Final = 7  # every other copy comes this many deliveries after the first
WARMUP_PER_PROCESS: Final = 50
FLOOR_OF: Final[dict[Mode, Mode]] = {"apply": "floor", "apply_many": "floor_batched"}

# The targets: apply_many(TARGET_BATCH) with 4 processes at least this share of its floor, with
# 8 at least this share of its own rate with 4, and at most this many rollbacks per batch with
# 4 and 8; apply with 4 processes at least this share of its floor.
TARGET_BATCH: Final = 500
MANY_OF_FLOOR: Final = 1.0
EIGHT_OF_FOUR: Final = 0.8
ROLLBACKS_PER_BATCH: Final = 0.25
APPLY_OF_FLOOR: Final = 0.6


def shared_conversations(deliveries: int, seed: int) -> list[bytes]:
    """The first `deliveries` bodies of the realistic stream `seed`, laid out conversation by
    conversation (a call, its legs, in the order they arrived), in the order each conversation
    began; one in `DUPLICATE_EVERY` is delivered again, the copy right after it or
    `DUPLICATE_LATER` deliveries later, by turns. Dealt round robin, a conversation's callbacks
    and a body's two deliveries go to different processes at about the same moment."""
    conversations: dict[str, list[bytes]] = {}
    for body in realistic_bodies(deliveries, seed):
        document = json.loads(body)
        root = document.get("parentCallId") or document["callId"]
        conversations.setdefault(root, []).append(body)
    laid = [body for bodies in conversations.values() for body in bodies]
    delivered: list[bytes] = []
    copies: dict[int, list[bytes]] = {}
    for index, body in enumerate(laid):
        delivered.append(body)
        if index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:
            later = (index // DUPLICATE_EVERY) % 2 == 1
            copies.setdefault(index + (DUPLICATE_LATER - 1 if later else 0), []).append(body)
        delivered.extend(copies.pop(index, ()))
    for rest in copies.values():
        delivered.extend(rest)
    return delivered


@dataclass
class CurveFigure:
    """The runs of one mode and batch size with one number of processes."""

    processes: int
    mode: Mode
    batch: int
    rates: list[float] = field(default_factory=list)
    rollbacks_per_batch: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)  # seconds per delivery
    server_cpu: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # of the first repetition
    checked: int = 0  # runs compared with the serial replay
    differences: list[str] = field(default_factory=list)  # the first one of each inexact run

    @property
    def tracker(self) -> bool:
        return self.mode in FLOOR_OF

    @property
    def label(self) -> str:
        return {
            "floor": "floor, 1 commit per delivery",
            "apply": "tracker.apply",
            "floor_batched": f"floor, 1 commit per {self.batch}",
            "apply_many": f"tracker.apply_many({self.batch})",
        }[self.mode]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def progress(self) -> str:
        """The last run, in a line."""
        line = (
            f"{self.label}: {self.rates[-1]:,.0f} deliveries/s, "
            f"{self.rollbacks_per_batch[-1]:.2f} rolled back per batch"
        )
        if not self.tracker:
            return line
        return line + (", exact" if len(self.differences) < self.checked else ", NOT EXACT")

    @property
    def exact(self) -> bool | None:
        return None if not self.checked else not self.differences


@dataclass
class CurveReport:
    machine: dict[str, str]
    deliveries: int
    duplicates: int
    repeat: int
    batches: tuple[int, ...]
    figures: list[CurveFigure]

    def find(self, processes: int, mode: Mode, batch: int) -> CurveFigure | None:
        for figure in self.figures:
            if (figure.processes, figure.mode, figure.batch) == (processes, mode, batch):
                return figure
        return None

    def ratio(self, figure: CurveFigure) -> float | None:
        """The median over repetitions of the tracker's rate over its floor's in the same one."""
        floor_mode = FLOOR_OF.get(figure.mode)
        if floor_mode is None:
            return None
        floor = self.find(figure.processes, floor_mode, figure.batch)
        if floor is None:
            return None
        return statistics.median(
            mine / floors for mine, floors in zip(figure.rates, floor.rates, strict=True)
        )

    @property
    def exact(self) -> bool:
        return all(figure.exact is not False for figure in self.figures)

    def targets(self) -> list[tuple[str, float | None, str, bool | None]]:
        """(what, measured, target, met) for each of the project's targets this run measured."""
        found: list[tuple[str, float | None, str, bool | None]] = []
        many4 = self.find(4, "apply_many", TARGET_BATCH)
        many8 = self.find(8, "apply_many", TARGET_BATCH)
        apply4 = self.find(4, "apply", 1)
        if many4 is not None:
            ratio = self.ratio(many4)
            found.append(
                (f"apply_many({TARGET_BATCH}), 4 processes, of floor", ratio,
                 f">= {MANY_OF_FLOOR:.2f}", None if ratio is None else ratio >= MANY_OF_FLOOR)
            )  # fmt: skip
        if many4 is not None and many8 is not None:
            share = many8.median / many4.median
            found.append(
                (f"apply_many({TARGET_BATCH}), 8 processes, of its rate with 4", share,
                 f">= {EIGHT_OF_FOUR:.2f}", share >= EIGHT_OF_FOUR)
            )  # fmt: skip
        for figure in (many4, many8):
            if figure is not None:
                rolled = statistics.median(figure.rollbacks_per_batch)
                found.append(
                    (f"apply_many({TARGET_BATCH}), {figure.processes} processes, rolled back "
                     "per batch", rolled, f"<= {ROLLBACKS_PER_BATCH:.2f}",
                     rolled <= ROLLBACKS_PER_BATCH)
                )  # fmt: skip
        if apply4 is not None:
            ratio = self.ratio(apply4)
            found.append(
                ("apply, 4 processes, of floor", ratio, f">= {APPLY_OF_FLOOR:.2f}",
                 None if ratio is None else ratio >= APPLY_OF_FLOOR)
            )  # fmt: skip
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "deliveries": self.deliveries,
            "duplicates": self.duplicates,
            "repeat": self.repeat,
            "batches": list(self.batches),
            "rollbacks_counted_by": {
                "tracker": "pg_stat_database.xact_rollback of the run's database",
                "floor": "the floor's own retries",
            },
            "runs": [
                {
                    "processes": figure.processes,
                    "mode": figure.mode,
                    "batch": figure.batch,
                    "label": figure.label,
                    "deliveries_per_second": figure.rates,
                    "median": figure.median,
                    "ratio_to_floor": self.ratio(figure),
                    "rollbacks_per_batch": figure.rollbacks_per_batch,
                    "client_cpu_us": _us(figure.client_cpu),
                    "server_cpu_us": _us(figure.server_cpu),
                    "outcomes": dict(figure.outcomes),
                    "exact": figure.exact,
                    "differences": figure.differences,
                }
                for figure in self.figures
            ],
            "targets": [
                {"what": what, "measured": measured, "target": target, "met": met}
                for what, measured, target, met in self.targets()
            ],
            "exact": self.exact,
        }

    def as_text(self) -> str:
        """A Markdown table, ready to paste into docs/benchmark.md, then the verdicts."""
        lines = [
            f"{self.deliveries:,} deliveries per run ({self.duplicates} of them a body's second "
            "delivery), conversations whose callbacks are dealt to different processes at once; "
            f"median of {self.repeat} interleaved repetition{'s' if self.repeat > 1 else ''}; "
            "'of floor': the tracker's rate over the floor's with as many processes and the "
            "same commits, in the same repetition",
            "rolled back per batch: for the tracker, counted by the server (pg_stat_database "
            "xact_rollback of the run's database, around the timed part), over the batches "
            "committed; for the floor, its own retries",
            "machine: " + ", ".join(f"{key} {value}" for key, value in self.machine.items()),
            "",
            "| processes | run | deliveries/s (min-max) | of floor | rolled back per batch "
            "| client CPU µs | server CPU µs | exact |",
            "|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for figure in self.figures:
            ratio = self.ratio(figure)
            rolled = statistics.median(figure.rollbacks_per_batch)
            client, server = _us(figure.client_cpu), _us(figure.server_cpu)
            exact = {None: "", True: "yes", False: "NO"}[figure.exact]
            lines.append(
                f"| {figure.processes} | {figure.label} | {figure.median:,.0f} "
                f"({min(figure.rates):,.0f}-{max(figure.rates):,.0f}) "
                f"| {'' if ratio is None else f'{ratio:.2f}'} | {rolled:.2f} "
                f"| {'' if client is None else f'{client:,.0f}'} "
                f"| {'' if server is None else f'{server:,.0f}'} | {exact} |"
            )
        lines.append("")
        for what, measured, target, met in self.targets():
            shown = "" if measured is None else f"{measured:.2f}"
            verdict = "" if met is None else ("met" if met else "MISSED")
            lines.append(f"target: {what}: {shown} (target {target}) {verdict}")
        outcomes = {
            f"{figure.label} x{figure.processes}": dict(sorted(figure.outcomes.items()))
            for figure in self.figures
            if figure.tracker
        }
        if len({repr(counted) for counted in outcomes.values()}) == 1:
            lines.append(f"outcomes of every tracker run: {next(iter(outcomes.values()))}")
        else:
            lines += [f"outcomes of {run}: {counted}" for run, counted in outcomes.items()]
        differences = [
            (f"{figure.label} x{figure.processes}", difference)
            for figure in self.figures
            for difference in figure.differences
        ]
        lines += exactness_lines(self.exact, "tracker run", differences)
        return "\n".join(lines)


def _us(seconds_per_delivery: Sequence[float]) -> float | None:
    return 1e6 * statistics.median(seconds_per_delivery) if seconds_per_delivery else None


def run_curve(
    target: str,
    directory: Path,
    *,
    deliveries: int = DELIVERIES,
    processes: Sequence[int] = PROCESS_COUNTS,
    batches: Sequence[int] = BATCHES,
    repeat: int = 1,
    seed: int = 1,
    warmup_per_process: int = WARMUP_PER_PROCESS,
    publish_seconds: float = PUBLISH_SECONDS,
    progress: Callable[[str], None] = lambda _line: None,
) -> CurveReport:
    databases = Databases(target, directory)
    if databases.backend != "postgresql":
        raise SystemExit("the curve of many processes runs on PostgreSQL: give --database URL")
    bodies = shared_conversations(deliveries, seed)
    warmup = realistic_bodies(warmup_per_process * max(processes), seed + 1_000_003)
    with databases.fresh() as url:
        progress(f"serial replay of {len(warmup) + len(bodies):,} deliveries for the check")
        reference = serial_replay(url, [*warmup, *bodies])
    plan: list[tuple[Mode, int]] = [("floor", 1), ("apply", 1)]
    for batch in batches:
        plan += [("floor_batched", batch), ("apply_many", batch)]
    figures: dict[tuple[int, Mode, int], CurveFigure] = {}
    with databases.fresh() as floor_schema, databases.fresh() as tracker_schema:
        prepare("floor", floor_schema)
        prepare("apply", tracker_schema)
        templates = {False: floor_schema, True: tracker_schema}
        for repetition in range(repeat):
            for count in processes:
                with Crew(count) as crew:
                    for mode, batch in plan:
                        figure = figures.setdefault(
                            (count, mode, batch), CurveFigure(count, mode, batch)
                        )
                        run = Run(crew, databases, templates[figure.tracker], publish_seconds)
                        run.measure(figure, bodies, warmup, reference)
                        progress(f"[{repetition + 1}/{repeat}] x{count} {figure.progress}")
    return CurveReport(
        machine=describe_machine(databases.server_version()),
        deliveries=len(bodies),
        duplicates=len(bodies) - len(set(bodies)),
        repeat=repeat,
        batches=tuple(batches),
        figures=list(figures.values()),
    )


@dataclass(frozen=True)
class Run:
    """How one run is made: by `crew`, on a copy of `template`."""

    crew: Crew
    databases: Databases
    template: str
    publish_seconds: float

    def measure(
        self,
        figure: CurveFigure,
        bodies: Sequence[bytes],
        warmup: Sequence[bytes],
        reference: Records,
    ) -> None:
        """One run of `figure` on a fresh database, added to its figures; a tracker run is
        checked against `reference`."""
        with self.databases.fresh(template=self.template) as url:
            name = make_url(url).database
            assert name is not None
            transactions = ServerTransactions(self.databases.admin, name)
            before: list[Counts] = []

            def published() -> None:
                if figure.tracker:
                    before.append(transactions.read_once_published(self.publish_seconds))

            result = self.crew.run(
                figure.mode, url, bodies, warmup, figure.batch, before_start=published
            )
            if figure.tracker:
                rollbacks = (transactions.read_once_closed() - before[0]).rollbacks
                difference = reference.first_difference(Records.read(url, [*warmup, *bodies]))
                figure.checked += 1
                if difference is not None:
                    figure.differences.append(difference)
            else:
                rollbacks = result.rollbacks or 0
        shares = [bodies[n :: figure.processes] for n in range(figure.processes)]
        batches = sum(math.ceil(len(share) / figure.batch) for share in shares)
        figure.rates.append(len(bodies) / result.seconds)
        figure.rollbacks_per_batch.append(rollbacks / batches)
        figure.client_cpu.append(result.client_cpu_seconds / len(bodies))
        if result.server_cpu_seconds is not None:
            figure.server_cpu.append(result.server_cpu_seconds / len(bodies))
        if not figure.outcomes:
            figure.outcomes.update(result.outcomes)
