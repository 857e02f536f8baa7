"""When the database fails: all or nothing, a documented error, and a clean retry.

The promise under test (SPEC section 1): "If `apply` raises (the database failed), nothing of that
body was written, so the caller can answer non-2xx and deliver it again." The error is
`tracker.errors.StorageError`, whatever the driver said; and a database that comes back after an
outage (or that dropped idle connections) is used again without anyone restarting the tracker.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg.errors
import pymysql.err  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, InvalidRequestError

from tests.conftest import fresh_database
from tracker import Outcome, StorageError, Tracker
from tracker.schema import current_revision, head_revision
from tracker.testing import disconnect, transfer_disconnect

TABLES = ("tracker_events", "tracker_calls", "tracker_transfers")
QUICKLY = 10.0  # seconds: an outage must fail a delivery fast, not hang the webhook


@pytest.fixture(params=("postgresql", "mariadb"))
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own on each database server (faults of a network connection)."""
    yield from fresh_database(str(request.param), tmp_path)


@pytest.fixture
def admin(database_url: str) -> Iterator[Engine]:
    """Another session on the same database, as an operator's console would be."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


# --- a connection killed in the middle of `apply` ----------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO tracker_events",
        "INSERT INTO tracker_calls",
        "UPDATE tracker_calls",
    ],
)
def test_connection_killed_in_the_middle_of_apply_writes_nothing_and_raises_storage_error(
    backend: str, tracker: Tracker, admin: Engine, statement: str
) -> None:
    """PostgreSQL: pg_terminate_backend; MariaDB: KILL; SQLite (no server to kill it): the driver
    fails with a disk I/O error. Each time just before `statement` of the delivery runs."""
    parent = disconnect()
    assert tracker.apply(parent).outcome is Outcome.APPLIED
    leg = json.dumps(transfer_disconnect(parent["callId"]))
    before = table_rows(tracker.engine)

    with (
        faults(tracker.engine, statement, killer(backend, admin)) as struck,
        pytest.raises(StorageError, match=r"^the database failed and nothing of this delivery was"),
    ):
        tracker.apply(leg)
    assert len(struck) == 1, "the fault must strike inside this very delivery, once"

    assert table_rows(tracker.engine) == before
    assert tracker.apply(leg).outcome is Outcome.APPLIED
    assert tracker.apply(leg).outcome is Outcome.DUPLICATE
    found = tracker.get_call(parent["callId"])
    assert found is not None
    assert found.legs == (json.loads(leg)["callId"],)
    assert [entry.outcome for entry in tracker.events()] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_connection_lost_during_commit_says_the_outcome_is_unknown_and_redelivery_is_safe(
    backend: str, tracker: Tracker, admin: Engine
) -> None:
    """The connection dies as the COMMIT goes out: the tracker cannot know whether the server
    committed, so it says so, and asks for the delivery again (never "nothing was written").
    Delivered again, it is applied (the commit was lost) or `duplicate` (it was not): the log
    holds it applied exactly once."""
    body = json.dumps(disconnect())

    with (
        faults(tracker.engine, COMMIT, killer(backend, admin)) as struck,
        pytest.raises(StorageError) as raised,
    ):
        tracker.apply(body)
    assert len(struck) == 1

    message = str(raised.value)
    assert "lost during the commit" in message
    assert "whether it was written is unknown" in message
    assert "deliver it again" in message
    assert "nothing of this delivery was written" not in message
    assert tracker.apply(body).outcome in (Outcome.APPLIED, Outcome.DUPLICATE)
    assert tracker.apply(body).outcome is Outcome.DUPLICATE
    assert [entry.outcome for entry in tracker.events()].count(Outcome.APPLIED) == 1


# --- what the database refuses: a bug to report, not a failing server ----------------------------


def test_a_value_the_database_refuses_is_reported_as_refused_data_and_nothing_is_written(
    backend: str, database_url: str
) -> None:
    """A value too long for its column, refused by the database itself: PostgreSQL and MariaDB
    (strict mode) for a `tag` column narrowed by the test, SQLite for a body over a length limit
    set on its connections. The message tells a bug to report from a failing server."""
    with Tracker(database_url) as tracker:
        if backend == "sqlite":
            event.listen(tracker.engine, "connect", _limit_sqlite_values)
        tracker.upgrade()
        narrow_tag(tracker.engine, backend)
        short = disconnect(tag="short")
        assert tracker.apply(short).outcome is Outcome.APPLIED
        before = table_rows(tracker.engine)
        too_long = disconnect(tag="x" * (SQLITE_VALUE_LIMIT + 1000))

        for batch in ([too_long], [disconnect(), too_long]):
            with pytest.raises(StorageError) as raised:
                tracker.apply_many(batch)

            message = str(raised.value)
            assert "the database refused this data" in message
            assert "a bug in the tracker" in message
            assert "nothing of it was written" in message
            assert ("these deliveries" if len(batch) > 1 else "this delivery") in message
            assert "the database failed" not in message
            assert isinstance(raised.value.__cause__, DataError)
            assert table_rows(tracker.engine) == before


def test_a_constraint_the_tracker_breaks_is_reported_as_a_bug_apart_from_refused_data(
    backend: str, database_url: str
) -> None:
    """A CHECK constraint the test adds (a trigger on SQLite, which cannot add one to a table):
    an `IntegrityError` that is no race is not retried, and says so."""
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        refuse_tag(tracker.engine, backend, "refused")
        with pytest.raises(StorageError) as raised:
            tracker.apply(disconnect(tag="refused"))

        message = str(raised.value)
        assert "a database constraint refused this delivery" in message
        assert "a bug in the tracker" in message
        assert "the database refused this data" not in message
        assert table_rows(tracker.engine) == {table: [] for table in TABLES}
        assert tracker.apply(disconnect(tag="accepted")).outcome is Outcome.APPLIED


@pytest.mark.parametrize("batch", [1, 3], ids=["apply", "apply_many"])
def test_an_error_of_sqlalchemy_itself_is_a_storage_error_and_writes_nothing(
    backend: str, tracker: Tracker, batch: int
) -> None:
    """Not the database's answer but SQLAlchemy's own refusal (as a dialect without INSERT ...
    RETURNING for many rows gave): never a raw SQLAlchemy error out of `apply`."""
    refusal = losing(InvalidRequestError("this dialect cannot run the statement"))
    bodies = [json.dumps(disconnect()) for _ in range(batch)]

    with faults(tracker.engine, "INSERT INTO tracker_calls", refusal, refusal) as struck:
        with pytest.raises(StorageError) as raised:
            tracker.apply_many(bodies)
        assert len(struck) == 1
        with (
            tracker.engine.connect() as connection,
            connection.begin(),
            pytest.raises(StorageError) as in_host_transaction,
        ):
            tracker.apply_many(bodies, connection=connection)
        assert len(struck) == 2

    assert "a bug in the tracker" in str(raised.value)
    assert "a bug in the tracker" in str(in_host_transaction.value)
    assert table_rows(tracker.engine) == {table: [] for table in TABLES}
    assert [result.outcome for result in tracker.apply_many(bodies)] == [Outcome.APPLIED] * batch


# --- races lost to deadlocks and serialization failures ----------------------------------------


def test_delivery_losing_to_deadlocks_and_serialization_failures_is_retried_and_applied_once(
    backend: str, tracker: Tracker
) -> None:
    """The database picks a transaction as the loser (PostgreSQL 40P01/40001, MariaDB 1213,
    SQLite SQLITE_BUSY_SNAPSHOT): the tracker rolls back and tries again, invisibly."""
    body = disconnect()
    losses = LOSSES[backend] * 2

    with faults(tracker.engine, "INSERT INTO tracker_calls", *losses) as struck:
        result = tracker.apply(body)

    assert result.outcome is Outcome.APPLIED
    assert len(struck) == len(losses) + 1  # every loss, then the attempt that went through
    assert [entry.outcome for entry in tracker.events()] == [Outcome.APPLIED]
    call = tracker.get_call(body["callId"])
    assert call is not None
    assert [(step.source, step.target) for step in call.history] == [
        ("initiated", "answered"),
        ("answered", "disconnected"),
    ]


def test_delivery_that_keeps_losing_gives_up_after_max_attempts_and_writes_nothing(
    backend: str, database_url: str
) -> None:
    attempts = 6
    with Tracker(database_url, max_attempts=attempts) as tracker:
        tracker.upgrade()
        always_losing = LOSSES[backend] * attempts * 2

        with faults(tracker.engine, "INSERT INTO tracker_calls", *always_losing) as struck:
            started = time.monotonic()
            with pytest.raises(StorageError):
                tracker.apply(disconnect())
            seconds = time.monotonic() - started

        assert len(struck) == attempts
        assert seconds < QUICKLY
        assert table_rows(tracker.engine) == {table: [] for table in TABLES}


def test_retries_pause_with_a_bounded_jittered_growing_backoff(
    sqlite_tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that collided must not collide again in lockstep: each pause is random, pauses
    grow from one attempt to the next, and none is long enough to stall a webhook."""
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    sequences: list[list[float]] = []
    for _ in range(2):
        pauses.clear()
        with faults(sqlite_tracker.engine, "INSERT INTO tracker_calls", *LOSSES["sqlite"] * 5):
            assert sqlite_tracker.apply(disconnect()).outcome is Outcome.APPLIED
        sequences.append(list(pauses))

    for sequence in sequences:
        assert len(sequence) == 5
        assert all(0 < pause <= 1.0 for pause in sequence)
        assert sequence[-1] > sequence[0]
    assert sequences[0] != sequences[1], "the pauses must be jittered, not a fixed schedule"


# --- a database that cannot be reached ---------------------------------------------------------


def test_apply_on_an_unreachable_database_raises_storage_error_quickly(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    """A tracker started while its database is down: the first delivery fails with the documented
    error (the caller answers non-2xx), not with a driver's exception."""
    if backend == "sqlite":
        unreachable = f"sqlite:///{tmp_path / 'no-such-directory' / 'tracker.db'}"
    else:
        unreachable = make_url(database_url).set(port=unused_port()).render_as_string(False)

    with Tracker(unreachable) as tracker:
        started = time.monotonic()
        with pytest.raises(StorageError):
            tracker.apply(disconnect())
    assert time.monotonic() - started < QUICKLY


@pytest.mark.slow
def test_database_unreachable_for_a_while_loses_nothing_and_is_used_again(
    server_url: str,
) -> None:
    """A network outage between a running tracker and its server: deliveries during the outage
    fail with StorageError and leave nothing behind; after it, the same tracker carries on."""
    with Tracker(server_url) as direct:
        direct.upgrade()
    target = make_url(server_url)
    assert target.host is not None
    relay = Relay(target.host, target.port or default_port(server_url))
    before_outage, during_outage = disconnect(), json.dumps(disconnect())
    try:
        through = make_url(server_url).set(host="127.0.0.1", port=relay.port)
        with Tracker(through.render_as_string(False)) as tracker:
            assert tracker.apply(before_outage).outcome is Outcome.APPLIED

            relay.cut()
            started = time.monotonic()
            with pytest.raises(StorageError):
                tracker.apply(during_outage)
            assert time.monotonic() - started < QUICKLY
            with Tracker(server_url) as direct:
                assert [entry.call_id for entry in direct.events()] == [before_outage["callId"]]
                assert direct.get_call(json.loads(during_outage)["callId"]) is None

            relay.restore()
            assert tracker.apply(during_outage).outcome is Outcome.APPLIED
            assert tracker.apply(before_outage).outcome is Outcome.DUPLICATE
    finally:
        relay.cut()


def test_idle_pooled_connections_dropped_by_the_server_are_replaced(
    server_url: str,
) -> None:
    """A server restart or an idle timeout kills the pool's connections; the next delivery must
    not fail for it (its first statement finds the kept connection dead, and the delivery runs
    again on a fresh one)."""
    with Tracker(server_url) as tracker:
        tracker.upgrade()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED

        killed = kill_other_sessions(server_url)

        assert killed >= 1, "the tracker's pooled connection should have been killed"
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


def test_deliveries_send_no_ping(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round trip per delivery to ask whether the connection is alive would cost as much as a
    statement: the kept connection's first statement tells."""
    with Tracker(server_url) as tracker:
        tracker.upgrade()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
        pings: list[object] = []
        ping = type(tracker.engine.dialect).do_ping
        monkeypatch.setattr(
            type(tracker.engine.dialect),
            "do_ping",
            lambda dialect, connection: pings.append(connection) or ping(dialect, connection),
        )
        for _ in range(5):
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
        assert pings == []


def test_sqlite_locked_for_a_while_by_another_writer_makes_apply_wait_not_fail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tracker.db"
    with Tracker(f"sqlite:///{path}") as tracker:
        tracker.upgrade()
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(1.5, other.execute, args=("COMMIT",))
        release.start()
        try:
            started = time.monotonic()
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
            assert time.monotonic() - started >= 1.0, "apply should have waited for the lock"
        finally:
            release.join()
            other.close()


def test_apply_waiting_in_vain_for_a_free_connection_raises_storage_error(
    database_url: str,
) -> None:
    """More deliveries in flight than connections, and none freed in time (a stalled server):
    the delivery fails with the documented error, so the webhook answers non-2xx."""
    migrate(database_url)
    engine = create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    body = json.dumps(disconnect())
    with Tracker(engine) as tracker:
        tracker.get_call("warm-up")
        with engine.connect(), pytest.raises(StorageError):  # the pool's only connection
            tracker.apply(body)

        assert tracker.apply(body).outcome is Outcome.APPLIED


# --- an upgrade interrupted --------------------------------------------------------------------


def test_upgrade_interrupted_by_a_lost_connection_raises_storage_error_and_can_be_run_again(
    backend: str, database_url: str, admin: Engine
) -> None:
    """A worker's start-up `upgrade()` loses its connection half-way through the first
    migration. It fails with the documented error, and the next `upgrade()` completes the schema
    (MariaDB cannot roll DDL back, so whatever the first one built must not block the second)."""
    with Tracker(database_url) as tracker:
        with (
            # Every engine: on a server the upgrade runs on an engine of its own, one without
            # the delivery timeout.
            faults(Engine, "CREATE TABLE .*tracker_transfers", killer(backend, admin)),
            pytest.raises(StorageError),
        ):
            tracker.upgrade()

        tracker.upgrade()

        assert set(TABLES) <= set(inspect(tracker.engine).get_table_names())
        with tracker.engine.connect() as connection:
            assert current_revision(connection) == head_revision()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


# --- helpers -----------------------------------------------------------------------------------


Fault = Callable[[Any], None]
"""Called with the DB-API connection a delivery is using, just before one of its statements (or
its commit) runs; makes that statement fail."""

COMMIT = "COMMIT"


def killer(backend: str, admin: Engine) -> Fault:
    """The connection killed from another session: PostgreSQL's pg_terminate_backend, MariaDB's
    KILL. SQLite has no server to kill a connection, so its driver fails instead."""

    def terminate_backend(dbapi_connection: Any) -> None:
        pid = dbapi_connection.info.backend_pid
        with admin.connect() as session:
            # The timeout makes pg_terminate_backend wait until the backend is gone.
            done = session.execute(
                text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}
            ).scalar()
        assert done is True

    def kill_connection(dbapi_connection: Any) -> None:
        thread_id = int(dbapi_connection.thread_id())
        with admin.connect() as session:
            session.execute(text(f"KILL CONNECTION {thread_id}"))
            wait_until(lambda: not session_exists(session, thread_id))

    def fail_disk(_dbapi_connection: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    return {
        "postgresql": terminate_backend,
        "mariadb": kill_connection,
        "sqlite": fail_disk,
    }[backend]


def losing(error: Exception) -> Fault:
    def lose(_dbapi_connection: Any) -> None:
        raise error

    return lose


def sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    """A driver error as SQLite reports it, with its extended result code."""
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


# How each database tells a transaction it lost: a deadlock, a serialization failure, SQLite's
# BUSY_SNAPSHOT (another connection wrote since this one's snapshot; no busy wait precedes it).
LOSSES: dict[str, list[Fault]] = {
    "postgresql": [
        losing(psycopg.errors.DeadlockDetected("deadlock detected")),
        losing(psycopg.errors.SerializationFailure("could not serialize access")),
    ],
    "mariadb": [
        losing(pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")),
    ],
    "sqlite": [losing(sqlite_error("database is locked", 517))],
}

# How each database says a lock wait ran out of time: it waited the whole bound already.
LOCK_TIMEOUTS: dict[str, Fault] = {
    "postgresql": losing(psycopg.errors.LockNotAvailable("canceling statement: lock timeout")),
    "mariadb": losing(pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")),
    "sqlite": losing(sqlite_error("database is locked", 5)),
}


@contextmanager
def faults(engine: Engine | type[Engine], where: str, *in_turn: Fault) -> Iterator[list[str]]:
    """While active, each statement on `engine` that `where` matches at its start (a regular
    expression, case-insensitive), or each commit for `COMMIT`, first meets the next fault of
    `in_turn`, until they run out. The list yielded records every match, struck or not."""
    pending = list(in_turn)
    matched: list[str] = []

    def strike(dbapi_connection: Any) -> None:
        matched.append(where)
        if pending:
            pending.pop(0)(dbapi_connection)

    def before_cursor_execute(_conn: Any, cursor: Any, statement: str, *_rest: Any) -> None:
        if re.match(where, statement.lstrip(), re.IGNORECASE):
            strike(cursor.connection)

    def before_commit(conn: Connection) -> None:
        strike(conn.connection.dbapi_connection)

    name, listener = (
        ("commit", before_commit)
        if where == COMMIT
        else ("before_cursor_execute", before_cursor_execute)
    )
    event.listen(engine, name, listener)
    try:
        yield matched
    finally:
        event.remove(engine, name, listener)


# A value longer than this, a body included, is refused by the SQLite connections of the test
# that sets it (`_limit_sqlite_values`).
SQLITE_VALUE_LIMIT = 2000


def _limit_sqlite_values(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_VALUE_LIMIT)


def narrow_tag(engine: Engine, backend: str) -> None:
    """Make the servers' `tag` column hold 8 characters at most (SQLite has no lengths)."""
    statement = {
        "postgresql": "ALTER TABLE tracker_calls ALTER COLUMN tag TYPE varchar(8)",
        "mariadb": "ALTER TABLE tracker_calls MODIFY tag varchar(8)",
    }.get(backend)
    if statement is not None:
        with engine.begin() as connection:
            connection.execute(text(statement))


def refuse_tag(engine: Engine, backend: str, tag: str) -> None:
    """A constraint refusing calls tagged `tag`."""
    statement = (
        "CREATE TRIGGER refuse_tag BEFORE INSERT ON tracker_calls FOR EACH ROW "
        f"WHEN NEW.tag = '{tag}' BEGIN SELECT RAISE(ABORT, 'tag refused'); END"
        if backend == "sqlite"
        else f"ALTER TABLE tracker_calls ADD CONSTRAINT refuse_tag CHECK (tag <> '{tag}')"
    )
    with engine.begin() as connection:
        connection.execute(text(statement))


def session_exists(session: Connection, thread_id: int) -> bool:
    return bool(
        session.execute(
            text("SELECT COUNT(*) FROM information_schema.processlist WHERE id = :id"),
            {"id": thread_id},
        ).scalar()
    )


def table_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tracker's tables, in a stable order."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for table in TABLES:
            found = connection.execute(text(f"SELECT * FROM {table}"))
            rows[table] = sorted(tuple(row) for row in found)
    return rows


def kill_other_sessions(url: str) -> int:
    """Kill every other session on `url`'s database, as a server restart would; how many."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as session:
            if engine.dialect.name == "postgresql":
                return len(
                    session.execute(
                        text(
                            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).all()
                )
            ids = session.execute(
                text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
            ).scalars()
            killed = [int(thread_id) for thread_id in ids]
            for thread_id in killed:
                session.execute(text(f"KILL CONNECTION {thread_id}"))
            wait_until(
                lambda: (
                    not session.execute(
                        text(
                            "SELECT id FROM information_schema.processlist "
                            "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                        )
                    ).all()
                )
            )
            return len(killed)
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    with Tracker(url) as tracker:
        tracker.upgrade()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.02)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def default_port(url: str) -> int:
    return 5432 if make_url(url).get_backend_name() == "postgresql" else 3306


class Relay:
    """A TCP relay in front of a database server that can be cut (every connection through it
    dropped, new ones refused) and restored on the same port: a network outage on demand. Or
    paused: connections stay open and what is sent is received, but nothing comes back, as
    from a server whose process is frozen."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        self._flowing.set()  # a paused pump finds its sockets closed and ends
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=_pump, args=(source, sink, self._flowing), daemon=True
                ).start()


def _pump(source: socket.socket, sink: socket.socket, flowing: threading.Event) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            flowing.wait()
            sink.sendall(data)
    for end in (source, sink):
        with suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
