"""Schema upgrades with many workers: every worker may call `upgrade()` at start-up.

The promise under test (docs/guarantees.md): `upgrade` is "safe to call again", also from
many processes at once. Several processes upgrading a new database together leave exactly one
schema, the one a single upgrade gives, with one row at the head revision in the tracker's own
version table; and `upgrade` on a database already at head succeeds and changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.conftest import fresh_database
from tests.workers import record_figure, run_together, upgrade_rounds
from tracker import Outcome, Tracker
from tracker.schema import head_revision
from tracker.storage import VERSION_TABLE
from tracker.testing import disconnect, transfer_disconnect

WORKERS = 6
ROUNDS = 8  # new databases, each upgraded by all the workers at once


@pytest.mark.slow
def test_processes_upgrading_a_new_database_at_once_leave_one_schema_at_head(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)  # the reference: one process, alone
    expected = schema_of(database_url)
    with ExitStack() as stack:
        urls = [
            stack.enter_context(new_database(backend, tmp_path / f"round-{number}"))
            for number in range(ROUNDS)
        ]

        run = run_together(upgrade_rounds, [(urls,)] * WORKERS, rounds=ROUNDS)
        record_figure(
            f"[{backend} upgrade race] workers={WORKERS} new databases={ROUNDS} "
            f"seconds={run.seconds:.2f}"
        )

        assert run.flat() == ["upgraded"] * (WORKERS * ROUNDS)
        for url in urls:
            assert version_rows(url) == [head_revision()]
            assert schema_of(url) == expected
            with Tracker(url) as tracker:
                assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


def test_upgrade_at_head_succeeds_and_changes_nothing(tracker: Tracker, database_url: str) -> None:
    parent = disconnect()
    tracker.apply(parent)
    tracker.apply(transfer_disconnect(parent["callId"]))
    schema, rows = schema_of(database_url), all_rows(database_url)

    tracker.upgrade()
    tracker.upgrade()

    assert version_rows(database_url) == [head_revision()]
    assert schema_of(database_url) == schema
    assert all_rows(database_url) == rows
    assert tracker.apply(parent).outcome is Outcome.DUPLICATE


@pytest.mark.slow
def test_processes_upgrading_a_database_at_head_at_once_change_nothing(
    tracker: Tracker, database_url: str
) -> None:
    """Workers restarted together against a live database: each calls `upgrade()` at start-up,
    and the rows already written, the schema and the version stay as they were."""
    parent = disconnect()
    tracker.apply(json.dumps(parent))
    tracker.apply(json.dumps(transfer_disconnect(parent["callId"])))
    schema, rows = schema_of(database_url), all_rows(database_url)

    run = run_together(upgrade_rounds, [([database_url],)] * WORKERS, rounds=1)

    assert run.flat() == ["upgraded"] * WORKERS
    assert version_rows(database_url) == [head_revision()]
    assert schema_of(database_url) == schema
    assert all_rows(database_url) == rows


def test_sqlite_tracker_opening_a_new_file_another_process_is_writing_waits_for_it(
    tmp_path: Path,
) -> None:
    """The moment that decides the race above, made deterministic: a new SQLite file (not in WAL
    yet) whose write lock another process holds. Opening it must wait out the busy timeout like
    any write, switch it to WAL and upgrade, not fail with 'database is locked'."""
    path = tmp_path / "tracker.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE host_table (x INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO host_table VALUES (1)")
    release = threading.Timer(1.0, other.execute, args=("COMMIT",))
    release.start()
    try:
        with Tracker(f"sqlite:///{path}") as tracker:
            tracker.upgrade()
            assert version_rows(f"sqlite:///{path}") == [head_revision()]
            with tracker.engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        release.join()
        other.close()


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def new_database(backend: str, directory: Path) -> Iterator[str]:
    directory.mkdir()
    yield from fresh_database(backend, directory)


def migrate(url: str) -> None:
    with Tracker(url) as tracker:
        tracker.upgrade()


def version_rows(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
            )
    finally:
        engine.dispose()


def schema_of(url: str) -> dict[str, Any]:
    """The tracker's tables as the database describes them: columns, keys, indexes."""
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        described: dict[str, Any] = {}
        for table in sorted(inspector.get_table_names()):
            if not table.startswith("tracker_"):
                continue
            described[table] = {
                "columns": [
                    (column["name"], str(column["type"]), column["nullable"])
                    for column in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "foreign keys": sorted(
                    (tuple(key["constrained_columns"]), key["referred_table"])
                    for key in inspector.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (index["name"] or "", tuple(map(str, index["column_names"])), index["unique"])
                    for index in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (constraint["name"] or "", tuple(constraint["column_names"]))
                    for constraint in inspector.get_unique_constraints(table)
                ),
            }
        return described
    finally:
        engine.dispose()


def all_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table: sorted(
                    tuple(row) for row in connection.execute(text(f"SELECT * FROM {table}"))
                )
                for table in sorted(inspect(connection).get_table_names())
                if table.startswith("tracker_")
            }
    finally:
        engine.dispose()
