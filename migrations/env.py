"""Alembic environment of the tracker's schema.

Run two ways: by `Tracker.upgrade()`, which hands over an open connection (and holds the
database-wide upgrade lock), or by the `alembic` command at the repository root, which reads the
database URL from TRACKER_DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from tracker.storage import VERSION_TABLE, Base, create_engine


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
    url = os.environ.get("TRACKER_DATABASE_URL", "sqlite:///tracker.db")
    engine = create_engine(url)
    with engine.connect().execution_options(tracker_write=True) as connection:
        _run(connection)
        connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the tracker's migrations run online only: set TRACKER_DATABASE_URL")
run_migrations_online()
