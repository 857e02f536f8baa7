"""Housekeeping on the event log: prune old entries, re-drive refused deliveries
(`Tracker.prune`, `Tracker.redrive`; the rebuild is `tracker.rebuilding`).

Both walk the log in pages of its primary key, each page in a short transaction of its own, so
that workers applying deliveries meanwhile never wait long, and both stop at the newest entry
that existed when they began: what is logged during the run is not theirs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tracker import storage
from tracker.errors import StorageError
from tracker.records import (
    REDRIVEN_OUTCOMES,
    InvalidReason,
    Outcome,
    RedriveReport,
    Result,
)

# Runs one unit of work in a writing transaction, retried on lost races (`Tracker`'s).
Run = Callable[[Callable[[Connection], int]], int]
ApplyMany = Callable[[Iterable[bytes]], list[Result]]


def prune(engine: Engine, run: Run, before: datetime, *, batch_size: int) -> int:
    """Delete the log entries received before `before`; how many were deleted. The log is
    walked in id order `batch_size` entries at a time, each page's old entries deleted by `run`
    in a transaction of their own."""
    if before.tzinfo is None or before.utcoffset() is None:
        raise ValueError(
            f"before={before.isoformat()} has no time zone, so the instant it names is "
            "unknown; pass an aware datetime, e.g. datetime(2026, 3, 1, tzinfo=UTC)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    with engine.connect() as connection:
        last = storage.last_event_id(connection)
    deleted = 0
    after = 0
    try:
        while after < last:
            with engine.connect() as connection:
                page = storage.where_log_page(connection, after, batch_size)
            if not page:
                break
            through = min(page[-1][0], last)
            if any(received_at < before for _id, received_at in page):
                deleted += run(
                    partial(
                        storage.delete_events, after_id=after, through_id=through, before=before
                    )
                )
            after = through
    except (StorageError, DBAPIError) as error:
        failure = error if isinstance(error, StorageError) else f"the database failed: {error.orig}"
        raise StorageError(
            f"{failure} ({deleted} entries were deleted before it failed; pruning again is "
            "safe and deletes the rest)"
        ) from error
    return deleted


def redrive(
    engine: Engine,
    apply_many: ApplyMany,
    outcome: str,
    *,
    reason: str | None,
    call_id: str | None,
    batch_size: int,
) -> RedriveReport:
    """Apply again, with `apply_many`, the logged deliveries that came out `outcome`.

    Only entries logged before the re-drive started are read, so its own new entries are not
    re-driven again by the same run; they are `batch_size` at a time, each page applied in log
    order in one transaction, while other processes go on applying. A body held by several
    entries (a retried delivery, an earlier re-drive's entry) is applied once per run. A
    `too_large` entry is skipped: only the first 64 KiB of its body were kept."""
    if outcome not in REDRIVEN_OUTCOMES:
        taken = " or ".join(repr(taken.value) for taken in REDRIVEN_OUTCOMES)
        raise ValueError(
            f"redrive takes the outcome {taken}, not {outcome!r}: deliveries applied, "
            "duplicate or ignored would only come back duplicate or ignored"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    with engine.connect() as connection:
        through_id = storage.last_event_id(connection)
        too_large = 0
        if outcome == Outcome.INVALID and reason in (None, InvalidReason.TOO_LARGE):
            too_large = storage.count_events_through(
                connection,
                through_id=through_id,
                outcome=outcome,
                reason=InvalidReason.TOO_LARGE,
                call_id=call_id,
            )
    outcomes: Counter[tuple[Outcome, str | None]] = Counter()
    applied_bodies: set[bytes] = set()  # digests: 32 bytes a body, whatever its size
    redriven = repeats = after_id = 0
    while reason != InvalidReason.TOO_LARGE:
        with engine.connect() as connection:
            page = storage.where_events_between(
                connection,
                after_id=after_id,
                through_id=through_id,
                reason=reason,
                without_reason=InvalidReason.TOO_LARGE,
                outcome=outcome,
                call_id=call_id,
                limit=batch_size,
            )
        if not page:
            break
        bodies = []
        for entry in page:
            digest = hashlib.sha256(entry.body).digest()
            if digest in applied_bodies:
                repeats += 1
            else:
                applied_bodies.add(digest)
                bodies.append(entry.body)
        try:
            results = apply_many(bodies) if bodies else []
        except StorageError as error:
            raise StorageError(
                f"{error} (the re-drive stopped at log entry {page[0].id}: the entries "
                "before it were re-driven; running it again re-drives them once more)"
            ) from error
        outcomes.update((result.outcome, result.reason) for result in results)
        redriven += len(bodies)
        after_id = page[-1].id
    return RedriveReport(redriven, dict(outcomes), repeats, too_large)
