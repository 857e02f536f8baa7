"""Shared by the database failure tests and others: injected faults, a relay, table readers."""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg.errors
import pymysql.err  # type: ignore[import-untyped]
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from tracker import Tracker

TABLES = ("tracker_events", "tracker_calls", "tracker_transfers")
QUICKLY = 10.0  # seconds: an outage must fail a delivery fast, not hang the webhook


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
