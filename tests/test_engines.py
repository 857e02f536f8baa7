"""Engines: a host's engine set up or refused, every wait bounded, and one way to migrate.

The promises under test (docs/databases.md): `Tracker(engine)` gives a SQLite
engine the same setup as `Tracker(url)` and leaves a server engine's own connections alone;
`timeout` ends a delivery stuck behind a lock or a silent server with `StorageError`, once,
not once per retry; the `alembic` command takes the same upgrade lock as `Tracker.upgrade()`;
and no path breaks on a `%` in a file name.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from tests.conftest import fresh_database
from tests.faults_support import LOCK_TIMEOUTS, TABLES, Relay, default_port, faults, table_rows
from tests.test_upgrade_concurrency import migrate, schema_of, version_rows
from tracker import Outcome, StorageError, Tracker
from tracker.schema import head_revision
from tracker.testing import disconnect, transfer_disconnect

ROOT = Path(__file__).resolve().parent.parent
BOUND = 1.0  # seconds: the timeout the tests give the tracker
# A wait bounded by BOUND, with room for a loaded machine; thirty retries of it would not fit.
WITHIN_THE_BOUND = BOUND + 4.0


# --- a host's engine ---------------------------------------------------------------------------


def test_host_sqlite_engine_gets_the_trackers_setup_on_every_connection(tmp_path: Path) -> None:
    for durable, synchronous in ((True, 2), (False, 1)):
        host = create_engine(f"sqlite:///{tmp_path / f'{durable}.db'}")
        with host.connect() as connection:  # pooled before the tracker came
            connection.execute(text("SELECT 1"))

        with Tracker(host, durable=durable, timeout=BOUND) as tracker, host.connect() as pooled:
            assert tracker.engine is host
            pragma = pooled.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == synchronous
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == BOUND * 1000
        host.dispose()


def test_tracker_writes_on_a_host_sqlite_engine_begin_immediate(tmp_path: Path) -> None:
    """Without BEGIN IMMEDIATE two writers read the same row and only then collide."""
    host = create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    with Tracker(host) as tracker:
        tracker.upgrade()
        tracker.get_call("c-0")  # the schema check, a read, is behind us
        with statements(host) as seen:
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
        assert seen[0] == "BEGIN IMMEDIATE"
    host.dispose()


def test_host_sqlite_connections_stay_transactional_and_autocommit_stays_autocommit(
    tmp_path: Path,
) -> None:
    """The setup changes how the host's transactions begin; it must not change what they do."""
    host = create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    with host.begin() as connection:
        connection.execute(text("CREATE TABLE host_rows (x INTEGER)"))
    with Tracker(host):
        with host.connect() as connection:
            transaction = connection.begin()
            connection.execute(text("INSERT INTO host_rows VALUES (1)"))
            assert rows_seen_by_another_connection(tmp_path / "host.db") == []
            transaction.rollback()
        with host.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("INSERT INTO host_rows VALUES (2)"))
            assert rows_seen_by_another_connection(tmp_path / "host.db") == [(2,)]
        with host.begin() as connection:
            connection.execute(text("INSERT INTO host_rows VALUES (3)"))
        assert rows_seen_by_another_connection(tmp_path / "host.db") == [(2,), (3,)]
    host.dispose()


def test_two_trackers_sharing_a_sqlite_engine_set_it_up_once(tmp_path: Path) -> None:
    host = create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    with Tracker(host) as first, Tracker(host) as second:
        first.upgrade()
        # Set up twice, the engine would send BEGIN twice and every transaction would fail.
        assert first.apply(disconnect()).outcome is Outcome.APPLIED
        assert second.apply(disconnect()).outcome is Outcome.APPLIED
        with pytest.raises(ValueError, match="same"):
            Tracker(host, durable=False)
    host.dispose()


def test_schema_with_an_engine_is_refused_with_the_way_out(database_url: str) -> None:
    host = create_engine(database_url)
    with pytest.raises(ValueError, match=r"Tracker\(url, schema=\.\.\.\)"):
        Tracker(host, schema="call_tracking")
    host.dispose()


def test_tracker_on_a_host_engine_applies_and_leaves_the_engine_to_its_owner(
    database_url: str,
) -> None:
    host = create_engine(database_url)
    with Tracker(host) as tracker:
        tracker.upgrade()
        body = disconnect()
        assert tracker.apply(body).outcome is Outcome.APPLIED
        assert tracker.get_call(body["callId"]) is not None
    assert isinstance(host.pool, QueuePool)
    assert host.pool.checkedin() >= 1, "closing the tracker must not dispose the host's pool"
    with host.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM tracker_calls")).scalar() == 1
    host.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_tracker_runs_read_committed_on_a_host_server_engine_that_does_not(
    backend: str, tmp_path: Path
) -> None:
    for url in fresh_database(backend, tmp_path):
        host = create_engine(url, isolation_level="REPEATABLE READ")
        with Tracker(host) as tracker:
            tracker.upgrade()
            with tracker.engine.connect() as connection:
                assert connection.get_isolation_level() == "READ COMMITTED"
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
            with host.connect() as connection:
                assert connection.get_isolation_level() == "REPEATABLE READ"
        host.dispose()


# --- every wait bounded -------------------------------------------------------------------------


def test_apply_blocked_by_a_lock_fails_after_the_timeout_then_works_again(
    backend: str, database_url: str
) -> None:
    """Another session holds the row (PostgreSQL, MariaDB) or the write lock (SQLite) the
    delivery needs, and does not let go."""
    with Tracker(database_url, timeout=BOUND) as tracker:
        tracker.upgrade()
        check_blocked_apply_is_bounded(tracker, backend, database_url)


def test_tracker_on_a_host_engine_bounds_its_lock_waits(backend: str, database_url: str) -> None:
    """SQLite and PostgreSQL: the tracker sets the bound itself. MariaDB: the bound belongs to
    the engine's owner; the engine here is made as docs/databases.md tells a host to."""
    if backend == "mariadb":
        host = create_engine(
            database_url,
            connect_args={
                "read_timeout": 2,
                "write_timeout": 2,
                "init_command": "SET SESSION innodb_lock_wait_timeout = 1, max_statement_time = 1",
            },
        )
    else:
        host = create_engine(database_url)
    with Tracker(host, timeout=BOUND) as tracker:
        tracker.upgrade()
        check_blocked_apply_is_bounded(tracker, backend, database_url)
    host.dispose()


def test_lock_wait_timeout_is_not_retried(backend: str, database_url: str) -> None:
    """It already waited the whole bound: retrying would multiply it by `max_attempts`."""
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        with (
            faults(tracker.engine, "INSERT INTO tracker_calls", LOCK_TIMEOUTS[backend]) as struck,
            pytest.raises(StorageError),
        ):
            tracker.apply(disconnect())
        assert len(struck) == 1
        assert table_rows(tracker.engine) == {table: [] for table in TABLES}


def test_apply_on_a_mariadb_server_that_stopped_answering_fails_after_the_timeout(
    tmp_path: Path,
) -> None:
    """The server's process frozen (a relay that swallows what it gets and answers nothing):
    no server-side timeout can fire, the client's read timeout does. PostgreSQL's drivers have
    no such timeout (docs/operations.md); SQLite has no server."""
    for url in fresh_database("mariadb", tmp_path):
        migrate(url)
        target = make_url(url)
        assert target.host is not None
        relay = Relay(target.host, target.port or default_port(url))
        through = target.set(host="127.0.0.1", port=relay.port).render_as_string(False)
        try:
            with Tracker(through, timeout=BOUND) as tracker:
                assert tracker.apply(disconnect()).outcome is Outcome.APPLIED

                relay.pause()
                started = time.monotonic()
                with pytest.raises(StorageError):
                    tracker.apply(disconnect())
                assert time.monotonic() - started < WITHIN_THE_BOUND

                relay.resume()
                assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
        finally:
            relay.cut()


@pytest.mark.parametrize("backend", ["postgresql"])  # psycopg prepares; the others do not
def test_a_batch_looks_its_calls_up_with_a_plan_made_for_them(
    tracker: Tracker, backend: str
) -> None:
    """psycopg prepares a statement after five runs, and PostgreSQL may keep the generic plan it
    made then. For a look-up of a batch's ids, made while the table was small, that plan scans
    the whole table, and keeps doing so as the table grows until an ANALYZE (for good where
    autovacuum is off: a bulk load slowed from 2,000 to 500 deliveries/s by 150,000 calls). So
    the batch's look-ups are never prepared; one delivery's are."""
    sessions: list[Any] = []

    def remember(_connection: Any, cursor: Any, *_rest: Any) -> None:
        sessions.append(cursor.connection)

    event.listen(tracker.engine, "after_cursor_execute", remember)
    for _ in range(8):  # more runs than psycopg needs to prepare a statement
        tracker.apply_many([disconnect() for _ in range(3)])
        tracker.apply(disconnect())
    event.remove(tracker.engine, "after_cursor_execute", remember)

    prepared = {
        row[0]
        for session in {id(session): session for session in sessions}.values()
        for row in session.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    }
    looked_up = [statement for statement in prepared if statement.lstrip().startswith("SELECT")]
    assert looked_up, "one delivery's look-up is prepared, as before"
    assert not [statement for statement in looked_up if " IN (" in statement], looked_up


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Tracker(f"sqlite:///{tmp_path / 'tracker.db'}", timeout=0)


# --- migrating from the command line -----------------------------------------------------------


@pytest.mark.slow
def test_alembic_command_line_from_many_processes_at_once_upgrades_a_new_database_once(
    database_url: str,
) -> None:
    environment = dict(os.environ, TRACKER_DATABASE_URL=database_url, PYTHONPATH=str(ROOT))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]

    assert [run.returncode for run in runs] == [0] * len(runs), [err for _out, err in outputs]
    assert sum("Running upgrade  ->" in err for _out, err in outputs) == 1
    assert version_rows(database_url) == [head_revision()]
    with Tracker(database_url) as tracker:
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


def test_upgrade_and_alembic_command_line_work_with_a_percent_in_every_path(
    tmp_path: Path,
) -> None:
    """The tracker installed under a directory named `50%`, its database in another: neither
    `Tracker.upgrade()` nor the `alembic` command may read the `%` as interpolation."""
    installed = tmp_path / "app 50%"
    installed.mkdir()
    for name in ("tracker", "migrations"):
        shutil.copytree(ROOT / name, installed / name)
    shutil.copy(ROOT / "alembic.ini", installed)
    databases = tmp_path / "data 50%"
    databases.mkdir()
    environment = dict(os.environ, PYTHONPATH=str(installed))

    by_library = f"sqlite:///{databases / 'library.db'}"
    script = f"from tracker import Tracker; Tracker({by_library!r}).upgrade()"
    ran = subprocess.run(
        [sys.executable, "-c", script], cwd=installed, env=environment, capture_output=True
    )
    assert ran.returncode == 0, ran.stderr.decode()

    # The same kind of path, spelt with %-escapes (`data%2050%25`) as a URL may carry it.
    by_command = f"sqlite:///{quote(str(databases / 'command.db'))}"
    assert "%25" in by_command
    ran = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=installed,
        env=dict(environment, TRACKER_DATABASE_URL=by_command),
        capture_output=True,
    )
    assert ran.returncode == 0, ran.stderr.decode()
    assert (databases / "command.db").is_file()

    assert schema_of(by_command) == schema_of(by_library)
    for url in (by_library, by_command):
        assert version_rows(url) == [head_revision()]
        with Tracker(url) as tracker:
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


# --- helpers -----------------------------------------------------------------------------------


def check_blocked_apply_is_bounded(tracker: Tracker, backend: str, url: str) -> None:
    """A leg creates its parent; the parent's own `disconnect` must then update that row, which
    another session holds. The delivery fails after about the bound; once the lock is gone,
    the same delivery goes through."""
    parent = disconnect()
    assert tracker.apply(transfer_disconnect(parent["callId"])).outcome is Outcome.APPLIED

    with holding_lock(backend, url, parent["callId"]):
        started = time.monotonic()
        with pytest.raises(StorageError):
            tracker.apply(parent)
        waited = time.monotonic() - started
    assert BOUND * 0.8 <= waited < WITHIN_THE_BOUND

    assert tracker.apply(parent).outcome is Outcome.APPLIED


@contextmanager
def holding_lock(backend: str, url: str, call_id: str) -> Iterator[None]:
    if backend == "sqlite":
        path = make_url(url).database
        assert path is not None
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(
                text("SELECT call_id FROM tracker_calls WHERE call_id = :id FOR UPDATE"),
                {"id": call_id},
            )
            yield
    finally:
        engine.dispose()


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement sent on `engine` while active, BEGINs included."""
    seen: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement.strip())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def rows_seen_by_another_connection(path: Path) -> list[tuple[Any, ...]]:
    other = sqlite3.connect(path)
    try:
        return other.execute("SELECT x FROM host_rows ORDER BY x").fetchall()
    finally:
        other.close()
