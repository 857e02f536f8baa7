"""A named lease in the database: of several processes that could run a job (the background
sweep of `tracker serve`), one at a time does.

The guarantees, on SQLite, PostgreSQL and MariaDB alike:

1. At most one holder at a time: taking a lease is a compare-and-set on its row in
   `tracker_leases` (an UPDATE only where it expired or is the taker's own), and the first take
   of a name is an INSERT whose primary key lets one of two concurrent takers win.
2. A lease lasts its `term` from its last take or renewal, then anyone may take it over: a
   holder that died (a `kill -9`, a host lost) blocks the job for at most one term.
3. Only the holder renews or gives up its lease; a holder whose lease was taken over learns it
   at its next renewal (False), and must stop.
4. Time is the database server's clock (`storage.database_now`), read in the same transaction
   as the take: hosts whose clocks disagree still agree on when a lease expires. A holder
   measures its own term by its monotonic clock from the moment it asked (`held`), so that it
   gives up working a little before the database would call the lease expired, never after.

A holder is named `host:pid:random` by default: two processes never share a name, and the name
says which host and process to look at.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import datetime, timedelta
from functools import partial
from typing import Final

from sqlalchemy import Connection, Engine

from tracker import storage
from tracker.reading import database_errors
from tracker.writing import MAX_ATTEMPTS, Writer

# The column widths of `tracker_leases` (revision 0010).
MAX_NAME_LENGTH: Final = 64
MAX_HOLDER_LENGTH: Final = 128


def new_holder() -> str:
    """A holder name no other process has: `host:pid:random`."""
    host = socket.gethostname()[: MAX_HOLDER_LENGTH - 32] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(6)}"


class Lease:
    """The lease `name` on the database `engine` for `holder` (by default `new_holder()`),
    taken or renewed for `term` at a time. Each call is one short transaction; a database
    failure is a `StorageError`, and leaves the lease as it was.

    Safe to use from one thread at a time (the background sweep's own)."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        term: timedelta,
        holder: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise ValueError(f"a lease name is 1 to {MAX_NAME_LENGTH} characters; got {name!r}")
        holder = new_holder() if holder is None else holder
        if not isinstance(holder, str) or not 0 < len(holder) <= MAX_HOLDER_LENGTH:
            raise ValueError(
                f"a lease holder is 1 to {MAX_HOLDER_LENGTH} characters; got {holder!r}"
            )
        if not isinstance(term, timedelta) or term <= timedelta(0):
            raise ValueError(f"a lease's term must be a positive timedelta; got {term!r}")
        self.name = name
        self.holder = holder
        self.term = term
        # Connections go back to the pool after each call: a lease is taken once a round.
        self._writer = Writer(engine, owns_engine=False, max_attempts=max_attempts)
        self._held_until: float | None = None  # by time.monotonic(), when held

    def acquire(self) -> bool:
        """Take the lease for one term if it is free (never taken, given up, expired), or
        renew it if this holder has it; whether this holder has it now. A lease another
        holder keeps is left alone: False, and the caller skips the job this time."""
        asked = time.monotonic()
        taken = self._writer.run(self._take, subject=f"taking the lease {self.name!r}")
        self._held_until = asked + self.term.total_seconds() if taken else None
        return taken

    def renew(self) -> bool:
        """Extend this holder's lease by one term from now; False (and the job must stop) when
        it was given up or another holder took it over after it expired."""
        asked = time.monotonic()
        renewed = self._writer.run(self._renew, subject=f"renewing the lease {self.name!r}")
        self._held_until = asked + self.term.total_seconds() if renewed else None
        return renewed

    def release(self) -> bool:
        """Give the lease up, so another process may take it at once rather than when it
        expires; whether this holder still had it. Another holder's lease is left alone."""
        self._held_until = None
        return self._writer.run(
            partial(storage.give_up_lease, name=self.name, holder=self.holder),
            subject=f"giving up the lease {self.name!r}",
        )

    @property
    def held(self) -> bool:
        """Whether this holder's last take or renewal is still within its term, by this
        process's monotonic clock counted from before it asked: never longer than the
        database's own count."""
        return self._held_until is not None and time.monotonic() < self._held_until

    def remaining(self) -> float:
        """Seconds left of the term held (0 when not held)."""
        if self._held_until is None:
            return 0.0
        return max(0.0, self._held_until - time.monotonic())

    def holding(self) -> storage.LeaseHolding | None:
        """The lease's row as the database has it now, whoever holds it."""
        with database_errors(), self._writer.engine.connect() as connection:
            return storage.find_lease(connection, self.name)

    def _take(self, connection: Connection) -> bool:
        now = storage.database_now(connection)
        return storage.take_lease(
            connection, self.name, self.holder, now=now, until=self._until(now)
        )

    def _renew(self, connection: Connection) -> bool:
        now = storage.database_now(connection)
        return storage.renew_lease(connection, self.name, self.holder, until=self._until(now))

    def _until(self, now: datetime) -> datetime:
        return now + self.term
