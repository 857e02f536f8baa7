"""What each backend says the tracker's tables and indexes take: SQLite's `dbstat`,
PostgreSQL's relation sizes after VACUUM ANALYZE, MariaDB's InnoDB index statistics; and the
packing (VACUUM, VACUUM FULL, OPTIMIZE TABLE) that gives the least the same rows take."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from tracker import storage

TABLES: Final = (storage.calls.name, storage.events.name, storage.transfers.name)


@dataclass(frozen=True)
class Relation:
    """A table's rows, or one of its indexes: the bytes of its pages, as written and packed."""

    table: str
    name: str  # the table's own name for its rows; the index's (or constraint's) name
    entries: int  # rows it holds: fewer than its table's for a partial index
    condition: str | None  # a partial index's condition
    written: int
    packed: int = 0


# (table, name as the backend says) -> bytes
Sizes = dict[tuple[str, str], int]


def _sqlite_sizes(path: str) -> tuple[Sizes, dict[tuple[str, str], str | None], list[str]]:
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
        sizes: Sizes = {}
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


def _postgresql_sizes(connection: Connection) -> tuple[Sizes, dict[tuple[str, str], str | None]]:
    connection.execute(text(f"VACUUM ANALYZE {', '.join(TABLES)}"))
    sizes: Sizes = {}
    conditions: dict[tuple[str, str], str | None] = {}
    for table, size in connection.execute(_POSTGRESQL_TABLES, {"tables": list(TABLES)}):
        sizes[(table, table)] = int(size)
    for table, index, size, condition in connection.execute(
        _POSTGRESQL_INDEXES, {"tables": list(TABLES)}
    ):
        sizes[(table, index)] = int(size)
        conditions[(table, index)] = condition
    return sizes, conditions


def _mariadb_sizes(connection: Connection) -> Sizes:
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
    sizes: Sizes = {}
    for table, index, pages in found:
        if table in TABLES:
            sizes[(table, table if index == "PRIMARY" else index)] = int(pages) * page_size
    return sizes


def pack(backend: str, url: str) -> None:
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


def read_sizes(
    backend: str, url: str
) -> tuple[Sizes, dict[tuple[str, str], str | None], list[str]]:
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


def server_version(engine: Engine) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            return str(connection.exec_driver_sql("SELECT sqlite_version()").scalar_one())
        if engine.dialect.name == "postgresql":
            return str(connection.exec_driver_sql("SHOW server_version").scalar_one())
        return str(connection.exec_driver_sql("SELECT VERSION()").scalar_one())


def table_counts(connection: Connection) -> tuple[dict[str, int], float, float]:
    rows = {
        table.name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
        for table in (storage.calls, storage.events, storage.transfers)
    }
    body = connection.execute(select(func.avg(func.length(storage.events.c.body)))).scalar()
    history = connection.execute(select(func.avg(func.length(storage.calls.c.history)))).scalar()
    return rows, float(body or 0), float(history or 0)


def index_entries(
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


def relation_order(item: tuple[tuple[str, str], int]) -> tuple[int, int, str]:
    (table, name), _size = item
    kind = 0 if name == table else 1 if name.startswith("pk_") else 2
    return TABLES.index(table), kind, name
