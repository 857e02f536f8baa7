"""Call locks: a batch takes a lock on every call it names, in one global order, before it reads
them, so concurrent batches that share calls take turns on those calls instead of racing.

Row locks alone cannot do this: a call that does not exist yet has no row to lock, and most of
the races between batches are two of them creating the same call (a parent first heard of
through two of its legs) or logging the same delivery at once. So the lock is on the call's id:
PostgreSQL's transaction-scoped advisory locks (released by the COMMIT or ROLLBACK itself), and
on MySQL/MariaDB named locks (`GET_LOCK`), which belong to the session and are given back by
`release_call_locks` once the transaction has ended. SQLite has one writer at a time: nothing to
do there.

Every batch takes its locks in one statement, in the order of their keys, so two batches never
wait for each other in a cycle; a batch that waits reads the calls only once the other has
committed (the servers run READ COMMITTED, where each statement reads what is committed when it
starts), and so decides on what the other wrote instead of losing its compare-and-set to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from sqlalchemy import Connection

from tracker.errors import StorageError
from tracker.storage.statements import chunks

# The first of PostgreSQL's two 32-bit advisory keys: the space of the tracker's call locks,
# apart from any lock of the host's that uses the same second key (and from the single 64-bit
# keys, such as the schema upgrade's, which are a space of their own).
_POSTGRESQL_SPACE: Final = 0x74726B63  # "trkc"
_POSTGRESQL_LOCKS: Final = (
    "SELECT pg_advisory_xact_lock(%(space)s, key) FROM unnest(%(keys)s::integer[]) AS key"
)
# MySQL names a lock with at most 64 characters: a prefix and a digest of the call id.
_MYSQL_PREFIX: Final = "tracker.call."
# `connection.info` key: named locks this session may hold, to give back after the transaction.
_HOLDS_NAMED_LOCKS: Final = "tracker_holds_call_locks"


def lock_calls(connection: Connection, call_ids: Iterable[str]) -> None:
    """Lock these calls (existing or not) for the rest of the transaction, waiting for any
    writer that holds one of them; on MySQL/MariaDB until `release_call_locks`. Raises
    `StorageError` (unavailable) when a lock is not free within the session's lock timeout."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        keys = sorted({_postgresql_key(call_id) for call_id in call_ids})
        if keys:
            connection.exec_driver_sql(
                _POSTGRESQL_LOCKS, {"space": _POSTGRESQL_SPACE, "keys": keys}
            ).all()
    elif dialect in ("mysql", "mariadb"):
        names = sorted({_mysql_name(call_id) for call_id in call_ids})
        for chunk in chunks(names):
            connection.info[_HOLDS_NAMED_LOCKS] = True
            asking = ", ".join(["GET_LOCK(%s, @@innodb_lock_wait_timeout)"] * len(chunk))
            taken = connection.exec_driver_sql(f"SELECT {asking}", tuple(chunk)).one()
            if any(answer != 1 for answer in taken):
                raise StorageError(
                    "another writer held a call of these deliveries for the whole lock timeout; "
                    "nothing of them was written",
                    unavailable=True,
                )


def release_call_locks(connection: Connection) -> None:
    """Give back the named locks `lock_calls` took on MySQL/MariaDB, once the transaction has
    ended (committed or rolled back): they belong to the session, and a connection back in its
    pool must hold none. On the driver's cursor, since a statement through SQLAlchemy would
    begin a transaction. A connection that cannot say it released them is invalidated, which
    ends its session and so its locks."""
    # An invalidated connection's session is gone, and its locks with it; asking for its `info`
    # would make SQLAlchemy connect again.
    if connection.invalidated or not connection.info.pop(_HOLDS_NAMED_LOCKS, False):
        return
    try:
        cursor = connection.connection.cursor()
        try:
            cursor.execute("SELECT RELEASE_ALL_LOCKS()")
            cursor.fetchall()
        finally:
            cursor.close()
    except Exception:
        connection.invalidate()


def _digest(call_id: str) -> bytes:
    return hashlib.blake2b(call_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _postgresql_key(call_id: str) -> int:
    # Two ids with one key only wait for each other needlessly: the order stays global.
    return int.from_bytes(_digest(call_id)[:4], "big", signed=True)


def _mysql_name(call_id: str) -> str:
    return _MYSQL_PREFIX + _digest(call_id).hex()
