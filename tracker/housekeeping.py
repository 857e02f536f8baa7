"""Housekeeping: sweep calls whose end was lost, prune old log entries, re-drive refused
deliveries (`Tracker.sweep`, `Tracker.prune`, `Tracker.redrive`; the rebuild is
`tracker.rebuilding`).

Each walks its table in pages of the primary key, each page in a short transaction of its own,
so that workers applying deliveries meanwhile never wait long. Prune and re-drive stop at the
newest log entry that existed when they began: what is logged during the run is not theirs.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final

from sqlalchemy.exc import DBAPIError

from tracker import applying, lifecycle, parsing, reading, storage
from tracker.errors import StorageError, check_batch_size, check_instant
from tracker.records import (
    REDRIVEN_OUTCOMES,
    Call,
    InvalidReason,
    Outcome,
    RedriveReport,
    SweepReport,
)
from tracker.writing import Writer

Body = bytes | str | Mapping[str, Any]
Resolve = Callable[[Call], Body | None]

# The distinct bodies a re-drive remembers having applied in its run (a digest each, about a
# hundred bytes with its place in the order): a body met again within the last this many is
# counted a repeat and not applied again. One met again after more than this many others is
# applied again, which is harmless: it comes out `duplicate` (it was applied the first time) or
# refused again, as the first time. Memory stays bounded however large the log.
REDRIVE_MEMORY: Final = 100_000

# The batch sizes by default (of `Tracker.sweep`, `prune` and `redrive`, and the commands'
# `--batch-size`): calls ended, log entries looked at, and logged deliveries applied again per
# transaction.
SWEEP_BATCH_SIZE: Final = 200
PRUNE_BATCH_SIZE: Final = 1000
REDRIVE_BATCH_SIZE: Final = 500


def sweep(
    writer: Writer,
    older_than: timedelta,
    *,
    now: datetime,
    resolve: Resolve | None,
    batch_size: int,
    max_body_bytes: int,
    should_stop: Callable[[], bool] | None = None,
) -> SweepReport:
    """End the live calls last heard of before `now - older_than`, `batch_size` at a time, each
    batch in a transaction of `writer` of its own (`applying.expire_calls`). With `resolve`,
    each such call is first offered to it (outside any transaction: it may ask a remote API),
    and a body it returns is applied (read up to `max_body_bytes`), logged with origin `sweep`;
    the call is expired only if it is still live and old after that. `should_stop` is asked
    before each batch and before each offer: True ends the sweep there, between transactions,
    and the report says what was done until then."""
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise ValueError(
            f"older_than must be a positive timedelta, e.g. timedelta(hours=4); got {older_than!r}"
        )
    check_instant("now", now)
    check_batch_size(batch_size)
    engine = writer.engine
    cutoff = now - older_than
    checked = 0
    expired: list[str] = []
    resolved: list[str] = []
    kept: list[str] = []
    after: str | None = None
    while should_stop is None or not should_stop():
        with engine.connect() as connection:
            page = storage.where_sweep_candidates(connection, after, cutoff, batch_size)
        if not page:
            break
        after = page[-1].call_id
        checked += len(page)
        due = [record.call_id for record in page if lifecycle.sweepable(record, cutoff)]
        if resolve is not None:
            offered, due = due, []
            for call_id in offered:
                if should_stop is not None and should_stop():
                    break
                verdict = _offer(writer, call_id, resolve, cutoff, max_body_bytes)
                if verdict == "due":
                    due.append(call_id)
                elif verdict == "resolved":
                    resolved.append(call_id)
                elif verdict == "kept":
                    kept.append(call_id)
        if due:
            expired += writer.run(
                partial(applying.expire_calls, call_ids=due, swept_at=now, cutoff=cutoff),
                subject="this batch of the sweep",
            )
    return SweepReport(checked, tuple(expired), tuple(resolved), tuple(kept))


def _offer(
    writer: Writer, call_id: str, resolve: Resolve, cutoff: datetime, max_body_bytes: int
) -> str:
    """Offer one call to `resolve` and apply the body it returns. What the call is then: `due`
    (still live and old: expire it), `resolved` (the body ended it), `kept` (the body showed
    it alive lately) or `gone` (it ended before it was offered)."""
    call = reading.get_call(writer.engine, call_id)
    if call is None or not call.live:
        return "gone"
    body = resolve(call)
    if body is None:
        return "due"
    applying.apply_bodies(writer, [body], max_body_bytes, parsing.SWEEP_ORIGIN)
    with writer.engine.connect() as connection:
        after = storage.find_call(connection, call_id)
    if after is None or after.state == lifecycle.DISCONNECTED:
        return "resolved"
    return "due" if lifecycle.sweepable(after, cutoff) else "kept"


def prune(writer: Writer, before: datetime, *, batch_size: int) -> int:
    """Delete the log entries received before `before`; how many were deleted. The log is
    walked in id order `batch_size` entries at a time, each page's old entries deleted in a
    transaction of `writer` of their own."""
    check_instant("before", before)
    check_batch_size(batch_size)
    engine = writer.engine
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
                deleted += writer.run(
                    partial(
                        storage.delete_events, after_id=after, through_id=through, before=before
                    ),
                    subject="this batch of the prune",
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
    writer: Writer,
    outcome: str,
    *,
    reason: str | None,
    call_id: str | None,
    batch_size: int,
    max_body_bytes: int,
) -> RedriveReport:
    """Apply again, in transactions of `writer`, the logged deliveries that came out `outcome`
    (read up to `max_body_bytes`, as `Tracker.apply_many` reads them).

    Only entries logged before the re-drive started are read, so its own new entries are not
    re-driven again by the same run; they are `batch_size` at a time, each page applied in log
    order in one transaction, while other processes go on applying. A body held by several
    entries (a retried delivery, an earlier re-drive's entry) is applied once per run, unless
    more than `REDRIVE_MEMORY` other bodies came between them (then once more, harmlessly). A
    `too_large` entry is skipped: only the first 64 KiB of its body were kept."""
    if outcome not in REDRIVEN_OUTCOMES:
        taken = " or ".join(repr(taken.value) for taken in REDRIVEN_OUTCOMES)
        raise ValueError(
            f"redrive takes the outcome {taken}, not {outcome!r}: deliveries applied, "
            "duplicate or ignored would only come back duplicate or ignored"
        )
    check_batch_size(batch_size)
    engine = writer.engine
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
    applied_bodies = _RecentBodies(REDRIVE_MEMORY)
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
            if applied_bodies.seen(entry.body):
                repeats += 1
            else:
                bodies.append(entry.body)
        try:
            results = applying.apply_bodies(writer, bodies, max_body_bytes) if bodies else []
        except StorageError as error:
            raise StorageError(
                f"{error} (the re-drive stopped at log entry {page[0].id}: the entries "
                "before it were re-driven; running it again re-drives them once more)"
            ) from error
        outcomes.update((result.outcome, result.reason) for result in results)
        redriven += len(bodies)
        after_id = page[-1].id
    return RedriveReport(redriven, dict(outcomes), repeats, too_large)


class _RecentBodies:
    """The digests of the last `size` distinct bodies met (32 bytes each, whatever a body's
    size), the least recently met forgotten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.digests: OrderedDict[bytes, None] = OrderedDict()

    def seen(self, body: bytes) -> bool:
        """Whether `body` was met among the last `size` distinct bodies; it is remembered now."""
        digest = hashlib.sha256(body).digest()
        if digest in self.digests:
            self.digests.move_to_end(digest)
            return True
        self.digests[digest] = None
        if len(self.digests) > self.size:
            self.digests.popitem(last=False)
        return False
