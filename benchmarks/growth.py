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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from benchmarks import wal
from tracker import storage
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
TABLES: Final = (storage.calls.name, storage.events.name, storage.transfers.name)
BATCH: Final = 500  # deliveries per apply_many, as the benchmark's default
SAMPLE: Final = 300  # deliveries whose WAL pages are counted, as the benchmark's WAL count
PER_DAY: Final = 1_000_000  # deliveries a day, for the retention arithmetic
RETAINED_DAYS: Final = 90
GB: Final = 1e9


# --- the workload -----------------------------------------------------------------------------


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


# --- scratch databases ------------------------------------------------------------------------


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


# --- what each backend says its tables and indexes take ---------------------------------------


@dataclass(frozen=True)
class Relation:
    """A table's rows, or one of its indexes: the bytes of its pages, as written and packed."""

    table: str
    name: str  # the table's own name for its rows; the index's (or constraint's) name
    entries: int  # rows it holds: fewer than its table's for a partial index
    condition: str | None  # a partial index's condition
    written: int
    packed: int = 0


@dataclass
class BackendFigures:
    backend: str
    version: str
    rows: dict[str, int]
    outcomes: dict[str, int]
    body_bytes: float  # mean length of a logged body
    history_bytes: float  # mean length of a call's history (JSON text in its row)
    relations: list[Relation]
    notes: list[str] = field(default_factory=list)

    def bytes_of(self, table: str, *, packed: bool = False) -> int:
        return sum(
            relation.packed if packed else relation.written
            for relation in self.relations
            if relation.table == table
        )

    def per_row(self, table: str, *, packed: bool = False) -> float:
        return self.bytes_of(table, packed=packed) / max(self.rows[table], 1)

    @property
    def per_call(self) -> float:
        return self.per_row(storage.calls.name)

    @property
    def per_delivery(self) -> float:
        return self.per_row(storage.events.name)

    @property
    def per_transfer(self) -> float:
        return self.per_row(storage.transfers.name)

    @property
    def everything_per_call(self) -> float:
        """Every table's bytes over the calls: what a call costs with its log and attempts."""
        return sum(self.bytes_of(table) for table in TABLES) / max(self.rows[TABLES[0]], 1)

    def per_day(self, deliveries: int) -> dict[str, float]:
        """Bytes a day of each table at `deliveries` a day, in this workload's proportions."""
        scale = deliveries / max(self.rows[storage.events.name], 1)
        return {table: self.bytes_of(table) * scale for table in TABLES}


# (table, name as the backend says) -> bytes
_Sizes = dict[tuple[str, str], int]


def _sqlite_sizes(path: str) -> tuple[_Sizes, dict[tuple[str, str], str | None], list[str]]:
    """Bytes of each b-tree from `dbstat`; a constraint's automatic index gets the constraint's
    name (`pk_<table>`, `uq_<table>_<columns>`), as on the other backends."""
    with sqlite3.connect(path) as connection:
        tables = dict(
            connection.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"
            ).fetchall()
        )
        names: dict[str, str] = {}
        conditions: dict[tuple[str, str], str | None] = {}
        for table in TABLES:
            for _seq, index, _unique, origin, partial in connection.execute(
                f"PRAGMA index_list({table})"
            ):
                columns = [row[2] for row in connection.execute(f"PRAGMA index_info({index})")]
                names[index] = {
                    "pk": f"pk_{table}",
                    "u": f"uq_{table}_{'_'.join(columns)}",
                }.get(origin, index)
                condition = None
                if partial:
                    sql = connection.execute(
                        "SELECT sql FROM sqlite_master WHERE name = ?", (index,)
                    ).fetchone()[0]
                    condition = sql.split(" WHERE ", 1)[1].strip()
                conditions[(table, names[index])] = condition
        sizes: _Sizes = {}
        for name, size in connection.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            owner = str(tables.get(name))
            if owner in TABLES:
                sizes[(owner, names.get(name, name))] = int(size)
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    notes = [f"file {pages * page_size:,} bytes, {free:,} of its {pages:,} pages free"]
    return sizes, conditions, notes


_POSTGRESQL_TABLES: Final = text(
    "SELECT c.relname, pg_relation_size(c.oid)"
    " + COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0)"
    " FROM pg_class c WHERE c.relname = ANY(:tables) AND c.relkind = 'r'"
)
_POSTGRESQL_INDEXES: Final = text(
    "SELECT t.relname, x.relname, pg_relation_size(x.oid), pg_get_expr(i.indpred, i.indrelid)"
    " FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid"
    " WHERE t.relname = ANY(:tables)"
)


def _postgresql_sizes(connection: Connection) -> tuple[_Sizes, dict[tuple[str, str], str | None]]:
    connection.execute(text(f"VACUUM ANALYZE {', '.join(TABLES)}"))
    sizes: _Sizes = {}
    conditions: dict[tuple[str, str], str | None] = {}
    for table, size in connection.execute(_POSTGRESQL_TABLES, {"tables": list(TABLES)}):
        sizes[(table, table)] = int(size)
    for table, index, size, condition in connection.execute(
        _POSTGRESQL_INDEXES, {"tables": list(TABLES)}
    ):
        sizes[(table, index)] = int(size)
        conditions[(table, index)] = condition
    return sizes, conditions


def _mariadb_sizes(connection: Connection) -> _Sizes:
    """InnoDB's pages of each index (stat `size`, every page its segments hold, exact rather
    than sampled); the primary key's b-tree is the table's rows."""
    list(connection.execute(text(f"ANALYZE TABLE {', '.join(TABLES)}")))
    page_size = int(connection.execute(text("SELECT @@innodb_page_size")).scalar_one())
    found = connection.execute(
        text(
            "SELECT table_name, index_name, stat_value FROM mysql.innodb_index_stats"
            " WHERE database_name = DATABASE() AND stat_name = 'size'"
        )
    )
    sizes: _Sizes = {}
    for table, index, pages in found:
        if table in TABLES:
            sizes[(table, table if index == "PRIMARY" else index)] = int(pages) * page_size
    return sizes


def _pack(backend: str, url: str) -> None:
    """Rewrite every table and index as tightly as the backend writes them."""
    if backend == "sqlite":
        path = make_url(url).database
        assert path
        with sqlite3.connect(path, isolation_level=None) as connection:
            connection.execute("VACUUM")
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if backend == "postgresql":
                connection.execute(text(f"VACUUM FULL {', '.join(TABLES)}"))
            else:
                list(connection.execute(text(f"OPTIMIZE TABLE {', '.join(TABLES)}")))
    finally:
        engine.dispose()


def _sizes(backend: str, url: str) -> tuple[_Sizes, dict[tuple[str, str], str | None], list[str]]:
    if backend == "sqlite":
        path = make_url(url).database
        assert path
        return _sqlite_sizes(path)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if backend == "postgresql":
                return (*_postgresql_sizes(connection), [])
            return _mariadb_sizes(connection), {}, []
    finally:
        engine.dispose()


def _server_version(engine: Engine) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            return str(connection.exec_driver_sql("SELECT sqlite_version()").scalar_one())
        if engine.dialect.name == "postgresql":
            return str(connection.exec_driver_sql("SHOW server_version").scalar_one())
        return str(connection.exec_driver_sql("SELECT VERSION()").scalar_one())


def _counts(connection: Connection) -> tuple[dict[str, int], float, float]:
    rows = {
        table.name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
        for table in (storage.calls, storage.events, storage.transfers)
    }
    body = connection.execute(select(func.avg(func.length(storage.events.c.body)))).scalar()
    history = connection.execute(select(func.avg(func.length(storage.calls.c.history)))).scalar()
    return rows, float(body or 0), float(history or 0)


def _entries(
    connection: Connection, conditions: dict[tuple[str, str], str | None]
) -> dict[tuple[str, str], int]:
    """The rows each partial index holds: those its condition (as the backend says it) keeps."""
    entries: dict[tuple[str, str], int] = {}
    for (table, name), condition in conditions.items():
        if condition is not None:
            query = select(func.count()).select_from(storage.Base.metadata.tables[table])
            entries[(table, name)] = int(
                connection.execute(query.where(text(condition))).scalar_one()
            )
    return entries


def measure_backend(backend: str, bodies: Sequence[bytes], directory: Path) -> BackendFigures:
    """Apply `bodies` to a fresh database on `backend` and measure its tables and indexes."""
    with fresh_database(backend, directory) as url:
        with Tracker(url) as tracker:
            tracker.upgrade()
            outcomes = _apply(tracker, bodies)
            version = _server_version(tracker.engine)
            with tracker.engine.connect() as connection:
                rows, body_bytes, history_bytes = _counts(connection)
            # Measured with no transaction of the tracker's open: VACUUM keeps what one sees.
            written, conditions, notes = _sizes(backend, url)
            with tracker.engine.connect() as connection:
                entries = _entries(connection, conditions)
        _pack(backend, url)
        packed, _conditions, packed_notes = _sizes(backend, url)
    relations = [
        Relation(
            table=table,
            name=name,
            entries=entries.get((table, name), rows[table]),
            condition=conditions.get((table, name)),
            written=size,
            packed=packed.get((table, name), 0),
        )
        for (table, name), size in sorted(written.items(), key=_relation_order)
    ]
    notes = [f"as written: {note}" for note in notes] + [f"packed: {n}" for n in packed_notes]
    return BackendFigures(
        backend, version, rows, dict(outcomes), body_bytes, history_bytes, relations, notes
    )


def _relation_order(item: tuple[tuple[str, str], int]) -> tuple[int, int, str]:
    (table, name), _size = item
    kind = 0 if name == table else 1 if name.startswith("pk_") else 2
    return TABLES.index(table), kind, name


# --- what an index costs each delivery: WAL pages on SQLite -----------------------------------


@dataclass(frozen=True)
class IndexWrites:
    """WAL pages (frames) a delivery writes, one commit each, with every index and without one."""

    deliveries: int  # the deliveries counted, after the rest of the workload was applied
    page_size: int
    with_every_index: float
    without: dict[str, float]  # index -> pages per delivery once it is dropped

    def cost(self, index: str) -> float:
        return self.with_every_index - self.without[index]


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


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    calls_asked: int
    seed: int
    repeated: float
    deliveries: int
    machine: dict[str, str]
    backends: list[BackendFigures]
    index_writes: IndexWrites | None

    def as_json(self) -> dict[str, Any]:
        return {
            "calls_asked": self.calls_asked,
            "seed": self.seed,
            "repeated": self.repeated,
            "deliveries": self.deliveries,
            "machine": self.machine,
            "backends": [
                {
                    **asdict(figures),
                    "per_call": figures.per_call,
                    "per_delivery": figures.per_delivery,
                    "per_transfer": figures.per_transfer,
                    "everything_per_call": figures.everything_per_call,
                    "per_day": {
                        "deliveries": PER_DAY,
                        "bytes": figures.per_day(PER_DAY),
                        "calls": PER_DAY
                        * figures.rows[storage.calls.name]
                        / max(figures.rows[storage.events.name], 1),
                    },
                }
                for figures in self.backends
            ],
            "index_writes": None
            if self.index_writes is None
            else {
                **asdict(self.index_writes),
                "cost": {
                    index: self.index_writes.cost(index) for index in self.index_writes.without
                },
            },
        }

    def as_text(self) -> str:
        """Markdown tables, ready to paste into docs/growth.md."""
        lines = [
            f"{self.deliveries:,} deliveries telling of {self.calls_asked:,} calls (seed "
            f"{self.seed}; {self.repeated:.0%} of the deliveries sent twice), applied with "
            f"apply_many({BATCH})",
            "machine: " + ", ".join(f"{key} {value}" for key, value in self.machine.items()),
            "",
            "| backend | per call | per delivery | mean body | per transfer attempt "
            "| all tables per call |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for figures in self.backends:
            lines.append(
                f"| {figures.backend} {figures.version} | {figures.per_call:,.0f} "
                f"| {figures.per_delivery:,.0f} | {figures.body_bytes:,.0f} "
                f"| {figures.per_transfer:,.0f} | {figures.everything_per_call:,.0f} |"
            )
        lines += [
            "",
            "Bytes as written (packed in brackets) per row of the table, for its rows and for "
            "each index:",
            "",
            "| table / index | rows held | " + " | ".join(f.backend for f in self.backends) + " |",
            "|---|---:|" + "---:|" * len(self.backends),
        ]
        lines += self._relation_lines()
        if any(f.backend == "mariadb" for f in self.backends):
            lines += ["", "MariaDB has no partial indexes: each of its indexes holds every row."]
        first = self.backends[0] if self.backends else None
        if first is not None:
            lines += ["", "Rows: " + ", ".join(f"{t} {first.rows[t]:,}" for t in TABLES)]
        for figures in self.backends:
            outcomes = ", ".join(f"{k} {n:,}" for k, n in sorted(figures.outcomes.items()))
            extra = "; ".join(figures.notes)
            lines.append(
                f"{figures.backend}: outcomes {outcomes}; mean history "
                f"{figures.history_bytes:,.0f} bytes per call" + (f"; {extra}" if extra else "")
            )
        if first is not None:
            rows = {table: PER_DAY * first.rows[table] / first.rows[TABLES[1]] for table in TABLES}
            lines += [
                "",
                f"At {PER_DAY:,} deliveries a day ({rows[TABLES[0]]:,.0f} calls and "
                f"{rows[TABLES[2]]:,.0f} transfer attempts in this workload's proportions), "
                "bytes as written:",
                "",
                "| backend | log a day | calls a day | transfer attempts a day "
                f"| log kept {RETAINED_DAYS} days | calls and attempts kept a year |",
                "|---|---:|---:|---:|---:|---:|",
            ]
        for figures in self.backends:
            day = figures.per_day(PER_DAY)
            log, calls, attempts = (day[table] for table in (TABLES[1], TABLES[0], TABLES[2]))
            lines.append(
                f"| {figures.backend} | {log / GB:.2f} GB | {calls / GB:.2f} GB "
                f"| {attempts / GB:.3f} GB | {RETAINED_DAYS * log / GB:.0f} GB "
                f"| {365 * (calls + attempts) / GB:.0f} GB |"
            )
        if self.index_writes is not None:
            writes = self.index_writes
            lines += [
                "",
                f"SQLite WAL pages ({writes.page_size:,} bytes) per delivery, one commit each, "
                f"over the last {writes.deliveries} deliveries: {writes.with_every_index:.2f} "
                "with every index",
                "",
                "| index dropped | pages per delivery | the index's share | in bytes |",
                "|---|---:|---:|---:|",
            ]
            for index, pages in writes.without.items():
                share = writes.cost(index)
                lines.append(
                    f"| {index} | {pages:.2f} | {share:+.2f} | {share * writes.page_size:+,.0f} |"
                )
        return "\n".join(lines)

    def _relation_lines(self) -> list[str]:
        keys: dict[tuple[str, str], Relation] = {}
        for figures in self.backends:
            for relation in figures.relations:
                # The first backend that names a partial index's condition says it.
                held = keys.get((relation.table, relation.name))
                if held is None or (held.condition is None and relation.condition is not None):
                    keys[(relation.table, relation.name)] = relation
        lines = []
        for (table, name), relation in sorted(
            keys.items(), key=lambda item: _relation_order((item[0], 0))
        ):
            label = f"{name} (rows)" if name == table else name
            if relation.condition is not None:
                label += f" where {relation.condition}"
            cells = []
            for figures in self.backends:
                mine = next(
                    (r for r in figures.relations if (r.table, r.name) == (table, name)), None
                )
                rows = max(figures.rows[table], 1)
                cells.append(
                    "in rows"
                    if mine is None
                    else f"{mine.written / rows:,.1f} ({mine.packed / rows:,.1f})"
                )
            lines.append(f"| {label} | {relation.entries:,} | {' | '.join(cells)} |")
        return lines


def describe_machine() -> dict[str, str]:
    machine = {"platform": platform.platform(), "python": platform.python_version()}
    for package in ("tracker", "sqlalchemy", "psycopg", "pymysql"):
        with suppress(metadata.PackageNotFoundError):
            machine[package] = metadata.version(package)
    return machine


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
