"""Real worker processes for the concurrency tests, and the parent-side helpers that run them.

Workers are started with the "spawn" method, never fork: each imports the tracker afresh and
builds its own `Tracker`, so no engine, pool or open connection is inherited from the test
process. Worker functions are top-level so that they pickle. Every worker waits on one shared
barrier before each round, so that all of them (and the parent, which times the run) are
released at the same instant, and reports what happened to each of its deliveries: the outcome
(`applied`, `duplicate`, ...) or `raised <repr of the exception>`.
"""

from __future__ import annotations

import queue
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from threading import BrokenBarrierError
from typing import Any, TypeVar

from tracker import Tracker

SPAWN = get_context("spawn")

Resource = TypeVar("Resource")
Item = TypeVar("Item")

# Long enough for a slow CI machine to start a spawned interpreter and import the tracker;
# short enough that a hung worker fails the test instead of the whole job.
START_TIMEOUT = 120.0
RUN_TIMEOUT = 300.0

Outcomes = list[list[str]]  # [round][delivery]
"""What one worker reports: per round, per delivery, an outcome or `raised ...`."""


# --- worker side (runs in the spawned processes) ------------------------------------------------


def apply_rounds(
    index: int, url: str, rounds: Sequence[Sequence[str]], start: Barrier, results: Queue[Any]
) -> None:
    """Apply each round's bodies one by one, in order, with a Tracker of this process's own."""

    def act(tracker: Tracker, body: str) -> list[str]:
        try:
            return [tracker.apply(body).outcome.value]
        except Exception as error:
            return [f"raised {error!r}"]

    _run_rounds(index, rounds, start, results, lambda: _open_tracker(url), act)


def apply_many_rounds(
    index: int,
    url: str,
    rounds: Sequence[Sequence[Sequence[str]]],
    start: Barrier,
    results: Queue[Any],
) -> None:
    """Like `apply_rounds`, but each round is a list of batches, each given to `apply_many`."""

    def act(tracker: Tracker, batch: Sequence[str]) -> list[str]:
        try:
            return [result.outcome.value for result in tracker.apply_many(batch)]
        except Exception as error:
            return [f"raised {error!r}"] * len(batch)

    _run_rounds(index, rounds, start, results, lambda: _open_tracker(url), act)


def apply_many_once_rounds(
    index: int,
    url: str,
    rounds: Sequence[Sequence[Sequence[str]]],
    start: Barrier,
    results: Queue[Any],
) -> None:
    """Like `apply_many_rounds`, with a Tracker that runs each transaction once: a batch that
    loses a race to another worker raises instead of running again."""

    def act(tracker: Tracker, batch: Sequence[str]) -> list[str]:
        try:
            return [result.outcome.value for result in tracker.apply_many(batch)]
        except Exception as error:
            return [f"raised {error!r}"] * len(batch)

    _run_rounds(index, rounds, start, results, lambda: _open_tracker(url, max_attempts=1), act)


def upgrade_rounds(index: int, urls: Sequence[str], start: Barrier, results: Queue[Any]) -> None:
    """For each round, open a Tracker on that round's database and `upgrade()` it."""

    def act(_nothing: None, url: str) -> list[str]:
        try:
            with Tracker(url) as tracker:
                tracker.upgrade()
        except Exception as error:
            return [f"raised {error!r}"]
        return ["upgraded"]

    _run_rounds(index, [[url] for url in urls], start, results, lambda: None, act)


def _open_tracker(url: str, **options: Any) -> Tracker:
    tracker = Tracker(url, **options)
    tracker.get_call("warm-up")  # checks the schema and fills the pool before the start
    return tracker


def _run_rounds(
    index: int,
    rounds: Sequence[Sequence[Item]],
    start: Barrier,
    results: Queue[Any],
    open_resource: Callable[[], Resource],
    act: Callable[[Resource, Item], list[str]],
) -> None:
    try:
        resource = open_resource()
        reported: Outcomes = []
        for items in rounds:
            start.wait(timeout=START_TIMEOUT)
            reported.append([outcome for item in items for outcome in act(resource, item)])
        if isinstance(resource, Tracker):
            resource.close()
        results.put(("done", index, reported))
    except BaseException:
        start.abort()  # release everybody at once rather than let them time out
        results.put(("failed", index, traceback.format_exc()))


# --- parent side (runs in the test process) ----------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What a group of workers reported, and how long they took from the first start."""

    outcomes: list[Outcomes]  # [worker][round][delivery]
    seconds: float

    def flat(self) -> list[str]:
        return [outcome for worker in self.outcomes for rnd in worker for outcome in rnd]

    def exceptions(self) -> list[str]:
        return [outcome for outcome in self.flat() if outcome.startswith("raised")]


class Crew:
    """Worker processes sharing one start barrier with `extra_parties` callers in this process
    (the test itself, or threads of it), which must each call `start.wait()` once per round."""

    def __init__(
        self,
        target: Callable[..., None],
        jobs: Sequence[tuple[object, ...]],
        *,
        extra_parties: int = 1,
    ) -> None:
        self.start = SPAWN.Barrier(len(jobs) + extra_parties)
        self._results: Queue[Any] = SPAWN.Queue()
        self._processes: list[BaseProcess] = [
            SPAWN.Process(
                target=target,
                args=(index, *job, self.start, self._results),
                name=f"tracker-worker-{index}",
                daemon=True,
            )
            for index, job in enumerate(jobs)
        ]

    def __enter__(self) -> Crew:
        for process in self._processes:
            process.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()

    def wait_for_start(self) -> None:
        """This process's turn at the barrier; a failed worker turns into its traceback."""
        try:
            self.start.wait(timeout=START_TIMEOUT)
        except BrokenBarrierError:
            raise AssertionError(self._failures() or "a worker never reached the start") from None

    def collect(self) -> list[Outcomes]:
        reports: dict[int, Outcomes] = {}
        failures: list[str] = []
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(reports) + len(failures) < len(self._processes):
            try:
                status, index, payload = self._results.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                raise AssertionError(
                    f"workers did not finish within {RUN_TIMEOUT:.0f} s; "
                    f"reports from {sorted(reports)}"
                ) from None
            if status == "done":
                reports[index] = payload
            else:
                failures.append(f"worker {index} failed:\n{payload}")
        assert not failures, "\n".join(failures)
        return [reports[index] for index in range(len(self._processes))]

    def _failures(self) -> str:
        found: list[str] = []
        while True:
            try:
                status, index, payload = self._results.get(timeout=2)
            except queue.Empty:
                return "\n".join(found)
            if status == "failed":
                found.append(f"worker {index} failed:\n{payload}")


def run_together(
    target: Callable[..., None], jobs: Sequence[tuple[object, ...]], rounds: int
) -> Run:
    """Start one spawned process per job, release them together `rounds` times, and gather what
    they report. `seconds` runs from the first release to the last report."""
    with Crew(target, jobs) as crew:
        crew.wait_for_start()
        started = time.perf_counter()
        for _ in range(rounds - 1):
            crew.wait_for_start()
        outcomes = crew.collect()
        return Run(outcomes, time.perf_counter() - started)


def snapshot(tracker: Tracker, call_ids: Iterable[str]) -> dict[str, dict[str, object] | None]:
    """Every attribute of each call, as comparable data. History entries keep source, target,
    `at` and event, but not `event_id`: which log entry applied a change depends on the order
    the deliveries came in, and only the records themselves must not."""
    found: dict[str, dict[str, object] | None] = {}
    for call_id in sorted(set(call_ids) | {call.call_id for call in tracker.calls()}):
        call = tracker.get_call(call_id)
        if call is None:
            found[call_id] = None
            continue
        record: dict[str, object] = {
            field.name: getattr(call, field.name)
            for field in fields(call)
            if field.name != "history"
        }
        record["history"] = [
            (step.source, step.target, step.at, step.event) for step in call.history
        ]
        found[call_id] = record
    return found


# Figures of this run, printed again in pytest's closing summary so that CI logs show them
# even though pytest captures what tests print.
FIGURES: list[str] = []


def print_figures(label: str, *, workers: int, deliveries: int, seconds: float) -> None:
    record_figure(
        f"[{label}] workers={workers} deliveries={deliveries} seconds={seconds:.2f} "
        f"deliveries/s={deliveries / seconds:.0f}"
    )


def record_figure(line: str) -> None:
    FIGURES.append(line)
    print("\n" + line)
