"""The schema's version: upgrading it with the shipped Alembic migrations, and refusing to run on
a database that is behind.

The Alembic configuration is built here in code (as Optuna does), from the migrations that travel
inside the package, so `Tracker(...).upgrade()` works from an installed wheel with no
`alembic.ini` in sight. The tracker keeps its own version table, so it can share a database with
a host application that runs Alembic for its own tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from tracker.errors import SchemaError
from tracker.storage.tables import VERSION_TABLE

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
# Key of the database-wide lock that serialises concurrent upgrades (any stable 63-bit number).
_LOCK_KEY: Final = 0x7472_6163_6B65_72  # "tracker"
_MYSQL_LOCK_NAME: Final = "tracker_schema_upgrade"


def migrations_dir() -> Path:
    """Inside the package in a wheel; at the repository root in a source checkout."""
    for candidate in (_PACKAGE_DIR / "migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError("the tracker's migrations are missing from this installation; reinstall it")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    # The configuration is a ConfigParser: a `%` (an install path like `/opt/50%/`) would be
    # read as interpolation unless doubled. Database URLs never pass through it.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_schema(engine: Engine, schema: str | None = None) -> tuple[str | None, str]:
    """Bring the schema to head. Safe to call from many processes at once, and again and again:
    a database-level lock lets one process migrate while the others wait, then find nothing to do.
    Returns the revisions before and after.
    """
    with upgrade_transaction(engine, schema) as connection:
        before = current_revision(connection)
        command.upgrade(alembic_config(connection), "head")
    return before, head_revision()


@contextmanager
def upgrade_transaction(engine: Engine, schema: str | None = None) -> Iterator[Connection]:
    """A transaction holding the database-wide upgrade lock, committed on leaving. Every path
    that migrates goes through it: `Tracker.upgrade()` and the `alembic` command alike
    (migrations/env.py), so two of them never migrate one database at once.
    """
    # SQLite: the writing transaction (BEGIN IMMEDIATE) is itself the database-wide lock.
    with engine.connect().execution_options(tracker_write=True, tracker_upgrade=True) as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite changes a table by rebuilding it (Alembic's batch mode), which a table
            # others refer to survives only with foreign keys off; the pragma cannot change
            # inside a transaction. The keys are checked before the commit instead.
            _foreign_keys(connection, on=False)
        try:
            with connection.begin():
                _lock(connection)
                if schema is not None:
                    quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
                    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
                yield connection
                if sqlite:
                    _check_foreign_keys(connection)
        finally:
            # Released only once the transaction has ended: given up before the commit, the
            # lock let the next process read the version this one had not committed yet, and
            # migrate again (MySQL's lock is the session's; PostgreSQL's ends with the
            # transaction). A lost connection released it with its session; asking the server
            # again would only hide the real error behind "Can't reconnect until invalid
            # transaction is rolled back".
            if not connection.invalidated:
                _unlock(connection)
            if sqlite and not connection.invalidated:
                _foreign_keys(connection, on=True)


def _foreign_keys(connection: Connection, *, on: bool) -> None:
    # On the driver's cursor: a statement through SQLAlchemy would begin a transaction first.
    cursor = connection.connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    cursor.close()


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise SchemaError(
            f"the migration left rows whose foreign keys point nowhere, for example {broken[0]}; "
            "nothing was changed: please report this"
        )


def _lock(connection: Connection) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif dialect in ("mysql", "mariadb"):
        # DDL commits implicitly on MySQL, so the lock must outlive transactions: GET_LOCK is
        # held by the session until RELEASE_LOCK.
        acquired = connection.execute(
            text("SELECT GET_LOCK(:name, 600)"), {"name": _MYSQL_LOCK_NAME}
        ).scalar()
        if acquired != 1:
            raise SchemaError("timed out after 600 s waiting for another tracker upgrade to finish")


def _unlock(connection: Connection) -> None:
    if connection.dialect.name in ("mysql", "mariadb"):
        connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK_NAME})


def check_current(engine: Engine) -> None:
    """Raise `SchemaError` unless the database is at the schema this code was written for."""
    with engine.connect() as connection:
        check_current_on(connection)


def check_current_on(connection: Connection) -> None:
    """`check_current` through a connection the caller holds, inside its transaction if any (a
    host's, for `apply(..., connection=...)`)."""
    found = current_revision(connection)
    expected = head_revision()
    if found == expected:
        return
    url = connection.engine.url.render_as_string(hide_password=True)
    fix = f"run `tracker --db '{url}' upgrade` (or call Tracker.upgrade())"
    if found is None:
        raise SchemaError(f"the database {url} has no tracker schema yet; {fix}")
    scripts = ScriptDirectory.from_config(alembic_config())
    known = {script.revision for script in scripts.walk_revisions()}
    if found in known:
        raise SchemaError(
            f"the tracker schema in {url} is behind (at revision {found}, this tracker needs "
            f"{expected}); {fix}"
        )
    raise SchemaError(
        f"the tracker schema in {url} is at revision {found}, which this tracker does not know: "
        "a newer tracker migrated it; upgrade the tracker package"
    )
