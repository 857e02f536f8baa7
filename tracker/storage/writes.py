"""Writes: calls inserted and compare-and-set in one lock order (`write_calls`), the account
filled over a transfer tree (`fill_account`), transfer attempts inserted and deleted.

Concurrency rests on the database's uniqueness constraints and on compare-and-set: a call row
is updated only `WHERE version = <the version read>`, so a lost race is detected
(`LostRaceError`) and the whole delivery retried, never overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from tracker import lifecycle
from tracker.lifecycle import CallRecord
from tracker.records import TransferAttempt
from tracker.storage import driver
from tracker.storage.races import LostRaceError
from tracker.storage.statements import cached, chunks
from tracker.storage.tables import ATTEMPT_FIELDS, calls, transfers

# The compare-and-set condition of every UPDATE of a call: the row as it was read.
_AT_READ_VERSION: Final = and_(
    calls.c.call_id == bindparam("b_call_id"),
    calls.c.version == bindparam("expected_version"),
)
_SELECT_TREE_STEP: Final = select(
    calls.c.call_id, calls.c.parent_call_id, calls.c.account_id, calls.c.version
).where(
    or_(
        calls.c.call_id.in_(bindparam("call_ids", expanding=True)),
        calls.c.parent_call_id.in_(bindparam("call_ids", expanding=True)),
    )
)


def _insert_call(present: Sequence[str]) -> tuple[ClauseElement, Sequence[str]]:
    return insert(calls), present


# An attempt's facts as one tuple (`dataclasses.asdict` deep-copies every value).
_attempt_facts: Final = attrgetter(*ATTEMPT_FIELDS)
_TRANSFER_VALUES: Final = (
    *ATTEMPT_FIELDS,
    "call_id",
    "event_id",
    "sort_key",
)


def _insert_transfer() -> tuple[ClauseElement, Sequence[str]]:
    return insert(transfers), _TRANSFER_VALUES


def _update_call(changed: Sequence[str]) -> tuple[ClauseElement, Sequence[str]]:
    setting = [*changed, "version"]
    statement = (
        update(calls).where(_AT_READ_VERSION).values({name: bindparam(name) for name in setting})
    )
    return statement, [*setting, "b_call_id", "expected_version"]


def _fill_account() -> tuple[ClauseElement, Sequence[str]]:
    statement = (
        update(calls)
        .where(_AT_READ_VERSION)
        .values(account_id=bindparam("account_id"), version=calls.c.version + 1)
    )
    return statement, ["account_id", "b_call_id", "expected_version"]


def write_calls(
    connection: Connection, changes: Sequence[tuple[CallRecord | None, CallRecord]]
) -> None:
    """Insert new calls and compare-and-set existing ones on the version they were read at.

    Row locks are taken in one order whatever the batch, so that concurrent batches never wait
    for each other in a cycle (a deadlock, which PostgreSQL takes a second to notice): first
    the calls that exist, by call id, then the new ones, level by level of their transfer trees
    (a parent before its legs, for the foreign key), by call id. Two batches that disagree on
    whether a call exists read it at different moments, and one of them loses that race anyway
    (a unique key, a compare-and-set). SQLite has one writer at a time: there the order is free.

    An UPDATE sets only the columns that changed: SQLite rewrites the entries of every index on
    a column the statement sets, even to the same value, and each page it touches is one more
    page to write at commit. Raises `LostRaceError` when another writer changed a call meanwhile.
    """
    ordered = sorted(changes, key=lambda change: change[1].call_id)
    server = connection.dialect.name != "sqlite"
    created = {after.call_id for before, after in ordered if before is None}
    updates = [_update_row(before, after) for before, after in ordered if before is not None]
    # An existing call that becomes a leg of a call created here can only be written once that
    # call is in: its row is then locked first, in order, and written after the inserts.
    after_inserts = any(row.get("parent_call_id") in created for _changed, row in updates)
    if after_inserts and server:
        _lock_calls(connection, [row["b_call_id"] for _changed, row in updates])
    if not after_inserts:
        _update_calls(connection, updates, in_order=server)
    _insert_calls(connection, [after for before, after in ordered if before is None], server)
    if after_inserts:
        _update_calls(connection, updates, in_order=False)


def _update_row(before: CallRecord, after: CallRecord) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The columns an UPDATE of this call sets, and its values (with the compare-and-set's)."""
    row = {
        name: new
        for name, old, new in zip(
            lifecycle.RECORD_FIELDS,
            lifecycle.facts_of(before),
            lifecycle.facts_of(after),
            strict=True,
        )
        if old != new and name not in ("call_id", "version")
    }
    changed = tuple(row)
    row.update(b_call_id=after.call_id, version=before.version + 1, expected_version=before.version)
    return changed, row


def _update_calls(
    connection: Connection,
    updates: Sequence[tuple[tuple[str, ...], dict[str, Any]]],
    *,
    in_order: bool,
) -> None:
    """Compare-and-set `updates` (in call-id order), one statement per set of columns changed.
    `in_order`: the rows must be locked in their order, so the statements follow it: one per
    run of rows changing the same columns, or, when that takes more statements than one per set
    plus one, the rows are locked first by one statement (`_lock_calls`)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    runs: list[tuple[tuple[str, ...], list[dict[str, Any]]]] = []
    for changed, row in updates:
        groups.setdefault(changed, []).append(row)
        if runs and runs[-1][0] == changed:
            runs[-1][1].append(row)
        else:
            runs.append((changed, [row]))
    statements = list(groups.items())
    if in_order and len(runs) > len(groups):
        if len(runs) <= len(groups) + 1:
            statements = runs
        else:
            _lock_calls(connection, [row["b_call_id"] for _changed, row in updates])
    for changed, rows in statements:
        compiled = cached(connection, _update_call, changed)
        if _compare_and_set(connection, compiled, rows) != len(rows):
            raise LostRaceError("a call changed while this delivery was applied")


def _lock_calls(connection: Connection, call_ids: Sequence[str]) -> None:
    """Lock these calls' rows (in call-id order, as given), in one statement per chunk: by code
    point, as Python sorts, whatever the database's collation."""
    key: ColumnElement[Any] = calls.c.call_id
    if connection.dialect.name == "postgresql":
        key = key.collate("C")  # MySQL/MariaDB: the column's own collation is binary
    statement = (
        select(calls.c.call_id)
        .where(calls.c.call_id.in_(bindparam("call_ids", expanding=True)))
        .order_by(key)
        .with_for_update()
    )
    for chunk in chunks(call_ids):
        connection.execute(statement, {"call_ids": chunk}).all()


def _insert_calls(connection: Connection, created: Sequence[CallRecord], server: bool) -> None:
    """Insert the new calls, level by level of the transfer trees being created, so a parent is
    in before its legs (a foreign key is checked per statement, on MySQL per row). On SQLite an
    INSERT names only the columns with a value (a placeholder has few), rows naming the same
    ones in one statement; on a server every column, so that one statement per level inserts
    its rows in call-id order (see `write_calls`)."""
    levels: dict[str, int] = {}
    groups: dict[tuple[int, tuple[str, ...]], list[dict[str, Any]]] = {}
    for after in _parents_first(created):
        parent_level = levels.get(after.parent_call_id) if after.parent_call_id else None
        level = levels[after.call_id] = 0 if parent_level is None else parent_level + 1
        row = {
            name: value
            for name, value in zip(lifecycle.RECORD_FIELDS, lifecycle.facts_of(after), strict=True)
            if server or value is not None
        }
        row["version"] = 1
        groups.setdefault((level, tuple(row)), []).append(row)
    for (_level, present), rows in sorted(groups.items(), key=lambda group: group[0][0]):
        if server:
            rows.sort(key=lambda row: str(row["call_id"]))
        compiled = cached(connection, _insert_call, present)
        driver.run(connection, compiled, rows[0] if len(rows) == 1 else rows)


def _compare_and_set(
    connection: Connection, statement: driver.Compiled, rows: list[dict[str, Any]]
) -> int:
    """Run a compare-and-set UPDATE for every row; how many rows matched their version."""
    if connection.dialect.supports_sane_multi_rowcount or len(rows) == 1:
        cursor = driver.run(connection, statement, rows[0] if len(rows) == 1 else rows)
        return int(cursor.rowcount)
    matched = 0
    for row in rows:
        matched += int(driver.run(connection, statement, row).rowcount)
    return matched


def _parents_first(records: Sequence[CallRecord]) -> list[CallRecord]:
    """MySQL checks a foreign key row by row, so a parent inserted in the same statement as its
    leg must come first."""
    pending = {record.call_id: record for record in records}
    ordered: list[CallRecord] = []

    def place(record: CallRecord, path: set[str]) -> None:
        if record.call_id not in pending or record.call_id in path:
            return
        parent_id = record.parent_call_id
        if parent_id is not None and parent_id in pending:
            place(pending[parent_id], path | {record.call_id})
        if record.call_id in pending:
            ordered.append(pending.pop(record.call_id))

    for record in records:
        place(record, set())
    return ordered


def insert_transfers(
    connection: Connection, attempts: Sequence[tuple[str, int, TransferAttempt, str]]
) -> None:
    """Each (call id, id of the delivery, the attempt, the delivery's content key)."""
    rows = [
        {
            **dict(zip(ATTEMPT_FIELDS, _attempt_facts(attempt), strict=True)),
            "call_id": call_id,
            "event_id": event_id,
            "sort_key": key,
        }
        for call_id, event_id, attempt, key in attempts
    ]
    if rows:
        compiled = cached(connection, _insert_transfer)
        driver.run(connection, compiled, rows[0] if len(rows) == 1 else rows)


def fill_account(connection: Connection, call_id: str, account_id: str) -> None:
    """Give `account_id` to every call of `call_id`'s transfer tree that has no account yet.

    Each row is compare-and-set on the version the tree walk read: a leg attached to the tree
    by another writer meanwhile bumps its parent, so one of the two retries and no call of the
    tree is left without the account. Raises `LostRaceError` when that happens."""
    tree = _tree_of(connection, call_id)
    rows = [
        {"b_call_id": tree_call_id, "expected_version": version, "account_id": account_id}
        for tree_call_id, (account, version) in sorted(tree.items())
        if account is None
    ]
    fill = cached(connection, _fill_account)
    if rows and _compare_and_set(connection, fill, rows) != len(rows):
        raise LostRaceError("a call of the transfer tree changed while its account was filled")


def _tree_of(connection: Connection, call_id: str) -> dict[str, tuple[str | None, int]]:
    """Every call of the tree `call_id` belongs to, with its account and version."""
    tree: dict[str, tuple[str | None, int]] = {}
    walked: set[str] = set()  # the ids whose parent and legs were asked for
    frontier = [call_id]
    while frontier:
        walked.update(frontier)
        found: set[str] = set()
        for chunk in chunks(frontier):
            rows = connection.execute(_SELECT_TREE_STEP, {"call_ids": chunk})
            for row in rows:
                tree[row.call_id] = (row.account_id, row.version)
                found.update(x for x in (row.call_id, row.parent_call_id) if x is not None)
        frontier = sorted(found - walked)
    return tree


def delete_transfers(connection: Connection, call_ids: Sequence[str]) -> None:
    """Forget the transfer attempts of these calls: a rebuild writes them again."""
    for chunk in chunks(call_ids):
        connection.execute(delete(transfers).where(transfers.c.call_id.in_(chunk)))
