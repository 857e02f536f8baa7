"""Call reads: calls by id (with the applied keys of their deliveries), by filter and by
page, and what a snapshot adds to them (legs, transfer attempts, the application resolved
along the ancestry)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Select, and_, bindparam, func, or_, select, text, union_all
from sqlalchemy.sql.elements import ClauseElement

from tracker import lifecycle
from tracker.lifecycle import CallRecord
from tracker.records import TransferAttempt
from tracker.storage import driver
from tracker.storage.statements import cached, chunks, padded_chunks, planned_at_each_run
from tracker.storage.tables import (
    ATTEMPT_FIELDS,
    CALL_COLUMNS,
    NOT_COMPLETED,
    NOT_ENDED,
    calls,
    events,
    transfers,
)

# Up to this many ids, one delivery's call is read with the look-up of its applied key.
_HOT_IDS: Final = 8
# The most ids, and (call id, key) pairs, one statement names (powers of two: see
# `padded_chunks`). Pairs are OR-ed terms, which SQLite nests one level each. Each size is
# compiled once per `Tracker`, at a cost that grows with it (12 ms for 128 pairs), while a
# statement more per chunk costs little: a new `Tracker` spent a ninth of its first
# `apply_many` batches compiling 512 ids and 128 pairs.
_HOT_CHUNK: Final = 128
_HOT_PAIRS: Final = 32

# The look-ups of a batch's calls and applied keys are lists of ids, planned at each run (see
# `statements.planned_at_each_run`). One delivery's look-ups (`_select_calls_with_applied_key`)
# stay prepared: each is by one id, and the hot path saves the planning.


@planned_at_each_run
def _select_calls_by_id(count: int) -> tuple[ClauseElement, Sequence[str]]:
    names = [f"id_{index}" for index in range(count)]
    statement = select(*CALL_COLUMNS).where(
        calls.c.call_id.in_([bindparam(name) for name in names])
    )
    return statement, names


def _select_calls_with_applied_key(count: int) -> tuple[ClauseElement, Sequence[str]]:
    # One `call_id = ?` look-up per id, joined by UNION ALL, rather than one `IN` list: a
    # prepared statement keeps the plan it got while the table was small, and for an `IN` list
    # of two ids on a small table PostgreSQL plans a scan of the whole table, which it then
    # keeps as the table grows (until an ANALYZE). An equality on the primary key is planned
    # as an index look-up at any size.
    names = [f"id_{index}" for index in range(count)]
    applied = (
        select(events.c.dedup_key)
        .where(events.c.call_id == calls.c.call_id, events.c.dedup_key == bindparam("key"))
        .scalar_subquery()
    )
    lookups = [
        select(*CALL_COLUMNS, applied).where(calls.c.call_id == bindparam(name)) for name in names
    ]
    statement = lookups[0] if count == 1 else union_all(*lookups)
    return statement, [*names, "key"]


@planned_at_each_run
def _select_applied_keys(count: int) -> tuple[ClauseElement, Sequence[str]]:
    # One (call id = ? AND key = ?) term per pair: each an index look-up on every backend. Two
    # IN lists would make SQLite probe every combination, and a row-value IN list makes it scan
    # the whole index.
    call_ids = [f"call_id_{index}" for index in range(count)]
    keys = [f"key_{index}" for index in range(count)]
    statement = select(events.c.dedup_key).where(
        or_(
            *(
                and_(events.c.call_id == bindparam(c), events.c.dedup_key == bindparam(k))
                for c, k in zip(call_ids, keys, strict=True)
            )
        )
    )
    return statement, [*call_ids, *keys]


# The statements of the read path, each taking one chunk of ids: a snapshot of any number of
# calls costs a few statements, not a few per call.
_SELECT_TRANSFERS: Final = (
    select(transfers)
    .where(transfers.c.call_id.in_(bindparam("call_ids", expanding=True)))
    .order_by(transfers.c.call_id, transfers.c.at.is_(None), transfers.c.at, transfers.c.sort_key)
)
_SELECT_LEGS: Final = select(calls.c.parent_call_id, calls.c.call_id, calls.c.start_time).where(
    calls.c.parent_call_id.in_(bindparam("call_ids", expanding=True))
)
_SELECT_ANCESTORS: Final = select(
    calls.c.call_id, calls.c.application_id, calls.c.parent_call_id
).where(calls.c.call_id.in_(bindparam("call_ids", expanding=True)))
# `lifecycle.leg_order` in SQL: by start time, then id, placeholders (no start time) last on
# every backend, although some sort NULLs first.
# A keyset page of calls whose start time is known takes the same order without the first key,
# so that the index on the start time serves it.
BY_KNOWN_START_TIME: Final = (calls.c.start_time, calls.c.call_id)
BY_START_TIME: Final = (calls.c.start_time.is_(None), *BY_KNOWN_START_TIME)


def _record(row: Any) -> CallRecord:
    record = CallRecord(*row)  # the columns are selected in the record's field order
    if record.sources is not None:
        return record
    # Written before revision 0004, when only terminal events were applied: every fact the row
    # holds came from its terminal event (a placeholder's, from its legs: no source).
    rank = lifecycle.RANKS.get(record.terminal_event or "", 0)
    sources = {
        name: rank for name in lifecycle.MERGED_FACTS if rank and getattr(record, name) is not None
    }
    if rank:
        sources["parent_call_id"] = rank
    return replace(record, sources=sources)


def where_calls_by_id(connection: Connection, call_ids: Iterable[str]) -> dict[str, CallRecord]:
    wanted = list(dict.fromkeys(call_ids))
    found: dict[str, CallRecord] = {}
    for chunk in padded_chunks(wanted, _HOT_CHUNK):
        compiled = cached(connection, _select_calls_by_id, len(chunk))
        parameters = {f"id_{index}": call_id for index, call_id in enumerate(chunk)}
        for row in driver.rows(compiled, driver.run(connection, compiled, parameters)):
            record = _record(row)
            found[record.call_id] = record
    return found


def find_call(connection: Connection, call_id: str) -> CallRecord | None:
    return where_calls_by_id(connection, [call_id]).get(call_id)


class Lineage(Protocol):
    """What `where_applications` reads of a call: a `CallRecord`, or an `ExportedCall`."""

    @property
    def call_id(self) -> str: ...
    @property
    def application_id(self) -> str | None: ...
    @property
    def parent_call_id(self) -> str | None: ...


def where_applications(connection: Connection, records: Sequence[Lineage]) -> dict[str, str | None]:
    """The application each call runs in: its own, else that of the nearest ancestor that names
    one (a transferred leg runs in its parent's, and `transferDisconnect` bodies seldom say
    which). Resolved when read, so a parent reporting after its legs need not rewrite them.

    All the calls climb their ancestry together, one level per step, and each step reads the
    ancestors not seen yet in one query (per chunk) for the whole set, so the cost follows the
    depth of the transfer trees, not the number of calls. A walk that comes back to a call it
    passed (a loop a race may leave) stops with no application.
    """
    # call id -> (application id, parent call id) of every call read so far; the records
    # themselves are often the ancestors asked for (`calls()` returns whole trees).
    known = {record.call_id: (record.application_id, record.parent_call_id) for record in records}
    shown: dict[str, str | None] = {}
    # For each call still climbing: the ancestor to look at next, and the calls passed so far.
    climbing: dict[str, tuple[str, set[str]]] = {}
    for record in records:
        shown[record.call_id] = record.application_id
        if record.application_id is None and record.parent_call_id is not None:
            climbing[record.call_id] = (record.parent_call_id, {record.call_id})
    while climbing:
        unknown = sorted({ancestor for ancestor, _ in climbing.values()} - known.keys())
        for chunk in chunks(unknown):
            for row in connection.execute(_SELECT_ANCESTORS, {"call_ids": chunk}):
                known[row.call_id] = (row.application_id, row.parent_call_id)
        still_climbing: dict[str, tuple[str, set[str]]] = {}
        for call_id, (ancestor, passed) in climbing.items():
            application_id, parent_id = known.get(ancestor, (None, None))  # gone: no parent
            passed.add(ancestor)
            if application_id is not None:
                shown[call_id] = application_id
            elif parent_id is not None and parent_id not in passed:
                still_climbing[call_id] = (parent_id, passed)
        climbing = still_climbing
    return shown


def where_calls_and_applied_keys(
    connection: Connection, call_ids: Iterable[str], wanted: Sequence[tuple[str, str]]
) -> tuple[dict[str, CallRecord], set[str]]:
    """The calls of `call_ids` (by id, those that exist), and of the (call id, content key)
    pairs `wanted`, the keys already applied. Only a call that exists can have had a delivery
    applied (applying one always writes its call), so a delivery that opens a call costs no
    look-up; and for one delivery (`apply`) the look-up rides on the read of its call, one
    statement (one round trip) for both."""
    ids = list(dict.fromkeys(call_ids))
    if not ids:
        return {}, set()
    if len(wanted) == 1 and len(ids) <= _HOT_IDS:
        ((_, key),) = wanted
        compiled = cached(connection, _select_calls_with_applied_key, len(ids))
        parameters = {f"id_{index}": call_id for index, call_id in enumerate(ids)}
        parameters["key"] = key
        found: dict[str, CallRecord] = {}
        applied: set[str] = set()
        for row in driver.rows(compiled, driver.run(connection, compiled, parameters)):
            record = _record(row[:-1])
            found[record.call_id] = record
            if row[-1] is not None:
                applied.add(row[-1])
        return found, applied
    found = where_calls_by_id(connection, ids)
    existing = [(call_id, key) for call_id, key in wanted if call_id in found]
    return found, where_applied_keys(connection, existing) if existing else set()


def where_applied_keys(connection: Connection, wanted: Sequence[tuple[str, str]]) -> set[str]:
    """Of the (call id, content key) pairs `wanted`, the keys already applied. Asked by call id
    and key together, the log's one unique index answers it."""
    found: set[str] = set()
    for chunk in padded_chunks(list(wanted), _HOT_PAIRS):
        compiled = cached(connection, _select_applied_keys, len(chunk))
        parameters: dict[str, str] = {}
        for index, (call_id, key) in enumerate(chunk):
            parameters[f"call_id_{index}"] = call_id
            parameters[f"key_{index}"] = key
        cursor = driver.run(connection, compiled, parameters)
        found.update(row[0] for row in driver.rows(compiled, cursor))
    return found


def where_legs(
    connection: Connection, call_ids: Iterable[str]
) -> dict[str, list[tuple[str, datetime | None]]]:
    """(leg id, start time) of the legs of each call, in no particular order (legs are ordered
    by `lifecycle.leg_order`). A call without legs has no entry."""
    legs: dict[str, list[tuple[str, datetime | None]]] = {}
    for chunk in chunks(list(dict.fromkeys(call_ids))):
        for row in connection.execute(_SELECT_LEGS, {"call_ids": chunk}):
            legs.setdefault(row.parent_call_id, []).append((row.call_id, row.start_time))
    return legs


def where_transfers(
    connection: Connection, call_ids: Iterable[str]
) -> dict[str, list[TransferAttempt]]:
    """The transfer attempts of each call, oldest first (by `eventTime`; attempts without one
    last), in the same order whatever order their deliveries came in."""
    found: dict[str, list[TransferAttempt]] = {}
    for chunk in chunks(list(dict.fromkeys(call_ids))):
        for row in connection.execute(_SELECT_TRANSFERS, {"call_ids": chunk}):
            found.setdefault(row.call_id, []).append(
                TransferAttempt(
                    at=row.at,
                    cause=row.cause,
                    disposition=row.disposition,
                    transfer_to=row.transfer_to,
                    transfer_caller_id=row.transfer_caller_id,
                    error_message=row.error_message,
                    error_id=row.error_id,
                )
            )
    return found


def where_calls(
    connection: Connection,
    *,
    state: Sequence[str] | None = None,
    disposition: str | None = None,
    account_id: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    after: tuple[datetime | None, str] | None = None,
    limit: int | None = None,
) -> list[CallRecord]:
    """The calls matching every filter given, in `BY_START_TIME` order, at most `limit`.
    `after`: the start time and id of the last call of the previous page, to read the next one
    (keyset pagination, as `where_calls_page` does): the calls that started go along the
    start-time index from there, then the placeholders (no start time) by id."""

    def matching(query: Select[Any]) -> Select[Any]:
        query = _filtered(
            query,
            state=state,
            disposition=disposition,
            account_id=account_id,
            started_after=started_after,
            started_before=started_before,
        )
        return query if limit is None else query.limit(limit - len(found))

    found: list[CallRecord] = []
    if after is None:
        query = matching(select(*CALL_COLUMNS).order_by(*BY_START_TIME))
        return [_record(row) for row in connection.execute(query)]
    after_start, after_id = after
    if after_start is not None:
        query = matching(
            select(*CALL_COLUMNS)
            .where(
                calls.c.start_time >= after_start,
                or_(calls.c.start_time > after_start, calls.c.call_id > after_id),
            )
            .order_by(*BY_KNOWN_START_TIME)
        )
        found = [_record(row) for row in connection.execute(query)]
        if len(found) == limit or started_after is not None or started_before is not None:
            return found
    placeholders = select(*CALL_COLUMNS).where(calls.c.start_time.is_(None))
    if after_start is None:
        placeholders = placeholders.where(calls.c.call_id > after_id)
    query = matching(placeholders.order_by(calls.c.call_id))
    return found + [_record(row) for row in connection.execute(query)]


def where_sweep_candidates(
    connection: Connection, after: str | None, cutoff: datetime, limit: int
) -> list[CallRecord]:
    """The next `limit` live calls after id `after`, by id, that may have been heard of last
    before `cutoff`: those that started before it or have no start time. Which of them the sweep
    ends is the lifecycle's to say (`lifecycle.expire`); this only keeps the read small, through
    the partial index of live calls."""
    query = _filtered(
        select(*CALL_COLUMNS).order_by(calls.c.call_id).limit(limit),
        state=lifecycle.LIVE_STATES,
    ).where(or_(calls.c.start_time.is_(None), calls.c.start_time < cutoff))
    if after is not None:
        query = query.where(calls.c.call_id > after)
    return [_record(row) for row in connection.execute(query)]


def count_calls(
    connection: Connection,
    *,
    state: str | Sequence[str] | None = None,
    account_id: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
) -> int:
    """How many calls match every filter given, counted by the database: the live calls a
    metrics scrape asks for without reading a row of them, the calls of a window reconcile
    could not compare."""
    query = _filtered(
        select(func.count()).select_from(calls),
        state=state,
        account_id=account_id,
        started_after=started_after,
        started_before=started_before,
    )
    return int(connection.execute(query).scalar_one())


def where_started_call_ids(
    connection: Connection,
    *,
    started_after: datetime,
    started_before: datetime,
    account_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[tuple[datetime, str]]:
    """(start time, id) of the next `limit` calls that started in [started_after,
    started_before), of `account_id` when given, in `BY_KNOWN_START_TIME` order after `after`
    (the last pair of the previous page): a keyset walk of a window along the start-time index
    that reads ids only, for reconcile to look each up in what Bandwidth listed."""
    query = _filtered(
        select(calls.c.start_time, calls.c.call_id).order_by(*BY_KNOWN_START_TIME).limit(limit),
        account_id=account_id,
        started_after=started_after,
        started_before=started_before,
    )
    if after is not None:
        after_start, after_id = after
        query = query.where(
            calls.c.start_time >= after_start,
            or_(calls.c.start_time > after_start, calls.c.call_id > after_id),
        )
    return [(row.start_time, row.call_id) for row in connection.execute(query)]


def _filtered(
    query: Select[Any],
    *,
    state: str | Sequence[str] | None = None,
    disposition: str | None = None,
    account_id: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
) -> Select[Any]:
    states = [state] if isinstance(state, str) else state
    if states is not None:
        query = query.where(calls.c.state.in_(states))
        # The partial index's own words: see `_partial` in `tables`.
        if lifecycle.DISCONNECTED not in states:
            query = query.where(text(NOT_ENDED))
    if disposition is not None:
        query = query.where(calls.c.disposition == disposition)
        if disposition != "completed":
            query = query.where(text(NOT_COMPLETED))
    if account_id is not None:
        query = query.where(calls.c.account_id == account_id)
    if started_after is not None:
        query = query.where(calls.c.start_time >= started_after)
    if started_before is not None:
        query = query.where(calls.c.start_time < started_before)
    return query


def page_call_ids(connection: Connection, after: str | None, limit: int) -> list[str]:
    """The next `limit` call ids after `after`, in the database's own order of ids."""
    query = select(calls.c.call_id).order_by(calls.c.call_id).limit(limit)
    if after is not None:
        query = query.where(calls.c.call_id > after)
    return list(connection.execute(query).scalars())


def where_transfer_rows(
    connection: Connection, call_ids: Iterable[str]
) -> dict[str, list[tuple[TransferAttempt, int, str]]]:
    """Each call's transfer attempts as `where_transfers` orders them, with the id of the
    delivery that told each and its content key."""
    found: dict[str, list[tuple[TransferAttempt, int, str]]] = {}
    for chunk in chunks(list(dict.fromkeys(call_ids))):
        for row in connection.execute(_SELECT_TRANSFERS, {"call_ids": chunk}):
            attempt = TransferAttempt(*(getattr(row, name) for name in ATTEMPT_FIELDS))
            found.setdefault(row.call_id, []).append((attempt, int(row.event_id), row.sort_key))
    return found
