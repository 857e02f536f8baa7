"""Rebuild: every call recomputed from the event log, compared with the live records, and on
request written back (`Tracker.rebuild`).

Why a replay can judge the live records: they depend only on the set of applied deliveries,
neither on the order those came in nor on how often each came (docs/guarantees.md, 6). So the
log's applied deliveries, replayed into an empty scratch database, give the records the live ones
must equal. Only applied deliveries are replayed: the others changed no call when they came
(Guarantee 7; a duplicate, an invalid or an ignored body never does), and a rejected delivery
replayed in another order than the one it met could be applied, reporting a difference that is
not one. The scratch database is a temporary SQLite file, so memory stays bounded whatever the
size of the log: the replay holds one chunk of bodies and the ids of the replayed deliveries
(8 bytes each), the comparison one page of calls. The calls to write are kept in the scratch
file too (`_PendingCalls`) and read back a batch at a time; the report lists at most `REPORTED`
calls of each kind and counts the rest.

Event ids are compared too, mapped back: a history step and a transfer attempt name the delivery
that made them, and the scratch log numbers the replayed deliveries 1, 2, ... in replay order, so
scratch id n is the n-th replayed live id (`_LiveIds`). The replay follows the log's id order;
for one call that is the order its deliveries committed in (every applied delivery writes its
call, and its parent, by compare-and-set: one that commits after another of the same call lost
the race first and took a new, larger id when retried), so a step names in the replay the
delivery it names in the live database, and one that names another is a real difference.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Final, Generic, TypeVar

from sqlalchemy import Connection, Engine, text

from tracker import lifecycle, parsing, storage
from tracker.applying import apply_bodies, expire_calls
from tracker.errors import TrackerError
from tracker.lifecycle import CallRecord
from tracker.provider import PROVIDER_ORIGIN
from tracker.records import CallDifference, RebuildReport, TransferAttempt
from tracker.schema import upgrade_schema
from tracker.writing import MAX_ATTEMPTS, Writer

# Bodies replayed per scratch transaction, calls compared per page, calls written per live
# transaction: each bounds the memory held and, for writing, how long locks are held.
REPLAY_CHUNK: Final = 500
CALL_PAGE: Final = 500
WRITE_BATCH: Final = 200
# Calls a report names at most in each of its lists (differences, written, moved); its counts
# cover every call.
REPORTED: Final = 10_000

_Transfers = list[tuple[TransferAttempt, int, str]]
# The calls a batch wrote, and those it left because a delivery changed them meanwhile.
_Written = tuple[list[str], list[str]]
# Runs a batch in one writing transaction of the live database, again when it loses a race.
WriteBatch = Callable[[Callable[[Connection], _Written]], _Written]

_LOG_MOVED: Final = (
    "deliveries were applied (or the log pruned) while the rebuild ran, so its records may miss "
    "them; nothing more was written: run `tracker rebuild --apply` again while no worker applies"
)


class _LogMovedError(Exception):
    """A delivery was applied after the replay read the log: writing must stop."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A differing call to write: the live version it was compared at (None: no live row)."""

    call_id: str
    version: int | None
    fields: tuple[str, ...]


class _LiveIds:
    """The live log id of each replayed delivery, in replay order: scratch id n is entry n-1,
    since an empty SQLite log numbers its rows 1, 2, ... and one writer replays them in order."""

    def __init__(self) -> None:
        self.ids = array("q")

    def __call__(self, scratch_id: int) -> int:
        return self.ids[scratch_id - 1]

    def __len__(self) -> int:
        return len(self.ids)


class _Scratch:
    """The empty database the log is replayed into: a temporary SQLite file in `folder`,
    written as any database of the tracker is (`tracker.applying` in `tracker.writing`'s
    transactions), without the durability a file thrown away afterwards does not need."""

    def __init__(self, folder: str, max_body_bytes: int) -> None:
        self.engine = storage.create_engine(
            f"sqlite:///{folder}/replay.db", durable=False, timeout=None
        )
        self.max_body_bytes = max_body_bytes
        upgrade_schema(self.engine)
        self.writer = Writer(self.engine, owns_engine=True, max_attempts=MAX_ATTEMPTS)

    def close(self) -> None:
        self.writer.close()
        self.engine.dispose()

    def apply_many(self, bodies: Sequence[bytes], origin: str | None = None) -> None:
        """Apply these logged bodies in order, in one transaction, as they were applied live:
        the provider's answers (`origin` `provider`) as such, the rest as deliveries."""
        apply_bodies(self.writer, bodies, self.max_body_bytes, origin)

    def replay_sweep(self, entry: parsing.SweepEntry) -> None:
        """Replay one of the sweep's own entries: a call the sweep ended has no delivery for
        its end, the entry is its end."""
        self.writer.run(
            partial(
                expire_calls,
                call_ids=[entry.call_id],
                swept_at=entry.swept_at,
                cutoff=None,
                replaying=True,
            )
        )


def rebuild(live: Engine, write: WriteBatch | None, *, max_body_bytes: int) -> RebuildReport:
    """Replay the log of `live` into a scratch database (`_Scratch`, in a temporary folder of
    TMPDIR), compare, and with `write` write the recomputed records of the differing calls
    back. `max_body_bytes` is the live tracker's, so that a body reads in the replay as it read
    when it was applied."""
    with tempfile.TemporaryDirectory(prefix="tracker-rebuild-") as folder:
        scratch = _Scratch(folder, max_body_bytes)
        try:
            return _rebuild(live, scratch, write)
        finally:
            scratch.close()


def _rebuild(live: Engine, scratch: _Scratch, write: WriteBatch | None) -> RebuildReport:
    with live.connect() as connection:
        up_to = storage.last_event_id(connection)
    live_ids = _replay(live, scratch, up_to)
    with scratch.engine.connect() as connection:
        if storage.last_event_id(connection) != len(live_ids):
            raise TrackerError("the scratch log is not numbered 1, 2, ...: please report this")
        not_reapplied = tuple(live_ids(i) for i in storage.where_not_applied_ids(connection))
    differences = _Listed[CallDifference]()
    pending = _PendingCalls(scratch.engine)
    checked = 0
    for page, found, rebuilt in _live_pages(live, scratch.engine, live_ids):
        to_write: list[_Pending] = []
        for call_id in page:
            checked += 1
            record, transfers = found[call_id]
            if call_id not in rebuilt:
                differences.add(CallDifference(call_id, "not_in_log"))
                continue
            fields = _differing(record, transfers, *rebuilt[call_id])
            if fields:
                differences.add(CallDifference(call_id, "differs", fields))
                to_write.append(_Pending(call_id, record.version, fields))
        pending.add(to_write)
    for not_live in _batches(_not_live(live, scratch.engine), CALL_PAGE):
        checked += len(not_live)
        differences.extend(CallDifference(call_id, "not_live") for call_id in not_live)
        pending.add([_Pending(call_id, None, ()) for call_id in not_live])
    report = RebuildReport(
        calls_checked=checked,
        deliveries_replayed=len(live_ids),
        differences=tuple(differences.listed),
        not_reapplied=not_reapplied,
        applied=write is not None,
        calls_differing=differences.count,
    )
    if write is None or not pending.count:
        return report
    return _write(live, scratch.engine, write, report, pending, up_to, live_ids)


T = TypeVar("T")


class _Listed(Generic[T]):
    """The first `REPORTED` items added, and how many were added in all."""

    def __init__(self) -> None:
        self.listed: list[T] = []
        self.count = 0

    def add(self, item: T) -> None:
        self.extend([item])

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.count += 1
            if len(self.listed) < REPORTED:
                self.listed.append(item)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _PendingCalls:
    """The differing calls to write, kept in a table of the scratch file rather than in memory
    (one row per call, written a page at a time), and read back a batch at a time."""

    def __init__(self, scratch: Engine) -> None:
        self.scratch = scratch
        self.count = 0
        with scratch.begin() as connection:
            connection.execute(
                text(
                    "CREATE TABLE rebuild_pending "
                    "(call_id TEXT PRIMARY KEY, version INTEGER, fields TEXT NOT NULL)"
                )
            )

    def add(self, items: Sequence[_Pending]) -> None:
        if not items:
            return
        with self.scratch.begin() as connection:
            connection.execute(
                text("INSERT INTO rebuild_pending VALUES (:call_id, :version, :fields)"),
                [
                    {"call_id": i.call_id, "version": i.version, "fields": ",".join(i.fields)}
                    for i in items
                ],
            )
        self.count += len(items)

    def batches(self, size: int) -> Iterator[list[_Pending]]:
        """The calls without a live row first, all in one batch (a leg's parent must be in
        before it: those are the calls deleted behind the tracker's back, few), then the
        others `size` at a time, by id."""
        absent = self._read("version IS NULL", None, None)
        if absent:
            yield absent
        after = ""
        while True:
            batch = self._read("version IS NOT NULL AND call_id > :after", after, size)
            if not batch:
                return
            yield batch
            after = batch[-1].call_id

    def _read(self, condition: str, after: str | None, size: int | None) -> list[_Pending]:
        statement = f"SELECT call_id, version, fields FROM rebuild_pending WHERE {condition} "
        statement += "ORDER BY call_id" + ("" if size is None else " LIMIT :size")
        with self.scratch.connect() as connection:
            rows = connection.execute(text(statement), {"after": after, "size": size})
            return [
                _Pending(call_id, version, tuple(fields.split(",")) if fields else ())
                for call_id, version, fields in rows
            ]


def _replay(live: Engine, scratch: _Scratch, up_to: int) -> _LiveIds:
    live_ids = _LiveIds()
    after = 0
    while True:
        with live.connect() as connection:
            page = storage.where_applied_bodies(connection, after, up_to, REPLAY_CHUNK)
        if not page:
            return live_ids
        bodies: list[bytes] = []
        kind: str | None = None  # `provider` while `bodies` are the provider's answers
        for _id, body, origin, event_type in page:
            if origin == parsing.SWEEP_ORIGIN and event_type == lifecycle.SWEEP:
                if bodies:  # in log order: the deliveries before the sweep first
                    scratch.apply_many(bodies, kind)
                    bodies = []
                scratch.replay_sweep(parsing.read_sweep_body(body))
                continue
            this_kind = PROVIDER_ORIGIN if origin == PROVIDER_ORIGIN else None
            if bodies and this_kind != kind:
                scratch.apply_many(bodies, kind)
                bodies = []
            kind = this_kind
            bodies.append(body)
        if bodies:
            scratch.apply_many(bodies, kind)
        live_ids.ids.extend(event_id for event_id, *_rest in page)
        after = page[-1][0]


def _live_pages(
    live: Engine, scratch: Engine, live_ids: _LiveIds
) -> Iterator[
    tuple[
        list[str],
        dict[str, tuple[CallRecord, _Transfers]],
        dict[str, tuple[CallRecord, _Transfers]],
    ]
]:
    """Each page of live calls, with the same calls as the replay left them (ids mapped)."""
    after: str | None = None
    while True:
        with live.connect() as connection:
            page = storage.page_call_ids(connection, after, CALL_PAGE)
            if not page:
                return
            found = _with_transfers(connection, page)
        with scratch.connect() as connection:
            rebuilt = _with_transfers(connection, page, live_ids)
        yield page, found, rebuilt
        after = page[-1]


def _with_transfers(
    connection: Connection, call_ids: Sequence[str], live_ids: _LiveIds | None = None
) -> dict[str, tuple[CallRecord, _Transfers]]:
    """The records of these calls and their transfer rows; with `live_ids`, read from the
    scratch database, their event ids mapped to the live log's."""
    records = storage.where_calls_by_id(connection, call_ids)
    transfers = storage.where_transfer_rows(connection, call_ids)
    if live_ids is None:
        return {call_id: (r, transfers.get(call_id, [])) for call_id, r in records.items()}
    return {
        call_id: (
            lifecycle.changed(
                record,
                {
                    "history": tuple(
                        replace(step, event_id=live_ids(step.event_id)) for step in record.history
                    )
                },
            ),
            [(attempt, live_ids(eid), key) for attempt, eid, key in transfers.get(call_id, [])],
        )
        for call_id, record in records.items()
    }


def _differing(
    live: CallRecord, live_transfers: _Transfers, rebuilt: CallRecord, rebuilt_transfers: _Transfers
) -> tuple[str, ...]:
    """The record fields that differ (every one but the compare-and-set `version`, the facts
    that decide later deliveries included: `sources`, `seen_rank`, ...), and `transfers`."""
    names = [
        name
        for name, old, new in zip(
            lifecycle.RECORD_FIELDS,
            lifecycle.facts_of(live),
            lifecycle.facts_of(rebuilt),
            strict=True,
        )
        if old != new and name != "version"
    ]
    if live_transfers != rebuilt_transfers:
        names.append("transfers")
    return tuple(names)


def _not_live(live: Engine, scratch: Engine) -> Iterator[str]:
    """The calls the replay made that the live database has no row for."""
    after: str | None = None
    while True:
        with scratch.connect() as connection:
            page = storage.page_call_ids(connection, after, CALL_PAGE)
        if not page:
            return
        with live.connect() as connection:
            found = storage.where_calls_by_id(connection, page)
        yield from (call_id for call_id in page if call_id not in found)
        after = page[-1]


def _write(
    live: Engine,
    scratch: Engine,
    write: WriteBatch,
    report: RebuildReport,
    pending: _PendingCalls,
    up_to: int,
    live_ids: _LiveIds,
) -> RebuildReport:
    """Write the recomputed records, in batches each its own transaction. A call is written
    only at the version it was compared at, by compare-and-set: one a delivery changed since is
    left alone (`moved`), and a delivery racing the write makes one of the two retry. The
    deliveries applied after the replay read the log are the ones it lacks; while there are
    none, the comparison still holds, so each batch checks it first and writing stops at the
    first that finds one (as it does before the first batch when one committed late under an
    older id, or the log was pruned meanwhile)."""
    with live.connect() as connection:
        if storage.count_applied(connection, up_to) != len(live_ids) or storage.applied_after(
            connection, up_to
        ):
            return replace(report, stopped=_LOG_MOVED)
    written = _Listed[str]()
    moved = _Listed[str]()

    def done(stopped: str | None = None) -> RebuildReport:
        return replace(
            report,
            written=tuple(written.listed),
            moved=tuple(moved.listed),
            calls_written=written.count,
            calls_moved=moved.count,
            stopped=stopped,
        )

    for batch in pending.batches(WRITE_BATCH):
        with scratch.connect() as connection:
            rebuilt = _with_transfers(connection, [item.call_id for item in batch], live_ids)
        try:
            wrote, changed_meanwhile = write(
                partial(_write_batch, batch=batch, rebuilt=rebuilt, up_to=up_to)
            )
        except _LogMovedError:
            return done(_LOG_MOVED)
        written.extend(wrote)
        moved.extend(changed_meanwhile)
    return done()


def _write_batch(
    connection: Connection,
    batch: Sequence[_Pending],
    rebuilt: dict[str, tuple[CallRecord, _Transfers]],
    up_to: int,
) -> _Written:
    if storage.applied_after(connection, up_to):
        raise _LogMovedError
    now = storage.where_calls_by_id(connection, [item.call_id for item in batch])
    changes: list[tuple[CallRecord | None, CallRecord]] = []
    written: list[str] = []
    moved: list[str] = []
    for item in batch:
        before = now.get(item.call_id)
        if (before.version if before else None) != item.version:
            moved.append(item.call_id)
            continue
        record, _transfers = rebuilt[item.call_id]
        changes.append((before, replace(record, version=before.version if before else 0)))
        written.append(item.call_id)
    storage.write_calls(connection, changes)
    wanted = {item.call_id: item for item in batch}
    retold = [
        call_id
        for call_id in written
        if wanted[call_id].version is None or "transfers" in wanted[call_id].fields
    ]
    storage.delete_transfers(connection, retold)
    storage.insert_transfers(
        connection,
        [
            (call_id, event_id, attempt, key)
            for call_id in retold
            for attempt, event_id, key in rebuilt[call_id][1]
        ],
    )
    return written, moved
