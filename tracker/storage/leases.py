"""Named leases (`tracker_leases`): taken, renewed and given up by compare-and-set, and the
database's clock they are measured by.

A lease row says who holds a job and until when. Taking it is one UPDATE that succeeds only
where the lease expired or is the taker's own, and, when there is no row yet, one INSERT that a
concurrent taker's INSERT makes collide on the primary key: the unique key decides the race,
and the loser's transaction is run again by the caller's `Writer`, whose UPDATE then finds the
winner's row. No row is ever locked longer than its statement needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, and_, bindparam, insert, or_, select, text, update

from tracker.storage.tables import leases


@dataclass(frozen=True, slots=True)
class LeaseHolding:
    """One lease row: who holds the lease named `name`, until `expires_at` (UTC, the database's
    clock)."""

    name: str
    holder: str
    expires_at: datetime


_TAKE: Final = (
    update(leases)
    .where(
        leases.c.name == bindparam("lease"),
        or_(leases.c.expires_at <= bindparam("now"), leases.c.holder == bindparam("taker")),
    )
    .values(holder=bindparam("taker"), expires_at=bindparam("until"))
)
_INSERT: Final = insert(leases).values(
    name=bindparam("lease"), holder=bindparam("taker"), expires_at=bindparam("until")
)
_RENEW: Final = (
    update(leases)
    .where(leases.c.name == bindparam("lease"), leases.c.holder == bindparam("taker"))
    .values(expires_at=bindparam("until"))
)
_GIVE_UP: Final = leases.delete().where(
    and_(leases.c.name == bindparam("lease"), leases.c.holder == bindparam("taker"))
)

# The servers' clocks in UTC. PostgreSQL's `clock_timestamp()` is a `timestamptz`, read as an
# aware datetime; MySQL's `UTC_TIMESTAMP(6)` is naive UTC (`NOW()` would be the session's zone).
_SERVER_CLOCKS: Final = {
    "postgresql": text("SELECT clock_timestamp()"),
    "mysql": text("SELECT UTC_TIMESTAMP(6)"),
    "mariadb": text("SELECT UTC_TIMESTAMP(6)"),
}


def database_now(connection: Connection) -> datetime:
    """The current instant by the database server's clock, in UTC. Every process that takes a
    lease measures it by this one clock, so hosts whose clocks disagree cannot take a lease
    early or keep one late. SQLite has no server: its clock is the host's own, the one every
    process sharing the file reads."""
    clock = _SERVER_CLOCKS.get(connection.dialect.name)
    if clock is None:
        return datetime.now(UTC)
    value = connection.execute(clock).scalar_one()
    if not isinstance(value, datetime):
        raise TypeError(f"the database's clock gave {value!r}, not a datetime")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def find_lease(connection: Connection, name: str) -> LeaseHolding | None:
    """The row of the lease `name`, expired or not; None when nobody took it or it was given up."""
    row = connection.execute(
        select(leases.c.name, leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
    ).one_or_none()
    return None if row is None else LeaseHolding(row.name, row.holder, row.expires_at)


def take_lease(
    connection: Connection, name: str, holder: str, *, now: datetime, until: datetime
) -> bool:
    """Make `holder` the holder of the lease `name` until `until`, if it is free at `now`
    (never taken, given up, expired) or already `holder`'s (a renewal); whether it is
    `holder`'s now. An INSERT colliding with a concurrent taker's raises the unique violation
    (`storage.is_unique_violation`) for the caller to run this again."""
    values = {"lease": name, "taker": holder, "now": now, "until": until}
    # A row count of rows matched, not changed, on MySQL too: SQLAlchemy's MySQL dialects
    # connect with CLIENT_FOUND_ROWS, so a renewal to the same instant still counts.
    if connection.execute(_TAKE, values).rowcount == 1:
        return True
    if find_lease(connection, name) is not None:  # another's, and not expired
        return False
    connection.execute(_INSERT, values)
    return True


def renew_lease(connection: Connection, name: str, holder: str, *, until: datetime) -> bool:
    """Extend `holder`'s lease `name` to `until`; whether it was still `holder`'s to extend.
    One that expired but that nobody took since is extended too: nobody else ran the job
    meanwhile. One given up or taken over is not, and no row is made."""
    values = {"lease": name, "taker": holder, "until": until}
    return connection.execute(_RENEW, values).rowcount == 1


def give_up_lease(connection: Connection, name: str, holder: str) -> bool:
    """Delete the lease `name` if `holder` holds it (expired or not: nobody else took it);
    whether it did. Another holder's lease is left alone."""
    return bool(connection.execute(_GIVE_UP, {"lease": name, "taker": holder}).rowcount)
