"""The errors `tracker` raises. Bad input never raises: it becomes an `invalid` result."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime


class TrackerError(Exception):
    """Base class of every error the tracker raises on purpose."""


class SchemaError(TrackerError):
    """The database's tracker schema is missing, behind or ahead; the message names the fix."""


class StorageError(TrackerError):
    """The database failed while a delivery was applied, and nothing of it was written.

    Answer the webhook with a non-2xx status (or keep the body and apply it again later):
    applying the same body again is safe and gives the outcome it would have had.
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
