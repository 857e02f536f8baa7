"""The errors `tracker` raises. Bad input never raises: it becomes an `invalid` result."""

from __future__ import annotations

from collections.abc import Sequence
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

    `unavailable` is true when the database could not be reached, lost the connection, or did
    not answer in time (a lock or statement timeout, no pooled connection free): the failure
    says nothing about the deliveries, and applying them apart would only fail the same way.
    It is false when the database took the statements and failed them (a refused constraint,
    data it cannot hold, a race lost too often), which may concern one delivery of several.
    """

    def __init__(self, *args: object, unavailable: bool = False) -> None:
        super().__init__(*args)
        self.unavailable = unavailable


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


def check_window(since: object, until: object, names: tuple[str, str] = ("since", "until")) -> None:
    """Refuse a time window `[since, until)` that holds no instant, or whose bounds (each
    optional) are not instants. For the reads filtered by start time (calls, export,
    statistics); `names` are the caller's names for the two bounds."""
    for name, bound in zip(names, (since, until), strict=True):
        if bound is not None:
            check_instant(name, bound)
    if isinstance(since, datetime) and isinstance(until, datetime) and until <= since:
        first, last = names
        raise ValueError(
            f"{last} ({until.isoformat()}) must be after {first} ({since.isoformat()}): the "
            f"window [{first}, {last}) holds no instant"
        )


def check_account(account_id: object) -> None:
    """Refuse an account filter that is neither None nor an account id."""
    check_text("account_id", account_id)


def check_batch_size(batch_size: object) -> None:
    """Refuse a batch size that is not a whole number of at least 1 (a bool is not one)."""
    check_positive("batch_size", batch_size)


def check_positive(name: str, value: object) -> None:
    """Refuse a count (a batch size, a limit) that is not a whole number of at least 1 (a bool
    is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_limit(limit: object) -> None:
    """Refuse a limit that is neither None (no limit) nor a positive int."""
    if limit is not None:
        check_positive("limit", limit)


def check_text(name: str, value: object) -> None:
    """Refuse a filter that is neither None nor a str (an id: a call's, an account's)."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a str or None; got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Refuse a value that is not one of `choices` (None is for the caller to allow)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_choices(name: str, value: object, choices: Sequence[str]) -> list[str] | None:
    """A filter that takes one of `choices`, a sequence of them, or None (no filter): the
    values as a list (None for no filter), or a ValueError naming the first that is unknown.
    A sequence must hold at least one value: an empty one would match nothing."""
    if value is None:
        return None
    if isinstance(value, str):
        check_choice(name, value, choices)
        return [value]
    if not isinstance(value, Sequence) or not value:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}, a non-empty list of "
            f"them, or None; got {value!r}"
        )
    for each in value:
        check_choice(name, each, choices)
    return list(value)


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
