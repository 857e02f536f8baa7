"""The errors `tracker` raises. Bad input never raises: it becomes an `invalid` result."""

from __future__ import annotations

from datetime import datetime


class TrackerError(Exception):
    """Base class of every error the tracker raises on purpose."""


class SchemaError(TrackerError):
    """The database's tracker schema is missing, behind or ahead; the message names the fix."""


class StorageError(TrackerError):
    """The database failed while a delivery was applied, and nothing of it was written.

    Answer the webhook with a non-2xx status (or keep the body and apply it again later):
    applying the same body again is safe and gives the outcome it would have had.

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
