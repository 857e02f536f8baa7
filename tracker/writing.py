"""The tracker's writing transactions: connections kept between deliveries, a transaction run
again when it loses a race, and the one rule telling a lost race from a failure.

Part of the storage stage. Every write of the tracker's own (a delivery, a batch, a batch of
the sweep, the prune, the re-drive or the rebuild) runs through `Writer.run`; a write inside
the host's transaction does not (see `tracker.joining`), but tells its failures by the same
rule (`is_lost_race`, `storage_error`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Final, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tracker import storage
from tracker.errors import StorageError, failure_message
from tracker.storage import driver

T = TypeVar("T")

# How often a transaction that keeps losing races is run, at most, unless told otherwise
# (`Tracker(max_attempts=...)`).
MAX_ATTEMPTS: Final = 30

# Connections kept for writing between deliveries, at most: as many as the writing threads of a
# busy process, fewer than the pool holds, so that reads always find one.
_KEPT_WRITERS: Final = 4

# PostgreSQL serialization failure and deadlock; MySQL deadlock. Each means "the database chose
# this transaction as the loser": nothing was written, try again. A lock wait that timed out
# (MySQL 1205, PostgreSQL 55P03, SQLite's plain SQLITE_BUSY) is not among them: it waited the
# whole `timeout` already, and retrying would multiply the bound by `max_attempts`.
_TRANSIENT_SQLSTATES: Final = frozenset({"40001", "40P01"})
_TRANSIENT_MYSQL_CODES: Final = frozenset({1213})
# SQLITE_BUSY_RECOVERY and SQLITE_BUSY_SNAPSHOT: SQLite returns them at once, without waiting for
# the busy timeout, when another connection is mid-recovery or wrote since this one's snapshot.
_TRANSIENT_SQLITE_CODES: Final = frozenset({261, 517})
# In a host's transaction begun deferred (a plain BEGIN), the tracker's first write turns a read
# transaction into a write one, and SQLite refuses that with SQLITE_BUSY, at once and without
# the busy timeout, while another connection writes, or for good once another has committed since
# the transaction's snapshot (SQLITE_BUSY_SNAPSHOT). Either is a lost race for the host to retry.
_SQLITE_BUSY: Final = 5

# The database could not be reached or did not answer in time (see `is_unavailable`).
# PostgreSQL: a connection exception (class 08), too many connections, a statement or lock
# timeout, the server shutting down or starting.
_UNAVAILABLE_SQLSTATE_CLASSES: Final = frozenset({"08"})
_UNAVAILABLE_SQLSTATES: Final = frozenset({"53300", "55P03", "57014", "57P01", "57P02", "57P03"})
# MySQL/MariaDB: too many connections, server shutdown, lock wait timeout, connection killed,
# statement timeout (MariaDB 1969, MySQL 3024), and the client's connection errors (2002, 2003,
# 2006, 2013, 2055).
_UNAVAILABLE_MYSQL_CODES: Final = frozenset(
    {1040, 1053, 1205, 1927, 1969, 3024, 2002, 2003, 2006, 2013, 2055}
)
# SQLite: SQLITE_BUSY and SQLITE_LOCKED, whatever their extended code (another connection kept
# the lock for the whole busy timeout), SQLITE_IOERR and SQLITE_CANTOPEN (the file is out of
# reach).
_UNAVAILABLE_SQLITE_CODES: Final = frozenset({5, 6, 10, 14})


class Writer:
    """Runs writing transactions on `engine`. `owns_engine`: the tracker made the engine, so it
    may keep connections out of its pool; a host's engine gets each back at once."""

    def __init__(self, engine: Engine, *, owns_engine: bool, max_attempts: int) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._max_attempts = max_attempts
        # Connections kept between deliveries (see `_connection`), and the process they belong to.
        self._idle: list[Connection] = []
        self._pid = os.getpid()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def run(self, work: Callable[[Connection], T], *, subject: str = "this delivery") -> T:
        """Run `work` in one writing transaction; when it loses a race (a unique key taken, a
        compare-and-set missed, a deadlock), roll back and run it again after a jittered pause.
        A connection found dead before any statement of the transaction reached the server (a
        kept connection the server dropped while idle) is replaced at once, once. Any other
        failure, a broken constraint that is not a race included, is a `StorageError` at once:
        retrying a bug only hides it. A connection lost during the commit itself is a
        `StorageError` saying the outcome is unknown."""
        lost: Exception | None = None
        replaced_dead_connection = False
        attempt = 0
        while attempt < self._max_attempts:
            if lost is not None:
                time.sleep(min(0.5, 0.002 * 2**attempt) * random.uniform(0.5, 1.5))
            try:
                connection = self._connection()
            except PoolTimeoutError as error:
                # Every pooled connection stayed busy for `pool_timeout`: the database is too
                # slow to serve this delivery now, which the caller handles like a failure.
                raise StorageError(
                    f"no database connection became free in time; nothing of {subject} was "
                    f"written: {error}",
                    unavailable=True,
                ) from error
            except DBAPIError as error:  # no connection could be made
                raise StorageError(failure_message(error, subject), unavailable=True) from error
            sent = connection.info
            sent[driver.SENT] = 0
            committing = False
            try:
                try:
                    with connection.begin():
                        result = work(connection)
                        committing = True  # what fails from here on failed in the COMMIT
                finally:
                    # Named locks outlive the transaction on MySQL/MariaDB (`storage.locks`).
                    storage.release_call_locks(connection)
            except storage.LostRaceError as error:
                self._release(connection)
                lost = error
            except SQLAlchemyError as error:
                connection.close()
                if (
                    isinstance(error, DBAPIError)
                    and error.connection_invalidated
                    and sent.get(driver.SENT) == 0
                    and not replaced_dead_connection
                ):
                    replaced_dead_connection = True
                    continue  # not an attempt lost to a race: no pause, no count
                if not is_lost_race(error):
                    raise storage_error(error, subject, committing=committing) from error
                lost = error
            except BaseException:
                connection.close()
                raise
            else:
                self._release(connection)
                return result
            attempt += 1
        raise StorageError(
            f"gave up after {self._max_attempts} attempts lost to concurrent writers; "
            f"nothing of {subject} was written (last: {lost})"
        ) from lost

    def _connection(self) -> Connection:
        """A connection to write on: one kept from an earlier delivery when there is one.
        Checking a connection out of the pool and back in costs more than many a statement, and
        the pool's pre-ping a round trip per delivery; a kept connection that died meanwhile is
        noticed by its first statement instead, and replaced (`run`)."""
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._idle = []
            self._pid = os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            return self.engine.connect().execution_options(tracker_write=True)

    def _release(self, connection: Connection) -> None:
        # A host's engine gets its connections back at once: its pool is sized for its own use.
        if self._owns_engine and len(self._idle) < _KEPT_WRITERS:
            self._idle.append(connection)
        else:
            connection.close()


def is_lost_race(error: Exception, *, in_host_transaction: bool = False) -> bool:
    """The one rule telling a lost race from a failure, for the tracker's own transactions
    (`Writer.run` runs them again) and for a host's (`tracker.joining` raises `ConflictError`):
    a compare-and-set missed (`storage.LostRaceError`), a unique key another writer took first,
    or the database refusing the transaction as a race's loser (`is_transient`). Nothing of the
    transaction was written. `in_host_transaction`: SQLite's plain SQLITE_BUSY is one too, since
    a host's deferred transaction meets it at its first write, without waiting."""
    if isinstance(error, storage.LostRaceError):
        return True
    if isinstance(error, IntegrityError):
        return storage.is_unique_violation(error)
    if not isinstance(error, DBAPIError):
        return False
    if is_transient(error):
        return True
    return in_host_transaction and getattr(error.orig, "sqlite_errorcode", None) == _SQLITE_BUSY


def storage_error(
    error: SQLAlchemyError, subject: str, *, committing: bool = False, after: str = ""
) -> StorageError:
    """The `StorageError` of a failure that is no lost race (`is_lost_race`), worded by its
    class (`errors.failure_message`), `unavailable` when the database was out of reach
    (`is_unavailable`; a refused constraint never is)."""
    unavailable = (
        isinstance(error, DBAPIError)
        and not isinstance(error, IntegrityError)
        and is_unavailable(error)
    )
    return StorageError(
        failure_message(error, subject, committing=committing, after=after),
        unavailable=unavailable,
    )


def is_transient(error: DBAPIError) -> bool:
    """Whether the database refused `error`'s transaction as the loser of a race (a deadlock,
    a serialization failure, a snapshot moved on): nothing was written, and running it again may
    succeed."""
    if error.connection_invalidated:
        return False
    original = error.orig
    if getattr(original, "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return True
    arguments = getattr(original, "args", ())
    if arguments and arguments[0] in _TRANSIENT_MYSQL_CODES:
        return True
    return getattr(original, "sqlite_errorcode", None) in _TRANSIENT_SQLITE_CODES


def is_unavailable(error: DBAPIError) -> bool:
    """Whether `error` says the database could not be reached, lost the connection or did not
    answer in time, rather than that it failed what it was sent: whatever the transaction
    held, running a part of it would fail the same way (and wait as long)."""
    if error.connection_invalidated:
        return True
    original = error.orig
    sqlstate = getattr(original, "sqlstate", "")
    if sqlstate is None and isinstance(error, OperationalError):
        # psycopg and pymysql: an operational error the server did not send, so the client's
        # own (no connection could be made, or it broke).
        return True
    if isinstance(sqlstate, str) and (
        sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    ):
        return True
    arguments = getattr(original, "args", ())
    if arguments and arguments[0] in _UNAVAILABLE_MYSQL_CODES:
        return True
    code = getattr(original, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _UNAVAILABLE_SQLITE_CODES
