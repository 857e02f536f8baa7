"""The change feed (`Tracker.changes`, `tracker follow`): the applied deliveries after a cursor,
each with its call, and the cursor to resume from.

The promise: a consumer that keeps its cursor sees every applied delivery at least once and
never skips one, whatever the number of workers and the order they commit in.

Why the log id alone is not a cursor. On PostgreSQL and MariaDB a log id is taken from a
sequence (AUTO_INCREMENT) when the row is inserted, and the row becomes visible when its
transaction commits: a worker may take id 7, another id 8 and commit first. A reader that saw
8 and remembers "everything up to 8" never sees 7. Ids also go missing for good: every attempt
rolled back after losing a race burns its id, and a transaction may be held open for long by a
host applying inside its own transaction. So a missing id may fill in a millisecond, in an hour,
or never, and no waiting time proves which.

What the cursor holds instead: the highest id read (the high-water mark) and the ids below it not
seen yet (the gaps, kept as ranges), each group of gaps with a token naming the transactions that
could still commit one of them. A read returns the rows that filled a gap and the rows above the
mark, in id order: the order they became visible to it. A gap is dropped only once it is proven
that it can never fill:

- Ids are handed out in increasing order (a sequence of CACHE 1, as the migrations create it;
  InnoDB's AUTO_INCREMENT), so a missing id below a visible one was handed out before that
  one, before the read: by a transaction that had begun, and has not committed it yet.
- PostgreSQL: an INSERT locks its table (ROW EXCLUSIVE) before it computes the id default, and
  holds the lock until its transaction ends. The token is the set of transactions holding such a
  lock on the log table just after the read (`pg_locks`, virtual transaction ids, which are
  never reused while the server runs; no privilege needed). Every transaction that might commit
  a gap is in it.
- MariaDB/MySQL: every InnoDB transaction is listed in `information_schema.INNODB_TRX` from its
  first statement on a table until its commit is visible; the tracker's writes read before they
  insert, so a writer is listed before it takes an id. The token is that list (connection id
  and start time), read just after the read. INNODB_TRX needs the PROCESS privilege. InnoDB
  serves it from a copy refreshed only after 100 ms without a reader, so the list is trusted
  only when it shows this very query (a marker in its text); a copy older than that is retried,
  and when none comes fresh, the gaps wait for the next read to take their token. The list is
  the whole server's (it cannot tell which table a transaction will write): a gap waits for
  every transaction running on the server when it was found.
- SQLite: one writer at a time, and a new row takes one more than the largest id, inside the
  write lock: ids are visible in id order and a gap never fills (the token is always empty, so a
  gap is dropped at once).
- No backend gives an id twice, even once the newest entries are pruned, so a cursor is never
  past an id still to come: SQLite's log id is an AUTOINCREMENT rowid (revision 0008),
  PostgreSQL's a sequence, InnoDB's AUTO_INCREMENT persistent (MariaDB 10.2.4+, MySQL 8.0+).

At each read, the transactions of the tokens are looked up first, before the read, so that one
which committed meanwhile is visible to it; a token loses the transactions that ended, and a gap
the read still misses whose token is empty is dropped: every transaction that could have
committed it ended without doing so. New gaps get their token just after the read that found
them, and are dropped at the earliest by the next read (a writer may commit one between the read
and the lookup). A token is at most the transactions writing the log at one instant, and shrinks
to those still running, so the cursor stays small unless transactions that wrote the log stay
open for long; gaps are kept as ranges, so a burst of burned ids costs a few characters.

Why not the transaction horizon. PostgreSQL's `pg_snapshot_xmin` says every transaction older
than it has ended, but a transaction gets its xid at its first write, a moment after the INSERT
took its id: one that took an id before the read may get an xid above the one recorded then, and
be missed. The horizon is also the whole server's: any long transaction, in any database, would
hold every gap. Ordering the log by a per-row xid column (`WHERE xid < pg_snapshot_xmin`) is exact
but needs an index on it, one more page written per delivery, and holds every delivery back
behind the oldest transaction running anywhere; here only a transaction that wrote the log holds
anything, and only its own gaps. On MariaDB, `trx_started` has whole seconds and follows the
wall clock; the list of transactions itself needs neither.

Pruning: the entries pruned before a consumer read them are not returned (their ids are gaps
that no running transaction holds, dropped at the next read); the feed goes on with the entries
kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError

from tracker import reading, storage
from tracker.errors import StorageError
from tracker.records import Change, ChangesPage, Outcome

CURSOR_VERSION: Final = 1
MAX_LIMIT: Final = 10_000
# The applied deliveries a page of `Tracker.changes` holds at most by default.
DEFAULT_LIMIT: Final = 1000

# Tries at a fresh copy of INNODB_TRX, and the pause between them: InnoDB refreshes its copy
# only once nobody read it for 100 ms.
_FRESH_TRIES: Final = 4
_FRESH_PAUSE: Final = 0.12

# PostgreSQL lock modes an INSERT holds, or that allow one: a transaction holding any of them on
# the log table may have taken an id it has not committed.
_WRITING_MODES: Final = (
    "RowExclusiveLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)

_POSTGRESQL_WRITERS: Final = text(
    "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation' "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND relation = CAST(:log AS regclass) AND mode IN :modes"
).bindparams(bindparam("modes", value=list(_WRITING_MODES), expanding=True))

# MySQL: access denied for lack of a privilege (1227), on a table (1142), on a database (1044).
_MISSING_PRIVILEGE_CODES: Final = frozenset({1227, 1142, 1044})

Token = tuple[str, ...]
"""The transactions that could still commit a gap; None in its place: not known yet."""


@dataclass(frozen=True, slots=True)
class _Gap:
    """Ids `first`..`last` (inclusive) below the high-water mark, not seen yet."""

    first: int
    last: int
    token: Token | None


@dataclass(frozen=True, slots=True)
class _Position:
    high: int
    gaps: tuple[_Gap, ...]


def changes(engine: Engine, after: str | None, limit: int) -> ChangesPage:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}; got {limit}")
    position = decode(after)
    dialect = engine.dialect.name
    with engine.connect() as connection:
        # Who is still writing, looked up before the read (see the module's docstring).
        running = _writers(connection, dialect) if position.gaps else ()
        gaps = _with_running(position.gaps, running)
        with connection.begin():
            rows = storage.where_log_entries(
                connection, [(gap.first, gap.last) for gap in gaps], position.high, limit
            )
            applied = [row for row in rows if row.outcome == Outcome.APPLIED]
            records = storage.where_calls_by_id(
                connection, [row.call_id for row in applied if row.call_id is not None]
            )
            calls = dict(
                zip(records, reading.snapshots(connection, list(records.values())), strict=True)
            )
        full = len(rows) == limit
        # Ids the read covered: every gap id up to its last row (all of them unless it was full).
        checked_through = rows[-1].id if full else max(position.high, rows[-1].id if rows else 0)
        gaps = _settled(gaps, {row.id for row in rows}, checked_through)
        new_ids = [row.id for row in rows if row.id > position.high]
        opened = _opened(position.high, new_ids)
        if dialect == "sqlite":
            opened = []  # one writer at a time: a gap below a visible id never fills
        elif opened:
            # Taken after the read. A token found empty does not drop its gaps yet: a writer may
            # have committed one between the read and now, so the next read must look again.
            token = _writers(connection, dialect)
            opened = [replace(gap, token=token) for gap in opened]
    found: list[Change] = []
    filled: set[int] = set()  # gap ids read so far: the rows below the old mark come first
    below = _without(gaps, filled)
    for row in rows:
        if row.id < position.high:
            filled.add(row.id)
            below = _without(gaps, filled)
        if row.outcome != Outcome.APPLIED:
            continue
        high = max(position.high, row.id)
        cursor = _Position(high, below + tuple(gap for gap in opened if gap.last < high))
        found.append(
            Change(
                id=row.id,
                received_at=row.received_at,
                outcome=Outcome(row.outcome),
                event_type=row.event_type,
                origin=row.origin,
                call_id=row.call_id,
                call=None if row.call_id is None else calls.get(row.call_id),
                cursor=encode(cursor),
            )
        )
    final = _Position(max([position.high, *new_ids]), below + tuple(opened))
    return ChangesPage(tuple(found), encode(final), more=full)


# --- gaps -------------------------------------------------------------------------------------


def _with_running(gaps: Sequence[_Gap], running: Token | None) -> tuple[_Gap, ...]:
    """Each token without the transactions that have ended; a token not known yet becomes the
    transactions running now, which were looked up after the read that found its gaps."""
    if running is None:
        return tuple(gaps)
    still = set(running)
    return tuple(
        replace(
            gap,
            token=running if gap.token is None else tuple(t for t in gap.token if t in still),
        )
        for gap in gaps
    )


def _settled(gaps: Sequence[_Gap], found: set[int], checked_through: int) -> tuple[_Gap, ...]:
    """Drop the gap ids the read checked, did not find, and no running transaction can commit.
    Found ids stay for now: `_without` removes them once the changes they belong to are out."""
    kept: list[_Gap] = []
    for gap in gaps:
        if gap.token != () or gap.first > checked_through:
            kept.append(gap)
            continue
        # The part the read checked keeps only the ids it found; the rest waits for a read.
        kept.extend(_Gap(i, i, ()) for i in sorted(found) if gap.first <= i <= gap.last)
        if gap.last > checked_through:
            kept.append(replace(gap, first=checked_through + 1))
    return tuple(kept)


def _opened(high: int, new_ids: Sequence[int]) -> list[_Gap]:
    """The ids skipped between the old high-water mark and the new rows read above it."""
    opened: list[_Gap] = []
    previous = high
    for new_id in new_ids:
        if new_id > previous + 1:
            opened.append(_Gap(previous + 1, new_id - 1, None))
        previous = new_id
    return opened


def _without(gaps: Sequence[_Gap], ids: set[int]) -> tuple[_Gap, ...]:
    kept: list[_Gap] = []
    for gap in gaps:
        start = gap.first
        for found in sorted(i for i in ids if gap.first <= i <= gap.last):
            if found > start:
                kept.append(replace(gap, first=start, last=found - 1))
            start = found + 1
        if start <= gap.last:
            kept.append(replace(gap, first=start))
    return tuple(kept)


# --- who may still commit a gap ---------------------------------------------------------------


def _writers(connection: Connection, dialect: str) -> Token | None:
    """The transactions that may hold an id of the log they have not committed, at this
    instant: () on SQLite, where none can; None when MariaDB's list could not be read fresh.
    A transaction that holds such an id now stays in the answer until it ends."""
    if dialect == "postgresql":
        return _postgresql_writers(connection)
    if dialect in ("mysql", "mariadb"):
        return _mysql_writers(connection)
    return ()


def _postgresql_writers(connection: Connection) -> Token:
    with connection.begin():
        found = connection.execute(_POSTGRESQL_WRITERS, {"log": storage.events.name})
        return tuple(sorted(str(value) for value in found.scalars()))


def _mysql_writers(connection: Connection) -> Token | None:
    for attempt in range(_FRESH_TRIES):
        if attempt:
            time.sleep(_FRESH_PAUSE)
        marker = uuid.uuid4().hex
        with connection.begin():
            # This transaction must be one InnoDB lists: a consistent read starts it.
            connection.execute(text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
            try:
                rows = list(
                    connection.execute(
                        text(
                            "SELECT trx_mysql_thread_id, trx_started, trx_query, "
                            f"CONNECTION_ID() AS me, '{marker}' AS marker "
                            "FROM information_schema.INNODB_TRX"
                        )
                    )
                )
            except DBAPIError as error:
                if _is_missing_privilege(error):
                    raise StorageError(
                        "the change feed on MariaDB/MySQL reads information_schema.INNODB_TRX, "
                        "which needs the PROCESS privilege: GRANT PROCESS ON *.* TO the "
                        "tracker's user"
                    ) from error
                raise
        me = [row for row in rows if row.trx_mysql_thread_id == row.me]
        if any(marker in (row.trx_query or "") for row in me):
            return tuple(
                sorted(
                    f"{row.trx_mysql_thread_id}@{row.trx_started:%Y%m%d%H%M%S}"
                    for row in rows
                    if row.trx_mysql_thread_id != row.me
                )
            )
    return None


def _is_missing_privilege(error: DBAPIError) -> bool:
    arguments: tuple[Any, ...] = getattr(error.orig, "args", ())
    return bool(arguments) and arguments[0] in _MISSING_PRIVILEGE_CODES


# --- the cursor -------------------------------------------------------------------------------


def encode(position: _Position) -> str:
    """An opaque, URL- and shell-safe string; equal positions give equal strings."""
    groups: dict[Token | None, list[list[int]]] = {}
    for gap in sorted(position.gaps, key=lambda gap: gap.first):
        ranges = groups.setdefault(gap.token, [])
        if ranges and ranges[-1][1] + 1 == gap.first:
            ranges[-1][1] = gap.last
        else:
            ranges.append([gap.first, gap.last])
    document: dict[str, Any] = {"v": CURSOR_VERSION, "h": position.high}
    if groups:
        document["g"] = sorted(
            ([None if token is None else list(token), ranges] for token, ranges in groups.items()),
            key=lambda group: group[1][0][0],
        )
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str | None) -> _Position:
    if cursor is None:
        return _Position(0, ())
    if not isinstance(cursor, str):
        raise ValueError(f"a cursor is a string; got {type(cursor).__name__}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw)
        return _position(document)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        shown = cursor if len(cursor) <= 40 else cursor[:37] + "..."
        raise ValueError(
            f"{shown!r} is not a change-feed cursor ({error}); pass the `cursor` of a "
            "ChangesPage or of a `tracker follow` line, unchanged, or None to start from the "
            "beginning of the log"
        ) from None


def _position(document: Any) -> _Position:
    if not isinstance(document, dict) or document.get("v") != CURSOR_VERSION:
        raise ValueError(f"not a version {CURSOR_VERSION} cursor")
    high = document["h"]
    if not _is_id(high):
        raise ValueError("its high-water mark is not an id")
    gaps: list[_Gap] = []
    for token, ranges in document.get("g", []):
        if token is not None and not (
            isinstance(token, list) and all(isinstance(t, str) for t in token)
        ):
            raise ValueError("a token is not a list of transactions")
        for first, last in ranges:
            if not (_is_id(first) and _is_id(last) and 0 < first <= last < high):
                raise ValueError("a gap is not a range of ids below the high-water mark")
            gaps.append(_Gap(first, last, None if token is None else tuple(token)))
    return _Position(high, tuple(sorted(gaps, key=lambda gap: gap.first)))


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
