"""How the tables grow: bytes per call, per delivery and per transfer attempt, and what each
index costs, measured on each backend.

    python -m benchmarks.growth                                   # 20,000 calls on all three
    python -m benchmarks.growth --calls 2000 --backends sqlite

Run from the repository root: a development tool, kept out of the wheel. The calls come from
the realistic stream of `tracker.testing` (the benchmark's too): every callback of each call
(live ones, legs, transfer attempts), in arrival order, with a share of the deliveries sent
again a few deliveries later, byte for byte, as Bandwidth retries. They are applied with
`apply_many` to a database of their own, migrated by `Tracker.upgrade()`, and each table and
index is then measured where the backend keeps its sizes:

- SQLite: the `dbstat` virtual table (the pages of each b-tree, overflow pages included);
- PostgreSQL: after VACUUM ANALYZE, each table's heap and TOAST (`pg_relation_size`,
  `pg_total_relation_size` of its TOAST table) and each index (`pg_relation_size`);
- MariaDB: after ANALYZE TABLE, the pages InnoDB's persistent statistics give each index
  (`mysql.innodb_index_stats`, stat `size`); a table's rows live in its primary key's b-tree.

Each twice: *as written* (the pages as the inserts and compare-and-set updates left them, free
space included: what a running server holds) and *packed* (after VACUUM, VACUUM FULL or OPTIMIZE
TABLE: the least the same rows take). On SQLite the write cost of each index is counted too: the
WAL pages a delivery writes (one commit each) with every index, and with that one index dropped
from a scratch copy of the schema. Pages are a count, the same on any machine.

This module makes the workload and the scratch databases, runs the whole and reads the command
line; `sizes` reads what each backend says its tables and indexes take, `growth_report` holds the
figures and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from benchmarks import wal
from benchmarks.growth_report import BATCH, BackendFigures, IndexWrites, Report, describe_machine
from benchmarks.sizes import (
    TABLES,
    Relation,
    index_entries,
    pack,
    read_sizes,
    relation_order,
    server_version,
    table_counts,
)
from tracker.testing import realistic_bodies, with_retries
from tracker.tracker import Tracker

BACKENDS: Final = ("sqlite", "postgresql", "mariadb")
# The servers the tests use, under the same variables.
SERVERS: Final = {
    "postgresql": os.environ.get(
        "TRACKER_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get(
        "TRACKER_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
    ),
}
SAMPLE: Final = 300  # deliveries whose WAL pages are counted, as the benchmark's WAL count


# --- the workload ------------------------------------------------------------------------------


def _call_ids(body: bytes) -> set[str]:
    document = json.loads(body)
    return {str(x) for x in (document.get("callId"), document.get("parentCallId")) if x}


def workload(calls: int, seed: int, repeated: float) -> list[bytes]:
    """The first deliveries of the realistic stream that tell of `calls` calls (legs and the
    parents they name counted), in arrival order, with a share `repeated` of them delivered
    again 1 to 20 deliveries later, byte for byte, as Bandwidth retries a callback."""
    count = 2 * calls + 100
    while True:
        seen: set[str] = set()
        taken: list[bytes] = []
        for body in realistic_bodies(count, seed):
            ids = _call_ids(body)
            if len(seen | ids) > calls and taken:
                break
            seen |= ids
            taken.append(body)
        else:
            count *= 2  # the stream ended before it told of enough calls
            continue
        break
    return with_retries(taken, repeated, seed)


def _apply(tracker: Tracker, bodies: Sequence[bytes]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for start in range(0, len(bodies), BATCH):
        outcomes.update(r.outcome.value for r in tracker.apply_many(bodies[start : start + BATCH]))
    return outcomes


# --- scratch databases -------------------------------------------------------------------------


@contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """An empty database of its own on `backend`, dropped afterwards (as the tests make them)."""
    name = f"tracker_growth_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        path = directory / f"{name}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
    quoted = f'"{name}"' if backend == "postgresql" else f"`{name}`"
    try:
        with admin.connect() as connection:
            suffix = "" if backend == "postgresql" else " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            connection.execute(text(f"CREATE DATABASE {quoted}{suffix}"))
        try:
            yield (
                make_url(SERVERS[backend]).set(database=name).render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as connection:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                connection.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
    finally:
        admin.dispose()


# --- what each backend says its tables and indexes take ----------------------------------------


def measure_backend(backend: str, bodies: Sequence[bytes], directory: Path) -> BackendFigures:
    """Apply `bodies` to a fresh database on `backend` and measure its tables and indexes."""
    with fresh_database(backend, directory) as url:
        with Tracker(url) as tracker:
            tracker.upgrade()
            outcomes = _apply(tracker, bodies)
            version = server_version(tracker.engine)
            with tracker.engine.connect() as connection:
                rows, body_bytes, history_bytes = table_counts(connection)
            # Measured with no transaction of the tracker's open: VACUUM keeps what one sees.
            written, conditions, notes = read_sizes(backend, url)
            with tracker.engine.connect() as connection:
                entries = index_entries(connection, conditions)
        pack(backend, url)
        packed, _conditions, packed_notes = read_sizes(backend, url)
    relations = [
        Relation(
            table=table,
            name=name,
            entries=entries.get((table, name), rows[table]),
            condition=conditions.get((table, name)),
            written=size,
            packed=packed.get((table, name), 0),
        )
        for (table, name), size in sorted(written.items(), key=relation_order)
    ]
    notes = [f"as written: {note}" for note in notes] + [f"packed: {n}" for n in packed_notes]
    return BackendFigures(
        backend, version, rows, dict(outcomes), body_bytes, history_bytes, relations, notes
    )


# --- what an index costs each delivery: WAL pages on SQLite ------------------------------------


def _secondary_indexes(path: str) -> list[str]:
    """The indexes the migrations create with CREATE INDEX: none backs a constraint, so dropping
    one from a scratch database changes what a delivery writes, not what it decides."""
    with sqlite3.connect(path) as connection:
        found = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            f" AND tbl_name IN ({', '.join('?' for _ in TABLES)}) ORDER BY tbl_name, name",
            TABLES,
        )
        return [str(name) for (name,) in found]


def _wal_pages(
    directory: Path, before: Sequence[bytes], counted: Sequence[bytes], drop: str | None
) -> tuple[float, int, list[str]]:
    """WAL frames per delivery of `counted`, each applied alone, after `before` was applied in
    batches, on a fresh SQLite file without the index `drop`; with the page size and the
    secondary indexes the schema had."""
    with fresh_database("sqlite", directory) as url:
        path = make_url(url).database
        assert path
        with Tracker(url) as tracker:
            tracker.upgrade()
            indexes = _secondary_indexes(path)
            if drop is not None:
                with tracker.engine.begin() as connection:
                    connection.exec_driver_sql(f"DROP INDEX {drop}")
            _apply(tracker, before)
        # A tracker of its own for the count: the first keeps writer connections made before
        # the listener, which would checkpoint the WAL while it is counted.
        with Tracker(url) as tracker:
            # After the tracker's own connect listeners, so it runs after their pragmas; the
            # pool is emptied so that no connection made before it is used.
            event.listen(tracker.engine, "connect", wal.no_auto_checkpoint)
            tracker.engine.dispose()
            with tracker.engine.connect() as connection:
                wal.check_no_auto_checkpoint(
                    connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
                )
                page_size = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())
            with tracker.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as idle:
                # Let one small write start the WAL, so that the count begins on a WAL with a
                # header: the first commit on an empty one writes it (and new salts).
                idle.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                idle.exec_driver_sql("PRAGMA user_version = 1")
            start = wal.mark(path)
            for body in counted:
                tracker.apply(body)
            frames = wal.frames_between(start, wal.mark(path))
    return frames / len(counted), page_size, indexes


def measure_index_writes(bodies: Sequence[bytes], directory: Path, sample: int) -> IndexWrites:
    """The last `sample` deliveries of the workload counted, after the others, once with every
    index and once without each secondary index."""
    counted = min(sample, max(len(bodies) // 2, 1))
    before, tail = bodies[:-counted], bodies[-counted:]
    every, page_size, indexes = _wal_pages(directory, before, tail, None)
    without = {index: _wal_pages(directory, before, tail, index)[0] for index in indexes}
    return IndexWrites(len(tail), page_size, every, without)


# --- the run -----------------------------------------------------------------------------------


def run(
    backends: Sequence[str],
    *,
    calls: int,
    seed: int,
    repeated: float,
    sample: int,
    directory: Path,
    index_writes: bool = True,
    progress: Any = lambda _line: None,
) -> Report:
    bodies = workload(calls, seed, repeated)
    figures = []
    for backend in backends:
        progress(f"{backend}: applying {len(bodies):,} deliveries and measuring")
        figures.append(measure_backend(backend, bodies, directory))
    writes = None
    if index_writes and "sqlite" in backends:
        progress("sqlite: counting WAL pages per delivery with and without each index")
        writes = measure_index_writes(bodies, directory, sample)
    return Report(calls, seed, repeated, len(bodies), describe_machine(), figures, writes)


def _backends(value: str) -> list[str]:
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in BACKENDS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"expected some of {','.join(BACKENDS)}, separated by commas; not {value!r}"
        )
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.growth",
        description="Measure the bytes each call, delivery, transfer attempt and index takes on "
        "each backend, and what each index costs a delivery in pages written (SQLite).",
    )
    parser.add_argument("--calls", type=int, default=20_000, metavar="N")
    parser.add_argument(
        "--backends",
        type=_backends,
        default=list(BACKENDS),
        metavar="sqlite,postgresql,mariadb",
        help="PostgreSQL and MariaDB at TRACKER_TEST_POSTGRESQL_URL / TRACKER_TEST_MARIADB_URL "
        "(the tests' servers), which must let it create and drop databases tracker_growth_*",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeated",
        type=float,
        default=0.01,
        metavar="SHARE",
        help="share of the deliveries sent twice, as Bandwidth's retries (default 0.01)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=SAMPLE,
        help="deliveries whose WAL pages are counted, on SQLite",
    )
    parser.add_argument(
        "--no-index-writes", action="store_true", help="skip the WAL count of each index"
    )
    parser.add_argument(
        "--sqlite-dir",
        type=Path,
        help="where the SQLite files go (default: the system's temporary directory)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.sample < 1 or not 0 <= args.repeated <= 1:
        parser.error("--calls and --sample must be positive and --repeated between 0 and 1")
    with tempfile.TemporaryDirectory(prefix="tracker-growth-", dir=args.sqlite_dir) as directory:
        report = run(
            args.backends,
            calls=args.calls,
            seed=args.seed,
            repeated=args.repeated,
            sample=args.sample,
            directory=Path(directory),
            index_writes=not args.no_index_writes,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    print(json.dumps(report.as_json(), indent=2) if args.json else report.as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
