"""Stage 3 of the pipeline: the tables and the few statements that read and write them.

One module per concern, as Optuna's `storages/_rdb/` is laid out:

- `columns`: the column types (`UTCDateTime`, `JSONText`, `HistoryJSON`);
- `tables`: the declarative models and their tables, the partial indexes' conditions;
- `engines`: engine setup per backend (`create_engine`, `adopt_engine`);
- `driver` and `statements`: the hot statements, compiled once per dialect and run on the
  driver, and the chunks that bound their lists of ids;
- `reads`: calls by id, by filter and by page, their legs, transfers and applications;
- `log`: the event log appended to, read a page at a time, and pruned;
- `export`: call detail records read a keyset page at a time;
- `writes`: calls inserted and compare-and-set in one lock order, accounts, transfers;
- `locks`: the calls a batch names, locked in one order before it reads them;
- `races`: a lost race told apart from a failure (`LostRaceError`, `is_unique_violation`);
- `leases`: named leases taken, renewed and given up by compare-and-set, by the database's clock.

Naming follows Optuna's storage: `find_*` returns one thing or None, `where_*` returns many,
`insert_*`/`write_*`/`fill_*` change rows. Concurrency rests on the database's uniqueness
constraints and on compare-and-set: a call row is updated only `WHERE version = <the version
read>`, so a lost race is detected (`LostRaceError`) and the whole delivery retried, never
overwritten. The schema itself comes only from the Alembic migrations in `migrations/`.

The names below are the ones the rest of the package, the migrations, the benchmark and the
tests use as `storage.NAME`; each lives in the module named above.
"""

from __future__ import annotations

from tracker.storage.columns import HistoryJSON, JSONText, UTCDateTime
from tracker.storage.engines import DEFAULT_TIMEOUT, adopt_engine, create_engine, has_sqlite_setup
from tracker.storage.export import ExportedCall, LegAnswer, where_calls_page, where_leg_answers
from tracker.storage.leases import (
    LeaseHolding,
    database_now,
    find_lease,
    give_up_lease,
    renew_lease,
    take_lease,
)
from tracker.storage.locks import lock_calls, release_call_locks
from tracker.storage.log import (
    applied_after,
    count_applied,
    count_events_through,
    delete_events,
    insert_events,
    last_event_id,
    where_applied_bodies,
    where_events,
    where_events_between,
    where_log_entries,
    where_log_page,
    where_not_applied_ids,
)
from tracker.storage.races import LostRaceError, is_unique_violation
from tracker.storage.reads import (
    BY_START_TIME,
    Lineage,
    count_calls,
    find_call,
    page_call_ids,
    where_applications,
    where_applied_keys,
    where_calls,
    where_calls_and_applied_keys,
    where_calls_by_id,
    where_legs,
    where_started_call_ids,
    where_sweep_candidates,
    where_transfer_rows,
    where_transfers,
)
from tracker.storage.tables import (
    CALL_ID,
    ID,
    IS_LEG,
    NOT_APPLIED,
    NOT_COMPLETED,
    NOT_ENDED,
    TABLE_PREFIX,
    VERSION_TABLE,
    Base,
    CallRow,
    EventRow,
    LeaseRow,
    TransferRow,
    calls,
    events,
    leases,
    transfers,
)
from tracker.storage.writes import delete_transfers, fill_account, insert_transfers, write_calls

__all__ = [
    "BY_START_TIME",
    "CALL_ID",
    "DEFAULT_TIMEOUT",
    "ID",
    "IS_LEG",
    "NOT_APPLIED",
    "NOT_COMPLETED",
    "NOT_ENDED",
    "TABLE_PREFIX",
    "VERSION_TABLE",
    "Base",
    "CallRow",
    "EventRow",
    "ExportedCall",
    "HistoryJSON",
    "JSONText",
    "LeaseHolding",
    "LeaseRow",
    "LegAnswer",
    "Lineage",
    "LostRaceError",
    "TransferRow",
    "UTCDateTime",
    "adopt_engine",
    "applied_after",
    "calls",
    "count_applied",
    "count_calls",
    "count_events_through",
    "create_engine",
    "database_now",
    "delete_events",
    "delete_transfers",
    "events",
    "fill_account",
    "find_call",
    "find_lease",
    "give_up_lease",
    "has_sqlite_setup",
    "insert_events",
    "insert_transfers",
    "is_unique_violation",
    "last_event_id",
    "leases",
    "lock_calls",
    "page_call_ids",
    "release_call_locks",
    "renew_lease",
    "take_lease",
    "transfers",
    "where_applications",
    "where_applied_bodies",
    "where_applied_keys",
    "where_calls",
    "where_calls_and_applied_keys",
    "where_calls_by_id",
    "where_calls_page",
    "where_events",
    "where_events_between",
    "where_leg_answers",
    "where_legs",
    "where_log_entries",
    "where_log_page",
    "where_not_applied_ids",
    "where_started_call_ids",
    "where_sweep_candidates",
    "where_transfer_rows",
    "where_transfers",
    "write_calls",
]
