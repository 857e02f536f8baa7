"""How fast the tracker applies deliveries, against the least work any tracker must do.

    python -m benchmarks.bench                              # SQLite in a temporary directory
    python -m benchmarks.bench --db postgresql+psycopg://postgres@127.0.0.1/postgres --workers 1,4

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
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import queue
import re
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url

from benchmarks import wal
from benchmarks.endpoint import (
    CLIENT_COUNTS,
    HTTP_TARGET,
    HTTP_WARMUP_DELIVERIES,
    HttpFigure,
    run_http,
)
from tracker import parsing
from tracker.testing import realistic_bodies
from tracker.tracker import Tracker

Mode = Literal["floor", "apply", "floor_batched", "apply_many"]
# The order of one repetition: each tracker run right after the floor it is compared with.
MODES: Final[tuple[Mode, ...]] = ("floor", "apply", "floor_batched", "apply_many")
FLOOR_OF: Final[dict[Mode, Mode]] = {"apply": "floor", "apply_many": "floor_batched"}

# The project's targets: (backend, workers, mode) -> least ratio to the floor.
TARGETS: Final[dict[tuple[str, int, Mode], float]] = {
    ("sqlite", 1, "apply"): 0.45,
    ("sqlite", 1, "apply_many"): 0.35,
    ("postgresql", 4, "apply"): 0.6,
}
PARSE_TARGET: Final = 1.5  # tracker.parsing.read at most this many times a plain model
# The tracker's `apply` on SQLite writes at most this many WAL frames (pages) per delivery. Pages
# written are what a commit costs on a slow disk or a busy one, and unlike a rate they are a
# count: the same on any machine, so a change that writes more is seen at once.
WAL_FRAMES_TARGET: Final = 12
WAL_DELIVERIES: Final = 300  # the first deliveries of the stream counted (a count, not a timing)
WARMUP_DELIVERIES: Final = 50


# --- the floor: the least work, on the driver ------------------------------------------------

_FLOOR_SCHEMA: Final = {
    "sqlite": (
        "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " body BLOB NOT NULL, received_at TEXT NOT NULL)",
        "CREATE TABLE calls (call_id TEXT PRIMARY KEY, state TEXT NOT NULL, parent_call_id TEXT,"
        " account_id TEXT, application_id TEXT, direction TEXT, from_number TEXT, to_number TEXT,"
        " cause TEXT, start_time TEXT, answer_time TEXT, end_time TEXT, enqueued_time TEXT,"
        " tag TEXT, error_message TEXT, error_id TEXT)",
    ),
    "postgresql": (
        "CREATE TABLE deliveries (id BIGSERIAL PRIMARY KEY, hash TEXT NOT NULL UNIQUE,"
        " body BYTEA NOT NULL, received_at TIMESTAMPTZ NOT NULL)",
        "CREATE TABLE calls (call_id TEXT PRIMARY KEY, state TEXT NOT NULL, parent_call_id TEXT,"
        " account_id TEXT, application_id TEXT, direction TEXT, from_number TEXT, to_number TEXT,"
        " cause TEXT, start_time TEXT, answer_time TEXT, end_time TEXT, enqueued_time TEXT,"
        " tag TEXT, error_message TEXT, error_id TEXT)",
    ),
}
_PAYLOAD: Final = (
    "parent_call_id", "account_id", "application_id", "direction", "from_number", "to_number",
    "cause", "start_time", "answer_time", "end_time", "enqueued_time", "tag", "error_message",
    "error_id",
)  # fmt: skip
_SELECT_CALL: Final = "SELECT state FROM calls WHERE call_id = ?"
_INSERT_DELIVERY: Final = "INSERT INTO deliveries (hash, body, received_at) VALUES (?, ?, ?)"
_UPSERT_CALL: Final = (
    f"INSERT INTO calls (call_id, state, {', '.join(_PAYLOAD)})"
    f" VALUES (?, ?, {', '.join('?' for _ in _PAYLOAD)})"
    " ON CONFLICT (call_id) DO UPDATE SET state = excluded.state, "
    + ", ".join(f"{name} = excluded.{name}" for name in _PAYLOAD)
)
_INSERT_PARENT: Final = (
    "INSERT INTO calls (call_id, state, account_id, from_number, to_number)"
    " VALUES (?, 'initiated', ?, ?, ?) ON CONFLICT (call_id) DO NOTHING"
)


@dataclass(frozen=True)
class _FloorStatements:
    select_call: str
    insert_delivery: str
    upsert_call: str
    insert_parent: str

    @classmethod
    def with_placeholder(cls, placeholder: str) -> _FloorStatements:
        return cls(
            *(
                statement.replace("?", placeholder)
                for statement in (_SELECT_CALL, _INSERT_DELIVERY, _UPSERT_CALL, _INSERT_PARENT)
            )
        )


def _account_from_url(url: str | None) -> str | None:
    match = re.search(r"/accounts/([^/]+)/calls/", url or "")
    return match[1] if match else None


def _floor_transaction(
    execute: Callable[..., Any],
    statements: _FloorStatements,
    bodies: Sequence[bytes],
    now: Callable[[], object],
) -> None:
    """The least work for the deliveries of one transaction: parse each, hash its canonical form,
    insert it (its unique hash refuses a duplicate); then, in call-id order so that concurrent
    writers never deadlock, read each call, upsert it, and insert each unseen parent."""
    rows: list[tuple[str, int, str, tuple[Any, ...]]] = []
    for order, body in enumerate(bodies):
        document = json.loads(body)
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        execute(statements.insert_delivery, (digest, body, now()))
        call_id = document["callId"]
        parent_id = document.get("parentCallId")
        leg = parent_id is not None
        account = document.get("accountId") or _account_from_url(document.get("callUrl"))
        call = (
            call_id,
            "disconnected",
            parent_id,
            account,
            document.get("applicationId"),
            document.get("direction"),
            document.get("transferCallerId" if leg else "from"),
            document.get("transferTo" if leg else "to"),
            document.get("cause"),
            document.get("startTime"),
            document.get("answerTime"),
            document.get("endTime"),
            document.get("enqueuedTime"),
            document.get("tag"),
            document.get("errorMessage"),
            document.get("errorId"),
        )
        rows.append((call_id, order, statements.upsert_call, call))
        if leg:
            parent = (parent_id, account, document.get("from"), document.get("to"))
            rows.append((parent_id, order, statements.insert_parent, parent))
    rows.sort(key=lambda row: (row[0], row[1]))
    for call_id, _order, statement, parameters in rows:
        if statement is statements.upsert_call:
            execute(statements.select_call, (call_id,)).fetchone()
        execute(statement, parameters)


def _now() -> datetime:
    return datetime.now(UTC)


def _now_text() -> str:
    return datetime.now(UTC).isoformat()


def _chunks(items: Sequence[bytes], size: int) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _SqliteFloor:
    """The floor on stdlib sqlite3, with the durability the tracker keeps by default."""

    statements: Final = _FloorStatements.with_placeholder("?")

    def __init__(self, url: URL) -> None:
        assert url.database
        self.connection = sqlite3.connect(url.database, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA busy_timeout=60000")

    def create_schema(self) -> None:
        for statement in _FLOOR_SCHEMA["sqlite"]:
            self.connection.execute(statement)

    def run(self, bodies: Sequence[bytes], batch: int) -> None:
        cursor = self.connection.cursor()
        execute = cursor.execute
        for chunk in _chunks(bodies, batch):
            execute("BEGIN IMMEDIATE")  # as the tracker: the write lock before the read
            _floor_transaction(execute, self.statements, chunk, _now_text)
            execute("COMMIT")

    def close(self) -> None:
        self.connection.close()


class _PostgresqlFloor:
    """The floor on psycopg: READ COMMITTED, and a batch that loses a deadlock is run again."""

    statements: Final = _FloorStatements.with_placeholder("%s")

    def __init__(self, url: URL) -> None:
        import psycopg

        self.connection = psycopg.connect(**_conninfo(url))

    def create_schema(self) -> None:
        with self.connection.cursor() as cursor:
            for statement in _FLOOR_SCHEMA["postgresql"]:
                cursor.execute(statement.encode())
        self.connection.commit()

    def run(self, bodies: Sequence[bytes], batch: int) -> None:
        import psycopg

        cursor = self.connection.cursor()
        execute = cursor.execute
        for chunk in _chunks(bodies, batch):
            while True:
                try:
                    _floor_transaction(execute, self.statements, chunk, _now)
                    self.connection.commit()
                    break
                except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                    self.connection.rollback()  # not expected (rows go in order); run it again

    def close(self) -> None:
        self.connection.close()


def _floor_for(url: URL) -> _SqliteFloor | _PostgresqlFloor:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _SqliteFloor(url)
    if backend == "postgresql":
        return _PostgresqlFloor(url)
    raise SystemExit(f"the benchmark's floor is written for SQLite and PostgreSQL, not {backend}")


def _conninfo(url: URL) -> dict[str, Any]:
    values = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return {key: value for key, value in values.items() if value is not None}


# --- one run: a share of the bodies in one process --------------------------------------------


@dataclass
class _ShareResult:
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
) -> _ShareResult:
    """Apply `warmup` (untimed: first connection, statement caches), call `ready`, then time the
    application of `bodies` in `mode`. The database must already hold the right schema. `alone`:
    no other process applies meanwhile, so the server's CPU in the timed part is this run's."""
    database = make_url(url)
    server = _ServerCpu(database) if alone else None
    outcomes: Counter[str] = Counter()
    if mode in ("floor", "floor_batched"):
        size = 1 if mode == "floor" else batch
        floor = _floor_for(database)
        try:
            floor.run(warmup, size)
            ready()
            gc.collect()
            cpu = _CpuMark(server)
            floor.run(bodies, size)
            taken = cpu.taken()
        finally:
            floor.close()
        outcomes["applied"] = len(bodies)
    else:
        with Tracker(database) as tracker:
            _apply_with(tracker, mode, warmup, batch)
            ready()
            gc.collect()
            cpu = _CpuMark(server)
            outcomes.update(_apply_with(tracker, mode, bodies, batch))
            taken = cpu.taken()
    seconds, client, server_seconds = taken
    return _ShareResult(
        seconds, dict(outcomes), _peak_rss_mb(resource.RUSAGE_SELF), client, server_seconds
    )


class _ServerCpu:
    """The CPU a PostgreSQL server on this machine has spent so far: every process named
    `postgres` (its backends and its background workers), read from /proc. Unknown (None) for
    SQLite, for a server elsewhere, or without /proc."""

    def __init__(self, url: URL) -> None:
        local = url.host in (None, "", "localhost", "127.0.0.1", "::1")
        self.known = url.get_backend_name() == "postgresql" and local and Path("/proc").is_dir()

    def seconds(self) -> float | None:
        if not self.known:
            return None
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError):  # a process that ended meanwhile
                text = stat.read_text()
                name, rest = text[text.index("(") + 1 :].rsplit(")", 1)
                if name.startswith("postgres"):
                    # utime and stime, and cutime and cstime: a backend that exits (a worker's
                    # connection closed) moves its CPU into the postmaster's reaped children's.
                    ticks += sum(int(value) for value in rest.split()[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _CpuMark:
    """Wall time, this process's CPU and the server's from now on."""

    def __init__(self, server: _ServerCpu | None) -> None:
        self.server = server
        self.server_started = server.seconds() if server is not None else None
        self.client_started = _own_cpu_seconds()
        self.started = time.perf_counter()

    def taken(self) -> tuple[float, float, float | None]:
        seconds = time.perf_counter() - self.started
        client = _own_cpu_seconds() - self.client_started
        server = None
        if self.server is not None and self.server_started is not None:
            now = self.server.seconds()
            server = None if now is None else now - self.server_started
        return seconds, client, server


def _apply_with(tracker: Tracker, mode: Mode, bodies: Sequence[bytes], batch: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    if mode == "apply":
        for body in bodies:
            outcomes[tracker.apply(body).outcome.value] += 1
    else:
        for chunk in _chunks(bodies, batch):
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
) -> _ShareResult:
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
    server = _ServerCpu(make_url(url))
    try:
        _receive(messages, processes, workers)  # every worker ready
        go.set()
        cpu = _CpuMark(server)
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
    return _ShareResult(seconds, dict(outcomes), peak, client, server_seconds)


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


# --- databases --------------------------------------------------------------------------------


class _Databases:
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

        with connect(**_conninfo(self.admin), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with connect(**_conninfo(self.admin), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def server_version(self) -> str | None:
        if self.backend != "postgresql":
            return None
        from psycopg import connect

        with connect(**_conninfo(self.admin)) as connection:
            row = connection.execute("SELECT current_setting('server_version')").fetchone()
        return None if row is None else str(row[0])


def _prepare(mode: Mode, url: str) -> None:
    if mode in ("floor", "floor_batched"):
        floor = _floor_for(make_url(url))
        try:
            floor.create_schema()
        finally:
            floor.close()
    else:
        with Tracker(url) as tracker:
            tracker.upgrade()


def run_once(
    databases: _Databases,
    mode: Mode,
    bodies: Sequence[bytes],
    warmup: Sequence[bytes],
    batch: int,
    workers: int,
) -> _ShareResult:
    """One timed run on a fresh database of its own."""
    with databases.fresh() as url:
        _prepare(mode, url)
        if workers == 1:
            return _run_share(mode, url, bodies, warmup, batch, lambda: None)
        return _run_parallel(mode, url, bodies, warmup, batch, workers)


# --- the parsing micro-benchmark --------------------------------------------------------------


# The yardstick of the parse target (PARSE_TARGET: `tracker.parsing.read` at most that many times
# a plain pydantic model of the same fields). It is written out rather than derived from
# tracker.parsing because it must stay plain: no strictness, no length limits, no normalisation,
# no fallback for unknown event types, so the ratio shows what those cost. tests/test_bench.py
# keeps its fields and aliases equal to the tracker's models, so the two cannot drift apart.


class PlainCallback(BaseModel):
    """The same fields as tracker.parsing's models, with plain types and no validators."""

    model_config = ConfigDict(alias_generator=to_camel)

    event_time: datetime | None = None
    account_id: str | None = None
    application_id: str | None = None
    from_number: str | None = Field(default=None, alias="from")
    to_number: str | None = Field(default=None, alias="to")
    direction: Literal["inbound", "outbound"] | None = None
    call_id: str
    call_url: str | None = None
    enqueued_time: datetime | None = None
    start_time: datetime
    answer_time: datetime | None = None
    end_time: datetime
    cause: str
    error_message: str | None = None
    error_id: str | None = None
    tag: str | None = None
    sip_call_id: str | None = None
    sip_response_code: int | None = None


class PlainDisconnect(PlainCallback):
    event_type: Literal["disconnect"]


class PlainTransferDisconnect(PlainCallback):
    event_type: Literal["transferDisconnect"]
    parent_call_id: str
    transfer_caller_id: str | None = None
    transfer_to: str | None = None


@dataclass
class ParseFigures:
    tracker_us: float
    plain_us: float

    @property
    def ratio(self) -> float:
        return self.tracker_us / self.plain_us


def measure_parsing(bodies: Sequence[bytes], repeat: int = 7) -> ParseFigures:
    """µs per body of `tracker.parsing.read` and of a plain model's `model_validate_json` (the
    model picked per body in advance): the best of `repeat` interleaved timings of 50 ms or more.
    Terminal bodies only: the plain baseline models those two types, the ratio's yardstick since
    the first benchmark."""
    terminal = (b'"eventType":"disconnect"', b'"eventType":"transferDisconnect"')
    sample = [body for body in bodies if any(kind in body for kind in terminal)][:1000]
    plain: list[tuple[Callable[[bytes], object], bytes]] = [
        (
            PlainTransferDisconnect.model_validate_json
            if b'"transferDisconnect"' in body
            else PlainDisconnect.model_validate_json,
            body,
        )
        for body in sample
    ]
    read = parsing.read

    def tracker_pass() -> None:
        for body in sample:
            read(body)

    def plain_pass() -> None:
        for validate, body in plain:
            validate(body)

    tracker_timer = timeit.Timer(tracker_pass)
    plain_timer = timeit.Timer(plain_pass)
    number = max(1, math.ceil(0.05 / plain_timer.timeit(1)))
    tracker_times: list[float] = []
    plain_times: list[float] = []
    for _ in range(repeat):
        tracker_times.append(tracker_timer.timeit(number))
        plain_times.append(plain_timer.timeit(number))
    per_body = 1e6 / (number * len(sample))
    return ParseFigures(min(tracker_times) * per_body, min(plain_times) * per_body)


def measure_per_event_type(
    databases: _Databases, bodies: Sequence[bytes], warmup: Sequence[bytes]
) -> dict[str, float]:
    """Mean µs of one `apply` per event type, over the stream in arrival order (one commit per
    delivery): a live callback should cost no more than a terminal one."""
    spent: defaultdict[str, list[float]] = defaultdict(list)
    with databases.fresh() as url, Tracker(url) as tracker:
        tracker.upgrade()
        _apply_with(tracker, "apply", warmup, 1)
        for body in bodies:
            event_type = str(json.loads(body)["eventType"])
            started = time.perf_counter()
            tracker.apply(body)
            spent[event_type].append(time.perf_counter() - started)
    return {
        event_type: statistics.fmean(times) * 1e6
        for event_type, times in sorted(spent.items(), key=lambda item: -len(item[1]))
    }


# --- pages written per commit: WAL frames on SQLite ------------------------------------------


@dataclass(frozen=True)
class WalFrames:
    """WAL frames appended per delivery, one commit each, by the tracker's `apply` and the floor
    on the same deliveries."""

    deliveries: int
    tracker: float
    floor: float

    @property
    def passed(self) -> bool:
        return self.tracker <= WAL_FRAMES_TARGET


def measure_wal_frames(
    databases: _Databases, bodies: Sequence[bytes], warmup: Sequence[bytes]
) -> WalFrames:
    """WAL frames per delivery of the floor and of `apply`, one commit per delivery, on the first
    `WAL_DELIVERIES` bodies, each after the warm-up. Counted before any connection closes: the
    last one to close checkpoints the WAL and deletes it. The stream is sorted by arrival, so its
    start, and the count, are the same for one seed once `--deliveries` is a few times larger."""
    sample = bodies[:WAL_DELIVERIES]
    with databases.fresh() as url:
        database = make_url(url).database
        assert database
        floor = _SqliteFloor(make_url(url))
        try:
            wal.no_auto_checkpoint(floor.connection)
            wal.check_no_auto_checkpoint(
                floor.connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            )
            floor.create_schema()
            floor.run(warmup, 1)
            before = wal.mark(database)
            floor.run(sample, 1)
            floor_frames = wal.frames_between(before, wal.mark(database))
        finally:
            floor.close()
    with databases.fresh() as url, Tracker(url) as tracker:
        database = make_url(url).database
        assert database
        tracker.upgrade()
        # Added after the tracker's own connect listeners, so it runs after their pragmas; the
        # pool is emptied so that no connection made before it is used.
        event.listen(tracker.engine, "connect", wal.no_auto_checkpoint)
        tracker.engine.dispose()
        _apply_with(tracker, "apply", warmup, 1)
        with tracker.engine.connect() as connection:
            wal.check_no_auto_checkpoint(
                connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            )
        before = wal.mark(database)
        _apply_with(tracker, "apply", sample, 1)
        tracker_frames = wal.frames_between(before, wal.mark(database))
    return WalFrames(len(sample), tracker_frames / len(sample), floor_frames / len(sample))


# --- the whole benchmark ----------------------------------------------------------------------


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


def _peak_rss_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


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
    for package in ("tracker", "sqlalchemy", "pydantic", "psycopg"):
        with suppress(metadata.PackageNotFoundError):
            machine[package] = metadata.version(package)
    return machine


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
    backends = [_Databases(target, directory) for target in targets]
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
    children = _peak_rss_mb(resource.RUSAGE_CHILDREN)
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
        peak_rss_mb=_peak_rss_mb(resource.RUSAGE_SELF),
        worker_peak_rss_mb=children if children > 0 else None,
    )


# --- the webhook endpoint ---------------------------------------------------------------------


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
    backends = [_Databases(target, directory) for target in targets]
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


# --- profiling --------------------------------------------------------------------------------


def profile(mode: Mode, deliveries: int, batch: int, seed: int, directory: Path) -> str:
    """cProfile of the tracker's `mode` on SQLite, with the SQL statements it sends per delivery."""
    bodies = realistic_bodies(deliveries, seed)
    warmup = realistic_bodies(WARMUP_DELIVERIES, seed + 1_000_003)
    databases = _Databases("sqlite", directory)
    statements: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        words = statement.split()
        table = next((word for word in words if word.startswith("tracker_")), "")
        statements[f"{' '.join(words[:1])} {table.split('.')[0]}".strip()] += 1

    with databases.fresh() as url, Tracker(url) as tracker:
        tracker.upgrade()
        _apply_with(tracker, mode, warmup, batch)
        event.listen(tracker.engine, "before_cursor_execute", count)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        _apply_with(tracker, mode, bodies, batch)
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


# --- command line -----------------------------------------------------------------------------


def _workers(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,4, not {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers like 1,4")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Measure the tracker's apply and apply_many against the least work any "
        "tracker must do, on the same bodies and the same kind of database.",
    )
    parser.add_argument(
        "--db",
        action="append",
        metavar="sqlite|URL",
        help="'sqlite' (files in a temporary directory; the default) or a PostgreSQL URL whose "
        "server may create and drop databases named tracker_bench_*; repeat to run several",
    )
    parser.add_argument("--deliveries", type=int, default=2000, metavar="N")
    parser.add_argument("--repeat", type=int, default=3, metavar="R")
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="1,4",
        help="numbers of processes to run with (default: 1 on SQLite, 1,4 on PostgreSQL)",
    )
    parser.add_argument("--batch", type=int, default=500, help="deliveries per apply_many")
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
    if args.deliveries < 1 or args.repeat < 1 or args.batch < 1:
        parser.error("--deliveries, --repeat and --batch must be positive")

    with tempfile.TemporaryDirectory(prefix="tracker-bench-", dir=args.sqlite_dir) as directory:
        if args.profile:
            print(profile(args.profile, args.deliveries, args.batch, args.seed, Path(directory)))
            return 0
        report: Report | EndpointReport
        if args.http:
            report = run_endpoint(
                args.db or ["sqlite"],
                deliveries=args.deliveries,
                repeat=args.repeat,
                seed=args.seed,
                directory=Path(directory),
                progress=lambda line: print(line, file=sys.stderr, flush=True),
            )
        else:
            report = run(
                args.db or ["sqlite"],
                deliveries=args.deliveries,
                repeat=args.repeat,
                workers=args.workers,
                batch=args.batch,
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
