"""The transactions a PostgreSQL server committed and rolled back in one database, as its
statistics count them (`pg_stat_database.xact_commit`, `xact_rollback`): a transaction that lost
a race and was run again is one rollback there, whoever ran it and however.

A backend publishes its counts when it goes idle at most once a second, else within
`PUBLISH_SECONDS` of going idle, and always when it exits (its connection closed). So the count
before the timed part is read once the warm-up has been idle that long, and the count after it
once every connection to the database has closed. The counts are read through the server's
admin database, so that reading them counts in neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from sqlalchemy.engine import URL

from benchmarks.floor import conninfo

# PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s), and a margin.
PUBLISH_SECONDS: Final = 10.5
EXIT_TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class Counts:
    commits: int
    rollbacks: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.commits - other.commits, self.rollbacks - other.rollbacks)


class ServerTransactions:
    """The counts of the database `database` on the server `admin` connects to."""

    def __init__(self, admin: URL, database: str) -> None:
        self.admin = admin
        self.database = database

    def read(self) -> Counts:
        from psycopg import connect

        with connect(**conninfo(self.admin), autocommit=True) as connection:
            row = connection.execute(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.database,),
            ).fetchone()
        if row is None:
            raise RuntimeError(f"pg_stat_database has no row for {self.database}")
        return Counts(int(row[0]), int(row[1]))

    def read_once_published(self, idle_seconds: float = PUBLISH_SECONDS) -> Counts:
        """The counts, once every connection has been idle `idle_seconds` (call it when they
        are idle): what they did is published by then."""
        time.sleep(idle_seconds)
        return self.read()

    def read_once_closed(self) -> Counts:
        """The counts, once no client's connection to the database is left and the counts
        stopped moving (a backend leaves pg_stat_activity just before it publishes its last
        counts)."""
        from psycopg import connect

        deadline = time.monotonic() + EXIT_TIMEOUT
        with connect(**conninfo(self.admin), autocommit=True) as connection:
            while True:
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND backend_type = 'client backend'",
                    (self.database,),
                ).fetchone()
                if row is None or row[0] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{row[0]} connections to {self.database} still open after "
                        f"{EXIT_TIMEOUT:.0f} s: the run's processes did not close theirs"
                    )
                time.sleep(0.05)
        counts = self.read()
        while True:
            time.sleep(0.2)
            again = self.read()
            if again == counts:
                return counts
            counts = again
