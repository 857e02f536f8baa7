"""Alembic environment of the tracker's schema.

Run two ways: by `Tracker.upgrade()`, which hands over an open connection, or by the `alembic`
command at the repository root, which reads the database URL from TRACKER_DATABASE_URL (never
from the Alembic configuration, whose interpolation would mangle a `%` in it). Both migrate
inside `upgrade_transaction`, which holds the database-wide upgrade lock.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from tracker.schema import upgrade_transaction
from tracker.storage import VERSION_TABLE, Base, create_engine
from tracker.tracker import DEFAULT_DATABASE_URL


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
        # Only the tracker's tables: a shared database holds the host's tables too.
        include_name=lambda name, type_, _parent: (
            type_ != "table" or bool(name and name.startswith("tracker_"))
        ),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name)  # alembic.ini's loggers: say what ran
    url = os.environ.get("TRACKER_DATABASE_URL", DEFAULT_DATABASE_URL)
    # No delivery timeout: a migration may wait for another's lock and rewrite a large table.
    engine = create_engine(url, timeout=None)
    try:
        with upgrade_transaction(engine) as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the tracker's migrations run online only: set TRACKER_DATABASE_URL")
run_migrations_online()
