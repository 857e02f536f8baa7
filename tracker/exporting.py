"""Call detail records out (`Tracker.export`, `tracker export`): one row per leg, or one per
conversation (an original call with every leg of its transfer tree folded in), written as CSV,
JSON Lines or Parquet.

The calls are read in keyset pages of `batch_size` (`storage.where_calls_page`, which counts
each call's legs and transfer attempts in the same statement), each page in a short read of its
own that adds a statement per level of inherited applications and, for conversations, per level
of their transfer trees: a few for the whole page, none per call. Memory follows `batch_size`,
never the number of calls, and workers applying meanwhile are not held up by a long export.

The columns are a contract: `LEG_COLUMNS` and `CONVERSATION_COLUMNS` name them in order with
their kind, and docs/export.md's table says what each means (tests/test_export.py keeps the two in
step). Add a column at the end, never rename or reorder one.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from tracker import instants, storage
from tracker.billing import BillingPolicy, billing_policy
from tracker.errors import check_account, check_batch_size, check_window
from tracker.storage.export import ExportedCall, LegAnswer

PER_LEG: Final = "leg"
PER_CONVERSATION: Final = "conversation"
PERS: Final = (PER_LEG, PER_CONVERSATION)

# Formats `tracker export` writes; Parquet needs the optional extra (`require_pyarrow`).
FORMATS: Final = ("csv", "jsonl", "parquet")
# Calls read per statement by default, by `Tracker.export` and `tracker export --batch-size`.
EXPORT_BATCH_SIZE: Final = 1000

# Rows per Parquet row group: a reader's unit of work, and what the writer holds at most (as
# Arrow columns, a few hundred bytes a row), converted from rows in slices of `_ARROW_SLICE`.
# With pyarrow's own 40 MB, 25,000 rows keep an export under 200 MB (benchmarks/export.py).
PARQUET_ROW_GROUP: Final = 25_000
_ARROW_SLICE: Final = 5_000

Row = dict[str, Any]


class Kind(StrEnum):
    """What a column holds: in a row (`Tracker.export`), in CSV and JSON Lines, in Parquet."""

    TEXT = "text"  # str | None; CSV empty when None; JSON string or null; Parquet string
    TIME = "time"  # aware UTC datetime | None; ISO 8601, microseconds, `Z`; timestamp[us, UTC]
    SECONDS = "seconds"  # float | None; CSV with 6 decimals; JSON number; Parquet double
    BOOLEAN = "boolean"  # bool; CSV `true`/`false`; JSON true/false; Parquet bool
    INTEGER = "integer"  # int; Parquet int64


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind


def _columns(*spec: tuple[str, Kind]) -> tuple[Column, ...]:
    return tuple(Column(name, kind) for name, kind in spec)


LEG_COLUMNS: Final = _columns(
    ("call_id", Kind.TEXT),
    ("parent_call_id", Kind.TEXT),
    ("account_id", Kind.TEXT),
    ("application_id", Kind.TEXT),
    ("direction", Kind.TEXT),
    ("from", Kind.TEXT),
    ("to", Kind.TEXT),
    ("caller_display_name", Kind.TEXT),
    ("state", Kind.TEXT),
    ("disposition", Kind.TEXT),
    ("cause", Kind.TEXT),
    ("start_time", Kind.TIME),
    ("answer_time", Kind.TIME),
    ("end_time", Kind.TIME),
    ("enqueued_time", Kind.TIME),
    ("duration", Kind.SECONDS),
    ("talk_duration", Kind.SECONDS),
    ("ring_duration", Kind.SECONDS),
    ("answered", Kind.BOOLEAN),
    ("swept", Kind.BOOLEAN),
    ("end_source", Kind.TEXT),
    ("tag", Kind.TEXT),
    ("error_message", Kind.TEXT),
    ("error_id", Kind.TEXT),
    ("machine_detection", Kind.TEXT),
    ("attestation", Kind.TEXT),
    ("verstat", Kind.TEXT),
    ("transfer_attempts", Kind.INTEGER),
    ("legs", Kind.INTEGER),
)
# The same columns describe the original call, then what its legs add.
CONVERSATION_COLUMNS: Final = LEG_COLUMNS + _columns(
    ("answered_leg_id", Kind.TEXT),
    ("answered_leg_to", Kind.TEXT),
    ("legs_talk_duration", Kind.SECONDS),
)


# With a billing policy (`billing=`), one more column at the end of either export: the seconds
# billed for the row's own talk time (docs/reporting.md). Without one, the exports are as before.
BILLABLE_COLUMN: Final = Column("billable_seconds", Kind.INTEGER)


def columns(per: str, *, billing: BillingPolicy | str | None = None) -> tuple[Column, ...]:
    """The columns of an export `per` leg or conversation, in order; `billable_seconds` last
    when a billing policy is given."""
    _check_per(per)
    found = LEG_COLUMNS if per == PER_LEG else CONVERSATION_COLUMNS
    return found if billing_policy(billing) is None else (*found, BILLABLE_COLUMN)


# --- reading --------------------------------------------------------------------------------


def export(
    engine: Engine,
    *,
    per: str,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    batch_size: int,
    billing: BillingPolicy | str | None = None,
    tz: str | None = None,
) -> Iterator[Row]:
    """The rows, one dict per call (`per="leg"`) or per original call (`per="conversation"`),
    keys in `columns(per)` order, by start time then call id; calls that started in
    [since, until) and, when given, of `account_id`. Placeholders (parents known only through
    their legs, with no start time) come last, and only when neither bound is given.

    The arguments are checked now; the database is read as the rows are consumed."""
    _check_per(per)
    check_window(since, until)
    check_account(account_id)
    check_batch_size(batch_size)
    policy = billing_policy(billing)
    rows = _rows(engine, per, since, until, account_id, batch_size)
    if policy is not None:
        rows = _billed(rows, policy)
    if tz is None or tz == "UTC":
        return rows
    return _in_zone(rows, columns(per), instants.zone(tz))


def _in_zone(rows: Iterator[Row], columns: Sequence[Column], zone: ZoneInfo) -> Iterator[Row]:
    """The rows with every instant in `zone` (`export(tz=...)`): the same instants, each with
    the offset it had there, which the writers write (`instants.local_text`)."""
    times = [column.name for column in columns if column.kind is Kind.TIME]
    for row in rows:
        for name in times:
            if row[name] is not None:
                row[name] = row[name].astimezone(zone)
        yield row


def _billed(rows: Iterator[Row], policy: BillingPolicy) -> Iterator[Row]:
    for row in rows:
        row["billable_seconds"] = policy.billable_seconds(row["answer_time"], row["end_time"])
        yield row


def _check_per(per: str) -> None:
    if per not in PERS:
        raise ValueError(f"per must be 'leg' or 'conversation'; got {per!r}")


def _rows(
    engine: Engine,
    per: str,
    since: datetime | None,
    until: datetime | None,
    account_id: str | None,
    batch_size: int,
) -> Iterator[Row]:
    after: tuple[datetime | None, str] | None = None
    while True:
        with engine.connect() as connection:
            page = storage.where_calls_page(
                connection,
                after=after,
                since=since,
                until=until,
                account_id=account_id,
                originals_only=per == PER_CONVERSATION,
                limit=batch_size,
            )
            rows = (
                _leg_rows(connection, page)
                if per == PER_LEG
                else _conversation_rows(connection, page)
            )
        yield from rows
        if len(page) < batch_size:
            return
        after = (page[-1].start_time, page[-1].call_id)


def _leg_rows(connection: Connection, page: Sequence[ExportedCall]) -> list[Row]:
    applications = storage.where_applications(connection, page)
    return [
        _row(call, applications[call.call_id], call.transfer_attempts, call.legs) for call in page
    ]


def _conversation_rows(connection: Connection, originals: Sequence[ExportedCall]) -> list[Row]:
    """Each original call's row with its legs folded in. The trees are walked one level at a
    time for the whole page, and only below the calls that have legs (each row counts its
    own), so a page costs as many statements as its deepest tree has levels, none for calls
    never transferred."""
    original_of = {call.call_id: call.call_id for call in originals}
    legs_of: dict[str, list[LegAnswer]] = {}
    level = [call.call_id for call in originals if call.legs]
    while level:
        next_level: list[str] = []
        for leg in storage.where_leg_answers(connection, level):
            if leg.call_id in original_of:  # a loop a race may leave: each call counts once
                continue
            original = original_of[leg.call_id] = original_of[leg.parent_call_id]
            legs_of.setdefault(original, []).append(leg)
            if leg.legs:
                next_level.append(leg.call_id)
        level = next_level
    applications = storage.where_applications(connection, originals)
    rows: list[Row] = []
    for call in originals:
        legs = legs_of.get(call.call_id)
        if not legs:
            row = _row(call, applications[call.call_id], call.transfer_attempts, 0)
            row.update(_NO_LEGS)
            rows.append(row)
            continue
        attempts = call.transfer_attempts + sum(leg.transfer_attempts for leg in legs)
        row = _row(call, applications[call.call_id], attempts, len(legs))
        answered = [leg for leg in legs if leg.answer_time is not None]
        first = min(answered, key=lambda leg: (leg.answer_time, leg.call_id), default=None)
        talks = [
            leg.end_time - leg.answer_time
            for leg in answered
            if leg.end_time is not None and leg.answer_time is not None
        ]
        row["answered_leg_id"] = None if first is None else first.call_id
        row["answered_leg_to"] = None if first is None else first.to_number
        row["legs_talk_duration"] = sum(talks, timedelta()).total_seconds() if talks else None
        rows.append(row)
    return rows


_NO_LEGS: Final[Row] = {
    "answered_leg_id": None,
    "answered_leg_to": None,
    "legs_talk_duration": None,
}


def _row(call: ExportedCall, application_id: str | None, transfer_attempts: int, legs: int) -> Row:
    start, answer, end = call.start_time, call.answer_time, call.end_time
    return {
        "call_id": call.call_id,
        "parent_call_id": call.parent_call_id,
        "account_id": call.account_id,
        "application_id": application_id,
        "direction": call.direction,
        "from": call.from_number,
        "to": call.to_number,
        "caller_display_name": call.caller_display_name,
        "state": call.state,
        "disposition": call.disposition,
        "cause": call.cause,
        "start_time": start,
        "answer_time": answer,
        "end_time": end,
        "enqueued_time": call.enqueued_time,
        # `Call.duration`, `talk_duration` and `ring_duration`, in seconds.
        "duration": _seconds(start, end),
        "talk_duration": _seconds(answer, end),
        "ring_duration": _seconds(start, answer),
        "answered": answer is not None,
        "swept": call.swept_at is not None,
        "end_source": call.end_source,
        "tag": call.tag,
        "error_message": call.error_message,
        "error_id": call.error_id,
        "machine_detection": call.machine_detection,
        "attestation": call.attestation,
        "verstat": call.verstat,
        "transfer_attempts": transfer_attempts,
        "legs": legs,
    }


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


# --- writing --------------------------------------------------------------------------------


def _iso(instant: datetime) -> str:
    """ISO 8601 in UTC, always with microseconds and `Z`: one width, sortable as text; in its
    own zone's offset when `export(tz=...)` gave one."""
    return instants.local_text(instant)


# How CSV writes a column of the kinds the `csv` module would not write as docs/export.md says
# (it writes None as an empty cell, a str as it is and an int in digits by itself). A whole
# column of a slice of rows at a time: a comprehension costs less per value than a call.
_CSV_COLUMN: Final[dict[Kind, Callable[[Sequence[Any]], list[Any]]]] = {
    Kind.TIME: lambda values: [
        None if value is None else instants.local_text(value) for value in values
    ],
    Kind.SECONDS: lambda values: [None if value is None else f"{value:.6f}" for value in values],
    Kind.BOOLEAN: lambda values: ["true" if value else "false" for value in values],
}
# Rows written at a time by `write_csv`: a reader of stdout (`| head`) gets them this often.
_CSV_SLICE: Final = 500


def write_csv(rows: Iterable[Row], columns: Sequence[Column], stream: TextIO) -> int:
    """RFC 4180 CSV (a header row, then one line per row; unknown values empty). `rows` are
    as `export` gives them, keys in `columns` order; `stream` must be opened with
    `newline=""`. Returns the number of rows written."""
    writer = csv.writer(stream)
    writer.writerow([column.name for column in columns])
    converted = [
        (index, _CSV_COLUMN[column.kind])
        for index, column in enumerate(columns)
        if column.kind in _CSV_COLUMN
    ]
    count = 0
    remaining = iter(rows)
    while rows_slice := list(islice(remaining, _CSV_SLICE)):
        cells: list[Sequence[Any]] = list(zip(*(row.values() for row in rows_slice), strict=True))
        for index, text in converted:
            cells[index] = text(cells[index])
        writer.writerows(zip(*cells, strict=True))
        count += len(rows_slice)
    return count


def write_jsonl(rows: Iterable[Row], columns: Sequence[Column], stream: TextIO) -> int:
    """JSON Lines: one object per row, keys in column order, times as ISO 8601 strings,
    unknown values null. Returns the number of rows written."""
    times = [column.name for column in columns if column.kind is Kind.TIME]
    count = 0
    for row in rows:
        shown = {**row, **{name: _iso(row[name]) for name in times if row[name] is not None}}
        stream.write(json.dumps(shown, ensure_ascii=False, separators=(",", ":")))
        stream.write("\n")
        count += 1
    return count


def require_pyarrow() -> None:
    """Raise, naming the fix, when Parquet cannot be written."""
    _pyarrow()


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise ImportError(
            f"writing Parquet needs pyarrow, which is not installed ({error}); install the "
            "extra: pip install 'tracker[parquet]'"
        ) from error
    return pyarrow, pyarrow.parquet


def write_parquet(
    rows: Iterable[Row],
    columns: Sequence[Column],
    path: str | Path,
    *,
    row_group_size: int = PARQUET_ROW_GROUP,
    tz: str | None = None,
) -> int:
    """A Parquet file of typed columns (see `Kind`), written a row group at a time so memory
    stays bounded; timestamps carry the zone `tz` (default UTC). Returns the number of rows
    written."""
    pa, pq = _pyarrow()
    types = {
        Kind.TEXT: pa.string(),
        Kind.TIME: pa.timestamp("us", tz=tz or "UTC"),
        Kind.SECONDS: pa.float64(),
        Kind.BOOLEAN: pa.bool_(),
        Kind.INTEGER: pa.int64(),
    }
    schema = pa.schema([pa.field(column.name, types[column.kind]) for column in columns])
    names = [column.name for column in columns]
    slice_size = min(_ARROW_SLICE, row_group_size)
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        pending: list[Any] = []  # Arrow record batches of the row group being filled
        pending_rows = 0
        values: dict[str, list[Any]] = {name: [] for name in names}
        for row in rows:
            for name in names:
                values[name].append(row[name])
            count += 1
            if count % slice_size == 0:
                pending.append(pa.RecordBatch.from_pydict(values, schema=schema))
                pending_rows += slice_size
                values = {name: [] for name in names}
                if pending_rows >= row_group_size:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size)
                    pending, pending_rows = [], 0
        if values[names[0]]:
            pending.append(pa.RecordBatch.from_pydict(values, schema=schema))
        if pending or count == 0:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size)
    return count
