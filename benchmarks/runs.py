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
    if mode in ("floor", "floor_batched"):
        size = 1 if mode == "floor" else batch
        floor = floor_for(database)
        try:
            floor.run(warmup, size)
            ready()
            gc.collect()
            cpu = CpuMark(server)
            floor.run(bodies, size)
            taken = cpu.taken()
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
    return ShareResult(
        seconds, dict(outcomes), peak_rss_mb(resource.RUSAGE_SELF), client, server_seconds
    )


def apply_with(tracker: Tracker, mode: Mode, bodies: Sequence[bytes], batch: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    if mode == "apply":
        for body in bodies:
            outcomes[tracker.apply(body).outcome.value] += 1
    else:
        for chunk in chunks(bodies, batch):
            outcomes.update(result.outcome.value for result in tracker.apply_many(chunk))
    return outcomes


def _worker(
    mode: Mode,
    url: str,
    bodies: Sequence[bytes],
    warmup: Sequence[bytes],
    batch: int,
    messages: Any,
    go: Any,
) -> None:
    """A spawned process: its own connection or Tracker. It says when it is ready, waits for the
    signal to go, and reports its figures (or its error)."""

    def ready() -> None:
        messages.put("ready")
        go.wait()

    try:
        share = _run_share(mode, url, bodies, warmup, batch, ready, alone=False)
        messages.put(asdict(share))
    except BaseException as error:
        messages.put({"error": f"{type(error).__name__}: {error}"})
        raise


def _run_parallel(
    mode: Mode, url: str, bodies: Sequence[bytes], warmup: Sequence[bytes], batch: int, workers: int
) -> ShareResult:
    """Deal the bodies out as a load balancer would (round robin), start `workers` processes
    together once all are ready, and time the whole, from the start to the last one's end."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    go = context.Event()
    processes = [
        context.Process(
            target=_worker,
            args=(mode, url, bodies[n::workers], warmup[n::workers], batch, messages, go),
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    server = ServerCpu(make_url(url))
    try:
        _receive(messages, processes, workers)  # every worker ready
        go.set()
        cpu = CpuMark(server)
        shares = _receive(messages, processes, workers)
        seconds, _parent, server_seconds = cpu.taken()
    finally:
        for process in processes:
            if process.exitcode is None and not go.is_set():
                process.terminate()
            process.join()
    outcomes: Counter[str] = Counter()
    for share in shares:
        outcomes.update(share["outcomes"])
    peak = max(float(share["peak_rss_mb"]) for share in shares)
    client = sum(float(share["client_cpu_seconds"]) for share in shares)
    return ShareResult(seconds, dict(outcomes), peak, client, server_seconds)


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
    def fresh(self) -> Iterator[str]:
        name = f"tracker_bench_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            path = self.directory / f"{name}.db"
            try:
                yield URL.create("sqlite", database=str(path)).render_as_string()
            finally:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        from psycopg import connect, sql

        with connect(**conninfo(self.admin), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
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


def _prepare(mode: Mode, url: str) -> None:
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
        _prepare(mode, url)
        if workers == 1:
            return _run_share(mode, url, bodies, warmup, batch, lambda: None)
        return _run_parallel(mode, url, bodies, warmup, batch, workers)
