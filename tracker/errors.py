"""The errors `tracker` raises. Bad input never raises: it becomes an `invalid` result."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError


class TrackerError(Exception):
    """Base class of every error the tracker raises on purpose."""


class SchemaError(TrackerError):
    """The database's tracker schema is missing, behind or ahead; the message names the fix."""


class StorageError(TrackerError):
    """The database failed, or refused what the tracker wrote, while a delivery was applied;
    the message says which. Nothing of the delivery was written, except when the connection was
    lost during the commit itself: then whether it was written is unknown, and the message says
    so.

    Either way, answer the webhook with a non-2xx status (or keep the body and apply it again
    later): applying the same body again is safe and gives the outcome it would have had, or
    `duplicate` when the first attempt was written after all.
    """


class ConflictError(StorageError):
    """Applying inside the host's transaction (`connection=`) lost a race to another writer: a
    call changed, a unique key was taken, or the database chose this transaction as a deadlock's
    loser. Nothing of the tracker's part was written.

    The tracker does not retry inside a transaction it does not own: roll back your transaction
    and run the whole of it again, the `apply` included.
    """


def check_instant(name: str, value: object) -> None:
    """Refuse an argument that does not name one instant: not a datetime, or one without a time
    zone (a naive datetime is ambiguous). For the methods that take a time from their caller."""
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime or None; got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name}={value.isoformat()} has no time zone, so the instant it names is unknown; "
            "pass an aware datetime, e.g. datetime(2026, 3, 1, tzinfo=UTC)"
        )


def check_window(since: object, until: object) -> None:
    """Refuse a time window `[since, until)` that holds no instant, or whose bounds (each
    optional) are not instants. For the reads filtered by start time (export, statistics)."""
    for name, bound in (("since", since), ("until", until)):
        if bound is not None:
            check_instant(name, bound)
    if isinstance(since, datetime) and isinstance(until, datetime) and until <= since:
        raise ValueError(
            f"until ({until.isoformat()}) must be after since ({since.isoformat()}): the window "
            "[since, until) holds no instant"
        )


def check_account(account_id: object) -> None:
    """Refuse an account filter that is neither None nor an account id."""
    if account_id is not None and not isinstance(account_id, str):
        raise ValueError(f"account_id must be a str or None; got {account_id!r}")


def check_batch_size(batch_size: object) -> None:
    """Refuse a batch size that is not a whole number of at least 1 (a bool is not one)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")


def failure_message(
    error: SQLAlchemyError, subject: str, *, committing: bool = False, after: str = ""
) -> str:
    """The sentence a `StorageError` says for `error`, met while writing `subject` ("this
    delivery"), ending with the driver's own words. One story per class of error: a value the
    database refused (`DataError`) and a broken constraint (an `IntegrityError`, once the known
    races are told apart by the caller) are bugs of the tracker to report; a failing server is
    not; a connection lost during the commit leaves the outcome unknown; an error of SQLAlchemy
    itself, before any statement ran, is a bug too. `after` is inserted before the driver's
    words (the state of a host's transaction)."""
    if not isinstance(error, DBAPIError):
        return (
            f"SQLAlchemy refused a statement of {subject}, which is a bug in the tracker (please "
            f"report it); nothing of it was written{after}: {error}"
        )
    if committing and error.connection_invalidated:
        return (
            f"the connection to the database was lost during the commit of {subject}, so whether "
            f"it was written is unknown{after}: deliver it again, which is safe (if it was "
            f"written, the retry is `duplicate`, so nothing is lost or applied twice): {error.orig}"
        )
    if isinstance(error, DataError):
        what = (
            f"the database refused this data ({subject}: a value too long or out of range for "
            "its column), which is a bug in the tracker (please report it, with the body); "
            "nothing of it was written"
        )
    elif isinstance(error, IntegrityError) or _is_check_violation(error):
        what = (
            f"a database constraint refused {subject}, which is a bug in the tracker (please "
            "report it); nothing of it was written"
        )
    else:
        what = f"the database failed and nothing of {subject} was written"
    return f"{what}{after}: {error.orig}"


# A CHECK constraint refused a row: MariaDB's ER_CONSTRAINT_FAILED and MySQL's
# ER_CHECK_CONSTRAINT_VIOLATED, which pymysql reports as a failure of the server rather than as
# an `IntegrityError` (PostgreSQL and SQLite do).
_CHECK_VIOLATION_MYSQL_CODES: Final = frozenset({4025, 3819})


def _is_check_violation(error: DBAPIError) -> bool:
    arguments: tuple[object, ...] = getattr(error.orig, "args", ())
    return bool(arguments) and arguments[0] in _CHECK_VIOLATION_MYSQL_CODES
