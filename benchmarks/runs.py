"""One timed run of the benchmark on a fresh database: the floor or the tracker, in one process
or dealt out to several spawned ones started together."""

from __future__ import annotations

import gc
import multiprocessing
import queue
import resource
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL, make_url

from benchmarks.cpu import CpuMark, ServerCpu, peak_rss_mb
from benchmarks.floor import chunks, conninfo, floor_for
from tracker.tracker import Tracker

Mode = Literal["floor", "apply", "floor_batched", "apply_many"]


@dataclass
class ShareResult:
    seconds: float
    outcomes: dict[str, int]
    peak_rss_mb: float
    # CPU spent in the timed part: by the process(es) applying, and by the PostgreSQL server when
    # it runs on this machine (None otherwise, and on SQLite, which runs inside the client).
    client_cpu_seconds: float
    server_cpu_seconds: float | None
    # Transactions the floor rolled back and ran again (deadlocks); None for the tracker, whose
    # rollbacks the server counts (`benchmarks.transactions`).
    rollbacks: int | None = None


def _run_share(
    mode: Mode,
    url: str,
    bodies: Sequence[bytes],
    warmup: Sequence[bytes],
    batch: int,
    ready: Callable[[], None],
    *,
    alone: bool = True,
) -> ShareResult:
    """Apply `warmup` (untimed: first connection, statement caches), call `ready`, then time the
    application of `bodies` in `mode`. The database must already hold the right schema. `alone`:
    no other process applies meanwhile, so the server's CPU in the timed part is this run's."""
    database = make_url(url)
    server = ServerCpu(database) if alone else None
    outcomes: Counter[str] = Counter()
    rollbacks = None
    if mode in ("floor", "floor_batched"):
        size = 1 if mode == "floor" else batch
        floor = floor_for(database)
        try:
            floor.run(warmup, size)
            ready()
            gc.collect()
            cpu = CpuMark(server)
            rollbacks = -floor.rollbacks
            floor.run(bodies, size)
            taken = cpu.taken()
            rollbacks += floor.rollbacks
        finally:
            floor.close()
        outcomes["applied"] = len(bodies)
    else:
        with Tracker(database) as tracker:
            apply_with(tracker, mode, warmup, batch)
            ready()
            gc.collect()
            cpu = CpuMark(server)
            outcomes.update(apply_with(tracker, mode, bodies, batch))
            taken = cpu.taken()
    seconds, client, server_seconds = taken
    peak = peak_rss_mb(resource.RUSAGE_SELF)
    return ShareResult(seconds, dict(outcomes), peak, client, server_seconds, rollbacks)


def apply_with(tracker: Tracker, mode: Mode, bodies: Sequence[bytes], batch: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    if mode == "apply":
        for body in bodies:
            outcomes[tracker.apply(body).outcome.value] += 1
    else:
        for chunk in chunks(bodies, batch):
            outcomes.update(result.outcome.value for result in tracker.apply_many(chunk))
    return outcomes


def _worker(jobs: Any, go: Any, messages: Any) -> None:
    """A spawned process of a `Crew`: for each job, its own connection or Tracker. It says when
    it is ready, waits for the signal to go, and reports its figures (or its error); until it is
    given None."""

    def ready() -> None:
        messages.put("ready")
        go.get()

    while (job := jobs.get()) is not None:
        mode, url, bodies, warmup, batch = job
        try:
            share = _run_share(mode, url, bodies, warmup, batch, ready, alone=False)
            messages.put(asdict(share))
        except BaseException as error:
            messages.put({"error": f"{type(error).__name__}: {error}"})
            raise


class Crew:
    """`count` spawned processes, kept for one run after another: starting an interpreter that
    imports the tracker takes longer than many a run."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = count
        self.messages = context.Queue()
        self.jobs = [context.Queue() for _ in range(count)]
        self.go = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=_worker, args=(jobs, go, self.messages), daemon=True)
            for jobs, go in zip(self.jobs, self.go, strict=True)
        ]
        for process in self.processes:
            process.start()

    def __enter__(self) -> Crew:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for jobs, process in zip(self.jobs, self.processes, strict=True):
            if process.exitcode is None:
                jobs.put(None)
        for process in self.processes:
            process.join(10)
            if process.exitcode is None:
                process.terminate()
                process.join()

    def run(
        self,
        mode: Mode,
        url: str,
        bodies: Sequence[bytes],
        warmup: Sequence[bytes],
        batch: int,
        *,
        before_start: Callable[[], None] = lambda: None,
    ) -> ShareResult:
        """Deal the bodies out as a load balancer would (round robin), start the processes
        together once all are ready (and `before_start` has returned), and time the whole, from
        the start to the last one's end. Every process has closed its connections when this
        returns."""
        count = self.count
        for n, jobs in enumerate(self.jobs):
            jobs.put((mode, url, bodies[n::count], warmup[n::count], batch))
        server = ServerCpu(make_url(url))
        _receive(self.messages, self.processes, count)  # every worker ready
        before_start()
        for go in self.go:
            go.put(True)
        cpu = CpuMark(server)
        shares = _receive(self.messages, self.processes, count)
        seconds, _parent, server_seconds = cpu.taken()
        outcomes: Counter[str] = Counter()
        for share in shares:
            outcomes.update(share["outcomes"])
        peak = max(float(share["peak_rss_mb"]) for share in shares)
        client = sum(float(share["client_cpu_seconds"]) for share in shares)
        counted = [share["rollbacks"] for share in shares if share["rollbacks"] is not None]
        rollbacks = sum(counted) if counted else None
        return ShareResult(seconds, dict(outcomes), peak, client, server_seconds, rollbacks)


def run_parallel(
    mode: Mode, url: str, bodies: Sequence[bytes], warmup: Sequence[bytes], batch: int, workers: int
) -> ShareResult:
    """One run by `workers` processes of a crew of its own (`Crew.run`)."""
    with Crew(workers) as crew:
        return crew.run(mode, url, bodies, warmup, batch)


def _receive(
    messages: Any, processes: Sequence[multiprocessing.process.BaseProcess], count: int
) -> list[Any]:
    """`count` messages from the workers; raises as soon as one reports an error or dies."""
    received: list[Any] = []
    while len(received) < count:
        try:
            message = messages.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a worker process died (exit code {dead[0]})") from None
            continue
        if isinstance(message, dict) and "error" in message:
            raise RuntimeError(f"a worker failed: {message['error']}")
        received.append(message)
    return received


# --- databases ---------------------------------------------------------------------------------


class Databases:
    """Fresh, empty databases on one backend: files in a directory for SQLite, databases named
    tracker_bench_* on a PostgreSQL server (created and dropped through its admin database)."""

    def __init__(self, target: str, directory: Path) -> None:
        if target == "sqlite":
            self.backend = "sqlite"
            self.admin = URL.create("sqlite")
        else:
            url = make_url(target)
            self.backend = url.get_backend_name()
            if self.backend != "postgresql":
                raise SystemExit(
                    f"--db takes 'sqlite' or a PostgreSQL URL, not a {self.backend} one"
                )
            self.admin = url.set(drivername="postgresql+psycopg")
        self.directory = directory

    @property
    def label(self) -> str:
        return self.backend

    @contextmanager
    def fresh(self, template: str | None = None) -> Iterator[str]:
        """The URL of a new database, dropped when the block ends; on PostgreSQL, a copy of
        the database at the URL `template` when given (which nobody may be connected to)."""
        name = f"tracker_bench_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            if template is not None:
                raise ValueError("copies of a template database are made on PostgreSQL only")
            path = self.directory / f"{name}.db"
            try:
                yield URL.create("sqlite", database=str(path)).render_as_string()
            finally:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        from psycopg import connect, sql

        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            source = sql.Identifier(make_url(template).database or "")
            create = sql.SQL("{} TEMPLATE {}").format(create, source)
        with connect(**conninfo(self.admin), autocommit=True) as admin:
            admin.execute(create)
        try:
            yield self.admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with connect(**conninfo(self.admin), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def server_version(self) -> str | None:
        if self.backend != "postgresql":
            return None
        from psycopg import connect

        with connect(**conninfo(self.admin)) as connection:
            row = connection.execute("SELECT current_setting('server_version')").fetchone()
        return None if row is None else str(row[0])


def prepare(mode: Mode, url: str) -> None:
    """The floor's tables, or the tracker's schema, on the fresh database `url`."""
    if mode in ("floor", "floor_batched"):
        floor = floor_for(make_url(url))
        try:
            floor.create_schema()
        finally:
            floor.close()
    else:
        with Tracker(url) as tracker:
            tracker.upgrade()


def run_once(
    databases: Databases,
    mode: Mode,
    bodies: Sequence[bytes],
    warmup: Sequence[bytes],
    batch: int,
    workers: int,
) -> ShareResult:
    """One timed run on a fresh database of its own."""
    with databases.fresh() as url:
        prepare(mode, url)
        if workers == 1:
            return _run_share(mode, url, bodies, warmup, batch, lambda: None)
        return run_parallel(mode, url, bodies, warmup, batch, workers)
