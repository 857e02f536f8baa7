"""Applying inside a transaction the host application holds: `apply(..., connection=...)`.

The host's rows and the tracker's commit or roll back together, so here the tracker begins,
commits, retries and closes nothing of the host's: it writes in a SAVEPOINT of the host's
transaction. A lost race or a database error rolls back the savepoint alone and leaves the host's
transaction as it was, then raises: `ConflictError` for a race, `StorageError` for the rest.

Why no retry here, as `tracker.writing.Writer.run` does: the host's transaction may have read or
written rows that the race made stale, which only the host can redo; and at REPEATABLE READ or
above (MariaDB's default) a retry inside the same transaction reads the same snapshot and loses
again. So the host rolls back and runs its whole transaction again.

Where the database itself ends the whole transaction, the savepoint cannot be rolled back: InnoDB
rolls back a deadlock's loser entirely, SQLite may after an I/O error. The Connection's own
transaction is then rolled back too (the database's is gone already), so that it says so: a host
that carried on would otherwise "commit" an empty transaction, its own rows lost unnoticed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final, TypeVar

from sqlalchemy import Connection, Engine, NestedTransaction
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from tracker import _private_apis, parsing, storage
from tracker.applying import apply_deliveries
from tracker.errors import ConflictError, SchemaError
from tracker.records import Result
from tracker.schema import check_current_on
from tracker.writing import is_lost_race, storage_error

T = TypeVar("T")

# The pools whose database was found at the current schema: checked once per pool, as a
# Tracker checks its own engine once, since every connection of a pool reaches one database.
_checked_pools: Final = weakref.WeakSet[Pool]()

_RETRY: Final = "roll it back and run it again, the apply included"


def apply_in_host_transaction(
    given: Connection | Session,
    engine: Engine,
    bodies: Iterable[bytes | str | object],
    max_body_bytes: int,
) -> list[Result]:
    """Apply `bodies` in order in a SAVEPOINT of the transaction `given` holds (the path of
    `Tracker.apply(..., connection=given)`), read as `tracker.applying.apply_bodies` reads
    them."""
    connection = host_connection(given, engine)
    deliveries = [parsing.read(body, max_body_bytes) for body in bodies]
    received_at = datetime.now(UTC)
    return apply_in_savepoint(
        connection,
        # MySQL's named locks would outlive the host's transaction: PostgreSQL's end with it.
        lambda c: apply_deliveries(
            c,
            deliveries,
            received_at,
            lock=len(deliveries) > 1 and c.dialect.name == "postgresql",
        ),
        subject="these deliveries" if len(deliveries) > 1 else "this delivery",
    )


def host_connection(given: Connection | Session, engine: Engine) -> Connection:
    """The connection to write on, of `given`: a Connection inside a transaction, or a Session
    (whose transaction `Session.connection()` begins when none is open, as the Session's own
    statements would), reaching the database of the tracker's `engine`."""
    if isinstance(given, Session):
        connection = given.connection()
    elif isinstance(given, Connection):
        connection = given
    else:
        raise TypeError(
            f"connection= takes an SQLAlchemy Connection or ORM Session, not {type(given).__name__}"
        )
    if connection.invalidated:
        raise ValueError(
            "the connection given was lost, and its transaction with it: roll it back "
            "(connection.rollback()) and run your transaction again"
        )
    if not connection.in_transaction():
        raise ValueError(
            "connection= writes inside your transaction and leaves the commit to you, but this "
            "connection is not in one: call apply inside `with connection.begin():`"
        )
    if _private_apis.is_autocommit(connection):
        raise ValueError(
            "this connection runs with isolation_level='AUTOCOMMIT', so each statement commits "
            "on its own and your rows and the tracker's could not commit or roll back together: "
            "give a connection of the engine's default isolation level"
        )
    if not _same_database(connection, engine):
        given_url = connection.engine.url.render_as_string(hide_password=True)
        own_url = engine.url.render_as_string(hide_password=True)
        raise ValueError(
            f"the connection given reaches {given_url}, not the tracker's database {own_url}: "
            "take the connection from the tracker's engine (make the Tracker with your engine, "
            "Tracker(engine), or use tracker.engine), or from an engine of the same URL"
        )
    if connection.dialect.name == "sqlite" and not storage.has_sqlite_setup(connection):
        raise ValueError(
            "this SQLite connection lacks the tracker's setup, without which pysqlite lets a "
            "SAVEPOINT commit your transaction early: make the Tracker with your engine "
            "(Tracker(engine)) before taking connections from it, or use tracker.engine"
        )
    return connection


def _same_database(connection: Connection, engine: Engine) -> bool:
    """True when `connection` reaches `engine`'s database: one pool, or the same server and
    database named by the URL. Another spelling of the same server (an address for a host name)
    is refused, with a fix, rather than risking the tracker's rows in another database."""
    if connection.engine.pool is engine.pool:
        return True
    given, own = connection.engine.url, engine.url
    if given.get_backend_name() != own.get_backend_name():
        return False
    if own.get_backend_name() == "sqlite":
        if own.database in (None, "", ":memory:") or given.database in (None, "", ":memory:"):
            return False  # an in-memory database belongs to its pool's connection alone
        return os.path.realpath(own.database) == os.path.realpath(given.database)
    return (given.host, given.port, given.database) == (own.host, own.port, own.database)


def apply_in_savepoint(
    connection: Connection,
    work: Callable[[Connection], T],
    *,
    subject: str = "this delivery",
) -> T:
    """Run `work` in a SAVEPOINT of the host's transaction on `connection`; release it, or roll
    it back and raise: `ConflictError` for a lost race (`writing.is_lost_race`), `StorageError`
    for any other failure."""
    try:
        savepoint = connection.begin_nested()
    except DBAPIError as error:
        raise storage_error(error, subject) from error
    try:
        _check_schema_once(connection)
        result = work(connection)
        savepoint.commit()
    except storage.LostRaceError as error:
        raise ConflictError(_conflict(error, subject, _undo(connection, savepoint))) from error
    except SQLAlchemyError as error:
        kept = _undo(connection, savepoint)
        if is_lost_race(error, in_host_transaction=True):
            raise ConflictError(_conflict(error, subject, kept)) from error
        raise storage_error(error, subject, after=_after(kept, retry=False)) from error
    except BaseException:
        _undo(connection, savepoint)
        raise
    return result


def _conflict(error: Exception, subject: str, kept: bool) -> str:
    """What a `ConflictError` says: which race was lost, and what became of the host's
    transaction."""
    if isinstance(error, storage.LostRaceError):
        return (
            f"another writer changed a call while {subject} was applied, and nothing of it was "
            f"written{_after(kept)}"
        )
    original = getattr(error, "orig", error)
    if isinstance(error, IntegrityError):
        return (
            f"another writer took a key of {subject} first, and nothing of it was "
            f"written{_after(kept)}: {original}"
        )
    return (
        f"the database gave {subject} up to a concurrent writer, and nothing of it was "
        f"written{_after(kept)}: {original}"
    )


def _check_schema_once(connection: Connection) -> None:
    pool = connection.engine.pool
    if pool in _checked_pools:
        return
    try:
        check_current_on(connection)
    except SchemaError as error:
        raise SchemaError(
            f"{error} (checked through the connection given; with Tracker(..., schema=NAME), "
            "its search path must name that schema)"
        ) from error
    _checked_pools.add(pool)


def _undo(connection: Connection, savepoint: NestedTransaction) -> bool:
    """Roll back the tracker's savepoint; False when the host's whole transaction is gone."""
    if connection.invalidated:
        return False  # the transaction went with the connection, and SQLAlchemy knows it
    nested = connection.get_nested_transaction()
    try:
        if nested is savepoint:
            nested.rollback()
        return True
    except DBAPIError:
        root = connection.get_transaction()
        try:
            if root is not None:
                root.rollback()
        except DBAPIError:
            pass  # the error that ended the transaction is the one worth reporting
        return False


def _after(kept: bool, *, retry: bool = True) -> str:
    if not kept:
        return (
            "; the database ended your whole transaction (rolled back, your rows too): "
            "roll it back (connection.rollback() or session.rollback()) and run it again"
        )
    return f"; your transaction is still open: {_RETRY}" if retry else "; your transaction is open"
