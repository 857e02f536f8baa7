"""Engine setup per backend: SQLite's pragmas and explicit BEGIN, the servers' isolation
level, pool and bounds (lock, statement and socket timeouts), a PostgreSQL schema, and the
same setup applied to a host application's engine (`adopt_engine`)."""

from __future__ import annotations

import math
import random
import sqlite3
import time
import weakref
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as sqlalchemy_create_engine
from sqlalchemy.engine import URL, make_url

from tracker import _private_apis
from tracker.storage import driver

DEFAULT_TIMEOUT: Final = 30.0
"""Seconds a delivery may wait for a lock, a statement or a silent server before it fails."""


def create_engine(
    database: str | URL,
    *,
    durable: bool = True,
    schema: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Engine:
    """An engine set up for many long-running workers.

    SQLite: WAL so readers never block the writer, `synchronous=FULL` so a returned `apply`
    survives a power loss (`durable=False` trades that for speed: NORMAL loses the last
    transactions on power loss, never consistency), a busy timeout of `timeout` so concurrent
    writers wait instead of failing, and `BEGIN IMMEDIATE` for writes: pysqlite begins lazily,
    which lets two writers read the same row and only then collide.
    Servers: READ COMMITTED (the compare-and-set does the rest), pre-ping, so a connection the
    server dropped overnight is replaced instead of failing a delivery, and `timeout` as the
    server's lock and statement timeouts (plus a client-side read timeout on MySQL/MariaDB, which
    holds even when the server stops answering altogether). `timeout=None` sets no bound.
    `schema` (PostgreSQL only) puts the tracker's tables in a schema of their own, apart from the
    host application's, by setting each connection's search path.
    """
    _check_timeout(timeout)
    url = make_url(database)
    backend = url.get_backend_name()
    if schema is not None and backend != "postgresql":
        raise ValueError(f"a schema name is a PostgreSQL setting; {backend} has none")
    if backend == "sqlite":
        engine = sqlalchemy_create_engine(url)
        _prepare_sqlite(engine, durable=durable, timeout=timeout)
        return engine
    connect_args: dict[str, Any] = {}
    if timeout is not None:
        connect_args = (
            _postgresql_bounds(url, timeout) if backend == "postgresql" else _mysql_bounds(timeout)
        )
    engine = sqlalchemy_create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_recycle=3600,
        pool_timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        connect_args=connect_args,
    )
    if backend != "postgresql" and timeout is not None:
        _bound_mysql_sessions(engine, timeout)
    if schema is not None:
        _use_schema(engine, schema)
    return engine


def adopt_engine(
    engine: Engine,
    *,
    durable: bool = True,
    schema: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Engine:
    """Set up a host application's engine for the tracker; returns the engine to use.

    SQLite: the same setup as `create_engine`, on every connection of the engine, the host's
    included, because a pragma or the way transactions begin cannot differ between two
    connections to one file without one of them breaking the other's guarantees. Servers: the
    host's connections stay as they are; the tracker's own run at READ COMMITTED, and on
    PostgreSQL each of its transactions sets `timeout` as its local lock and statement timeout.
    On MySQL/MariaDB the bounds are session settings and socket timeouts, which only the
    engine's owner can set without changing every connection of the pool (see docs/databases.md).
    """
    _check_timeout(timeout)
    if schema is not None:
        raise ValueError(
            "schema= needs an engine the tracker creates, since a search path set on your "
            "engine would change your own connections too: pass the URL with schema= "
            "(Tracker(url, schema=...)), or leave schema unset and give your engine's "
            "connections the search path yourself (a 'connect' listener running SET search_path)"
        )
    if engine.dialect.name == "sqlite":
        # Listeners go on the engine that owns the pool, so that every connection, whichever
        # `execution_options()` copy of the engine it comes from, begins the same way.
        _prepare_sqlite(_private_apis.pool_owner(engine), durable=durable, timeout=timeout)
        return engine
    # The option is applied when the tracker checks a connection out and reset when it returns
    # it, so the host's connections keep their own isolation level.
    own = engine.execution_options(isolation_level="READ COMMITTED")
    if own.dialect.name == "postgresql" and timeout is not None:
        _bound_postgresql_transactions(own, timeout)
    return own


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, or None; got {timeout}")


def _postgresql_bounds(url: URL, timeout: float) -> dict[str, Any]:
    """libpq parameters: the server ends a statement or a lock wait after `timeout`, and the
    kernel drops a connection whose sent data goes unacknowledged that long (a dead network).
    Options the URL already sets are kept."""
    milliseconds = max(1, round(timeout * 1000))
    options = f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"
    given = url.query.get("options")
    if isinstance(given, str):
        options = f"{given} {options}"
    bounds: dict[str, Any] = {"options": options, "tcp_user_timeout": milliseconds}
    if "connect_timeout" not in url.query:
        bounds["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's smallest useful value
    return bounds


def _mysql_bounds(timeout: float) -> dict[str, Any]:
    """pymysql's socket timeouts: they hold even when the server process is paused. They are set
    a little beyond the server's own bounds, so that a lock wait ends with the server's clean
    error and the connection stays usable, and only a silent server is cut off."""
    return {
        "connect_timeout": timeout,
        "read_timeout": math.ceil(timeout) + _CLIENT_GRACE_SECONDS,
        "write_timeout": math.ceil(timeout) + _CLIENT_GRACE_SECONDS,
    }


# How much longer the client waits than the server's own bound before cutting the connection.
_CLIENT_GRACE_SECONDS: Final = 1


def _bound_mysql_sessions(engine: Engine, timeout: float) -> None:
    seconds = max(1, math.ceil(timeout))

    @event.listens_for(engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        # MariaDB bounds any statement; MySQL has no such variable (its max_execution_time
        # covers only SELECT), so there the client's read timeout is the statement bound.
        mariadb = "mariadb" in str(connection.get_server_info()).lower()
        statement = f", max_statement_time = {seconds}" if mariadb else ""
        cursor = connection.cursor()
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}{statement}")
        cursor.close()


def _bound_postgresql_transactions(engine: Engine, timeout: float) -> None:
    """For an engine the host owns: the bounds of `_postgresql_bounds`, scoped to each of the
    tracker's transactions (set_config(..., true) is SET LOCAL), so the host's own connections
    keep their settings. Upgrades run unbounded (`tracker_upgrade`)."""
    milliseconds = str(max(1, round(timeout * 1000)))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if not connection.get_execution_options().get("tracker_upgrade", False):
            connection.exec_driver_sql(
                "SELECT set_config('statement_timeout', %(ms)s, true), "
                "set_config('lock_timeout', %(ms)s, true)",
                {"ms": milliseconds},
            )


def _use_schema(engine: Engine, schema: str) -> None:
    quoted = engine.dialect.identifier_preparer.quote_identifier(schema)

    @event.listens_for(engine, "connect")
    def _on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        # The schema is created by `upgrade`; until then the search path simply finds nothing.
        cursor.execute(f"SET search_path TO {quoted}")
        cursor.close()
        connection.commit()


@dataclass(frozen=True)
class _SQLiteSetup:
    durable: bool
    timeout: float | None


# The setup each SQLite engine was given, so that two Trackers sharing one engine register its
# listeners once, and cannot ask for two different setups of the same connections.
_sqlite_setups: Final = weakref.WeakKeyDictionary[Engine, _SQLiteSetup]()
_SET_UP: Final = "tracker_sqlite_setup"


def _prepare_sqlite(engine: Engine, *, durable: bool, timeout: float | None) -> None:
    wanted = _SQLiteSetup(durable, timeout)
    given = _sqlite_setups.get(engine)
    if given == wanted:
        return
    if given is not None:
        raise ValueError(
            f"this SQLite engine is already set up for a tracker with durable={given.durable}, "
            f"timeout={given.timeout}; the settings are per connection of the engine, so give "
            "every Tracker sharing it the same ones"
        )
    _sqlite_setups[engine] = wanted
    synchronous = "FULL" if durable else "NORMAL"
    busy_timeout_ms = _sqlite_busy_timeout_ms(timeout)
    in_memory = engine.url.database in (None, "", ":memory:")

    def set_up(connection: Any, record: Any) -> None:
        if record.info.get(_SET_UP):
            return
        connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        if not in_memory:
            _use_wal(cursor, busy_timeout_ms)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        record.info[_SET_UP] = True

    # New connections are set up when made; those a host's engine pooled before the tracker
    # came are set up on their next checkout (disposing the pool instead would lose an
    # in-memory database).
    event.listen(engine, "connect", set_up)
    event.listen(engine, "checkout", lambda connection, record, _proxy: set_up(connection, record))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # pysqlite no longer begins by itself (isolation_level=None above), so every
        # transaction on this engine, the host's too, begins here; AUTOCOMMIT asks for none.
        if _private_apis.is_autocommit(connection):
            return
        writing = connection.get_execution_options().get("tracker_write", False)
        driver.run(connection, _BEGIN_IMMEDIATE if writing else _BEGIN, {})


def has_sqlite_setup(connection: Connection) -> bool:
    """True when this SQLite connection got the tracker's setup (`_prepare_sqlite`): pysqlite's
    own transaction handling, which would let a SAVEPOINT begin (and its RELEASE commit) a
    transaction of its own, is replaced there by an explicit BEGIN."""
    return bool(connection.connection.info.get(_SET_UP))


_BEGIN: Final = driver.plain("BEGIN")
_BEGIN_IMMEDIATE: Final = driver.plain("BEGIN IMMEDIATE")


def _sqlite_busy_timeout_ms(timeout: float | None) -> int:
    return 2**31 - 1 if timeout is None else max(1, round(timeout * 1000))


def _use_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Switch the file to WAL (persistent: a no-op once done). The switch needs an exclusive
    lock, which SQLite refuses at once, busy timeout or not, while another connection holds a
    write lock (waiting could deadlock): processes opening a new file together meet exactly
    that, so the switch is retried here until the busy timeout."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            if "locked" not in str(error).lower() and "busy" not in str(error).lower():
                raise
            mode = ""
        if mode.lower() == "wal":
            return
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: could not switch it to WAL")
        time.sleep(random.uniform(0.005, 0.05))
