"""One storage contract, proven on every backend.

Every test that takes the `database_url` (or `tracker`) fixture runs once per backend: SQLite
always, PostgreSQL and MariaDB when their servers answer. Each test gets a database of its own,
so runs never see each other's rows. Under CI (`CI` set), a server that does not answer fails the
run instead of skipping its tests.

Migrating a database takes seconds on a server, and most tests want one migrated: a test whose
database is migrated before anything else touches it (the `tracker`, `two_trackers` and `serve`
fixtures) gets one migrated for the run instead. On SQLite that is a copy of a file migrated
once. On PostgreSQL and MariaDB migrated databases are kept in a pool: one goes back to the pool
only when no session is left in it, its schema (tables, columns, keys, indexes, views, triggers,
routines, the schema version) is exactly the migrated one, and, once its tables are emptied and
its sequences or auto-increment counters set back to their start, it reads exactly as a newly
migrated one does; otherwise it is dropped. A test that asks for `database_url` alone still gets
an empty database, created for it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.http_server import Server, migrate
from tests.http_support import BODY_TIMEOUT, CREDENTIALS, OLD
from tracker import Event, Tracker
from tracker._fake_bandwidth import FakeBandwidth

SERVERS = {
    "postgresql": os.environ.get(
        "TRACKER_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get(
        "TRACKER_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
    ),
}
BACKENDS = ("sqlite", *SERVERS)

# The public test kit's fixtures, as a host's suite enables them: `sqlite_tracker` is a tracker on
# a migrated SQLite database of the test's own, for behaviour that does not depend on the backend.
pytest_plugins = ["tracker.testing"]

_reachable: dict[str, str | None] = {}


def _server_problem(backend: str) -> str | None:
    """None when the server answers, else why not (checked once per run)."""
    if backend not in _reachable:
        try:
            engine = create_engine(SERVERS[backend])
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            _reachable[backend] = None
        except Exception as error:
            _reachable[backend] = f"{backend} at {SERVERS[backend]} is not answering: {error}"
    return _reachable[backend]


def _require(backend: str) -> None:
    if backend == "sqlite":
        return
    problem = _server_problem(backend)
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem} (CI must test every backend; .ci/run starts the servers)")
    pytest.skip(problem)


def _url_of(backend: str, name: str) -> str:
    return make_url(SERVERS[backend]).set(database=name).render_as_string(hide_password=False)


def _new_name() -> str:
    return f"tracker_test_{uuid.uuid4().hex[:16]}"


def _create(admin: Engine, backend: str, name: str) -> None:
    with admin.connect() as connection:
        if backend == "postgresql":
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        else:
            connection.execute(
                text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            )


def _drop(admin: Engine, backend: str, name: str) -> None:
    with admin.connect() as connection:
        if backend == "postgresql":
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))


def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Create an empty database on `backend`, yield its URL, drop it afterwards."""
    _require(backend)
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracker.db'}"
        return
    name = _new_name()
    admin = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
    _create(admin, backend, name)
    try:
        yield _url_of(backend, name)
    finally:
        _drop(admin, backend, name)
        admin.dispose()


def _emptied(empty: Callable[[str], bool], name: str) -> bool:
    """Whether `empty` made database `name` as good as new; False too when it could not read it
    (a test dropped a table, say): such a database is dropped, never used again."""
    try:
        return empty(name)
    except Exception:
        return False


# MariaDB writes the next auto-increment value into SHOW CREATE TABLE once it is past 1.
_AUTO_INCREMENT = re.compile(r" AUTO_INCREMENT=\d+")


class MigratedDatabases:
    """Migrated databases for the tests, each migrated once and used again (see the top)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._admins: dict[str, Engine] = {}
        self._sqlite_template: Path | None = None
        self._postgresql_schema: dict[str, str] | None = None
        self._postgresql_pool: list[str] = []
        self._postgresql_made: set[str] = set()
        self._mariadb_schema: dict[str, str] | None = None
        self._mariadb_pool: list[str] = []
        self._mariadb_made: set[str] = set()

    def _admin(self, backend: str) -> Engine:
        if backend not in self._admins:
            self._admins[backend] = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
        return self._admins[backend]

    def database(self, backend: str, tmp_path: Path) -> Iterator[str]:
        """A migrated database of its own on `backend`: yield its URL, give it up afterwards."""
        _require(backend)
        if backend == "sqlite":
            yield self._sqlite(tmp_path)
        elif backend == "postgresql":
            yield from self._postgresql()
        else:
            yield from self._mariadb()

    def _sqlite(self, tmp_path: Path) -> str:
        if self._sqlite_template is None:
            template = self._directory / "sqlite" / "tracker.db"
            template.parent.mkdir()
            migrate(f"sqlite:///{template}")
            # Closed cleanly, SQLite leaves no journal beside the file: the file is the database.
            assert [path.name for path in template.parent.iterdir()] == ["tracker.db"]
            self._sqlite_template = template
        path = tmp_path / "tracker.db"
        shutil.copyfile(self._sqlite_template, path)
        return f"sqlite:///{path}"

    def _postgresql(self) -> Iterator[str]:
        admin = self._admin("postgresql")
        if self._postgresql_pool:
            name = self._postgresql_pool.pop()
        else:
            name = _new_name()
            self._postgresql_made.add(name)
            _create(admin, "postgresql", name)
            migrate(_url_of("postgresql", name))
            if self._postgresql_schema is None:
                self._postgresql_schema = self._postgresql_state(name)
        try:
            yield _url_of("postgresql", name)
        finally:
            if _emptied(self._postgresql_emptied, name):
                self._postgresql_pool.append(name)
            else:
                _drop(admin, "postgresql", name)
                self._postgresql_made.discard(name)

    def _postgresql_state(self, name: str) -> dict[str, str]:
        engine = create_engine(_url_of("postgresql", name), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return _postgresql_state(connection)
        finally:
            engine.dispose()

    def _postgresql_emptied(self, name: str) -> bool:
        """As `_mariadb_emptied`, on PostgreSQL: TRUNCATE ... RESTART IDENTITY empties every
        table and sets every sequence back to its start."""
        with self._admin("postgresql").connect() as connection:
            # A server process outlives its client's disconnect by a moment.
            for _ in range(20):
                others = connection.execute(
                    text(
                        "SELECT COUNT(*) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                ).scalar_one()
                if not others:
                    break
                time.sleep(0.05)
        if others:
            return False
        expected = self._postgresql_schema
        engine = create_engine(_url_of("postgresql", name), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                used = _postgresql_state(connection)
                if expected is None or set(used) != set(expected):
                    return False
                if any(
                    used[key] != expected[key]
                    for key in expected
                    if not key.startswith(("rows:", "sequence:"))
                ):
                    return False
                tables = [key.partition(":")[2] for key in expected if key.startswith("rows:")]
                emptied = [
                    table for table in tables if not table.endswith("tracker_alembic_version")
                ]
                connection.execute(text(f"TRUNCATE {', '.join(emptied)} RESTART IDENTITY"))
                connection.commit()
                return _postgresql_state(connection) == expected
        finally:
            engine.dispose()

    def _mariadb(self) -> Iterator[str]:
        admin = self._admin("mariadb")
        if self._mariadb_pool:
            name = self._mariadb_pool.pop()
        else:
            name = _new_name()
            self._mariadb_made.add(name)
            _create(admin, "mariadb", name)
            migrate(_url_of("mariadb", name))
            if self._mariadb_schema is None:
                with admin.connect() as connection:
                    self._mariadb_schema = _mariadb_state(connection, name)
        try:
            yield _url_of("mariadb", name)
        finally:
            if _emptied(self._mariadb_emptied, name):
                self._mariadb_pool.append(name)
            else:
                _drop(admin, "mariadb", name)
                self._mariadb_made.discard(name)

    def _mariadb_emptied(self, name: str) -> bool:
        """Empty a used database back to what migrating a new one gives, when it can be: True
        when it is now exactly that, False when it must be dropped instead."""
        with self._admin("mariadb").connect() as connection:
            others = connection.execute(
                text(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                    " WHERE DB = :name AND ID <> CONNECTION_ID()"
                ),
                {"name": name},
            ).scalar_one()
            if others:
                # A session the test left open could write into the next test's database.
                return False
            used = _mariadb_state(connection, name)
            expected = self._mariadb_schema
            if expected is None or set(used) != set(expected):
                return False
            if any(
                _AUTO_INCREMENT.sub("", used[key]) != expected[key]
                for key in expected
                if not key.startswith("rows:")
            ):
                return False
            connection.execute(text("SET SESSION foreign_key_checks = 0"))
            try:
                for key in expected:
                    kind, _, table = key.partition(":")
                    if kind == "table" and used[key] != expected[key]:
                        # The counter moved on: only TRUNCATE sets it back (an ALTER TABLE of
                        # AUTO_INCREMENT = 1 leaves it where it was on MariaDB).
                        connection.execute(text(f"TRUNCATE TABLE `{name}`.`{table}`"))
                    elif kind == "rows" and used[key] != expected[key]:
                        connection.execute(text(f"DELETE FROM `{name}`.`{table}`"))
            finally:
                connection.execute(text("SET SESSION foreign_key_checks = 1"))
            return _mariadb_state(connection, name) == expected

    def close(self) -> None:
        for name in self._postgresql_made:
            _drop(self._admin("postgresql"), "postgresql", name)
        for name in self._mariadb_made:
            _drop(self._admin("mariadb"), "mariadb", name)
        for admin in self._admins.values():
            admin.dispose()


def _mariadb_state(connection: Connection, name: str) -> dict[str, str]:
    """Everything a test could have changed in database `name`: the definition of the database,
    of each table (its columns, keys, checks, options and next auto-increment value), view,
    trigger, routine and event, whether each table holds rows, and the schema version."""
    state: dict[str, str] = {}
    quoted = f"`{name}`"
    state["database"] = (
        connection.execute(text(f"SHOW CREATE DATABASE {quoted}")).all()[0][1].replace(quoted, "")
    )
    for table, kind in connection.execute(text(f"SHOW FULL TABLES FROM {quoted}")).all():
        if kind == "BASE TABLE":
            state[f"table:{table}"] = connection.execute(
                text(f"SHOW CREATE TABLE {quoted}.`{table}`")
            ).all()[0][1]
            state[f"rows:{table}"] = str(
                connection.execute(
                    text(f"SELECT EXISTS (SELECT 1 FROM {quoted}.`{table}`)")
                ).scalar()
            )
        else:
            state[f"{kind}:{table}"] = kind
    for what in ("TRIGGERS", "PROCEDURE STATUS", "FUNCTION STATUS", "EVENTS"):
        where = "WHERE Db = :name" if "STATUS" in what else f"FROM {quoted}"
        rows = connection.execute(text(f"SHOW {what} {where}"), {"name": name}).all()
        state[what] = repr(sorted(tuple(map(str, row)) for row in rows))
    state["version"] = repr(
        connection.execute(text(f"SELECT * FROM {quoted}.tracker_alembic_version")).all()
    )
    return state


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the concurrency figures (workers, deliveries, deliveries per second) in every run."""
    from tests.workers import FIGURES

    if FIGURES:
        terminalreporter.section("concurrency figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def migrated_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedDatabases]:
    databases = MigratedDatabases(tmp_path_factory.mktemp("migrated"))
    yield databases
    databases.close()


# Set while a fixture that migrates the test's database at once asks for it (see the top).
_MIGRATING = pytest.StashKey[bool]()
# The URL `database_url` gave the test when it gave a migrated database.
_MIGRATED = pytest.StashKey[str]()


@pytest.fixture
def database_url(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    migrated_databases: MigratedDatabases,
) -> Iterator[str]:
    """The URL of an empty database of its own, on each backend in turn."""
    if request.node.stash.get(_MIGRATING, False):
        for url in migrated_databases.database(backend, tmp_path):
            request.node.stash[_MIGRATED] = url
            yield url
    else:
        yield from fresh_database(backend, tmp_path)


def _database_to_migrate(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """`database_url`, and whether it is migrated already (when this is the first fixture that
    asks for it)."""
    request.node.stash[_MIGRATING] = True
    try:
        url = str(request.getfixturevalue("database_url"))
    finally:
        del request.node.stash[_MIGRATING]
    return url, request.node.stash.get(_MIGRATED, None) == url


@pytest.fixture
def tracker(backend: str, request: pytest.FixtureRequest) -> Iterator[Tracker]:
    """A tracker on a migrated, empty database of its own, on each backend in turn."""
    url, migrated = _database_to_migrate(request)
    with Tracker(url) as instance:
        if not migrated:
            instance.upgrade()
        yield instance


@pytest.fixture
def two_trackers(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    migrated_databases: MigratedDatabases,
) -> Iterator[tuple[Tracker, Tracker]]:
    """One database fed in order, one fed shuffled, on each backend; each example uses call ids
    of its own, so examples never meet."""
    in_order_url, migrated = _database_to_migrate(request)
    second = tmp_path / "shuffled"
    second.mkdir()
    for shuffled_url in migrated_databases.database(backend, second):
        with Tracker(in_order_url) as in_order, Tracker(shuffled_url) as shuffled:
            if not migrated:
                in_order.upgrade()
            yield in_order, shuffled


# --- the webhook tests' servers (tests/test_http_*.py) -------------------------------------


@pytest.fixture
def serve(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Server]]:
    """Start `tracker serve` on the test's migrated database: `serve(*serve options,
    global_options=(...), credentials=...)`. Every server started is stopped afterwards."""
    database_url, migrated = _database_to_migrate(request)
    if not migrated:
        migrate(database_url)
    started: list[Server] = []

    def start(
        *serve_options: str,
        global_options: Sequence[str] = (),
        credentials: str | None = CREDENTIALS,
    ) -> Server:
        server = Server(
            database_url,
            tmp_path / "server",
            serve_options=("--body-timeout", str(BODY_TIMEOUT), *serve_options),
            global_options=tuple(global_options),
            credentials=credentials,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(auth=OLD, timeout=30.0) as instance:
        yield instance


@pytest.fixture
def log(database_url: str) -> Iterator[Callable[[], list[Event]]]:
    """The event log as the database holds it now, read by a tracker of the test's own."""
    with Tracker(database_url) as reader:
        yield reader.events


# --- Bandwidth's Voice API, faked (tests/test_bandwidth*.py and the sweep's and reconcile's) --

_BANDWIDTH_VARIABLES = (
    "BANDWIDTH_USERNAME",
    "BANDWIDTH_PASSWORD",
    "BANDWIDTH_CLIENT_ID",
    "BANDWIDTH_CLIENT_SECRET",
    "BANDWIDTH_ACCOUNT_ID",
    "TRACKER_BANDWIDTH_API_URL",
)


@pytest.fixture
def bandwidth_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBandwidth]:
    """A fake of Bandwidth's Voice API on loopback, and the environment pointing
    `tracker.bandwidth` at it with HTTP Basic credentials (every other Bandwidth variable
    unset; `monkeypatch.setenv(...)` from `bandwidth_api.environment(oauth=True)` for OAuth2)."""
    with FakeBandwidth() as fake:
        for name in _BANDWIDTH_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in fake.environment().items():
            monkeypatch.setenv(name, value)
        yield fake


# The catalog rows that define what a test could change in a PostgreSQL database, but for the
# rows of its tables and the state of its sequences (read apart, below).
_POSTGRESQL_CATALOG = {
    "database": """
        SELECT datcollate, datctype, datallowconn, datconnlimit,
            (SELECT setconfig::text FROM pg_db_role_setting
             WHERE setdatabase = d.oid AND setrole = 0)
        FROM pg_database d WHERE datname = current_database()""",
    "schemas": "SELECT nspname FROM pg_namespace ORDER BY 1",
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.reloptions::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
        ORDER BY 1, 2""",
    "columns": """
        SELECT table_schema, table_name, column_name, ordinal_position, column_default,
            is_nullable, data_type, udt_name, character_maximum_length, numeric_precision,
            numeric_scale, datetime_precision, collation_name, is_identity, is_generated
        FROM information_schema.columns
        WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2, 4""",
    "indexes": "SELECT schemaname, tablename, indexdef FROM pg_indexes"
    " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
    "constraints": """
        SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2, 3""",
    "triggers": "SELECT tgrelid::regclass::text, pg_get_triggerdef(oid) FROM pg_trigger"
    " WHERE NOT tgisinternal ORDER BY 1, 2",
    "routines": """
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2, 3""",
    "types": """
        SELECT n.nspname, t.typname, t.typtype FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
        ORDER BY 1, 2""",
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "large objects": "SELECT COUNT(*) FROM pg_largeobject_metadata",
}


def _postgresql_state(connection: Connection) -> dict[str, str]:
    """As `_mariadb_state`, for the PostgreSQL database `connection` is in."""
    state = {
        what: repr(connection.execute(text(query)).all())
        for what, query in _POSTGRESQL_CATALOG.items()
    }
    tables = connection.execute(
        text(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'S')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
        )
    ).all()
    for table, kind in tables:
        if kind == "S":
            state[f"sequence:{table}"] = repr(
                connection.execute(text(f"SELECT last_value, is_called FROM {table}")).all()
            )
        else:
            state[f"rows:{table}"] = str(
                connection.execute(text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar()
            )
    state["version"] = repr(connection.execute(text("SELECT * FROM tracker_alembic_version")).all())
    connection.rollback()
    return state
