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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final

from sqlalchemy.exc import DBAPIError

from tracker import applying, lifecycle, parsing, reading, storage
from tracker.errors import StorageError, check_batch_size, check_instant
from tracker.parsing import Unreadable
from tracker.provider import PROVIDER_ORIGIN, ProviderCall, ProviderError
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
# What the sweep asks about a call before expiring it: Bandwidth's call state of it (or a body
# built from it), None when Bandwidth does not know it, `ProviderError` when it could not tell.
# `tracker.bandwidth.BandwidthResolver` is one; a `concurrency` attribute lets the sweep call
# it from that many threads at once.
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
    the calls of each batch are first offered to it (outside any transaction: it asks a remote
    API), from `resolve.concurrency` threads at once when it says (one otherwise): see
    `_resolve_batch` for what each answer does. `should_stop` is asked before each batch: True
    ends the sweep there, between two transactions, and the report says what was done."""
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise ValueError(
            f"older_than must be a positive timedelta, e.g. timedelta(hours=4); got {older_than!r}"
        )
    check_instant("now", now)
    check_batch_size(batch_size)
    engine = writer.engine
    cutoff = now - older_than
    checked = 0
    outcomes: dict[str, list[str]] = {name: [] for name in ("resolved", "kept", "failed")}
    expired: list[str] = []
    after: str | None = None
    workers = max(1, int(getattr(resolve, "concurrency", 1))) if resolve is not None else 1
    with ThreadPoolExecutor(workers, thread_name_prefix="tracker-resolve") as pool:
        while should_stop is None or not should_stop():
            with engine.connect() as connection:
                page = storage.where_sweep_candidates(connection, after, cutoff, batch_size)
            if not page:
                break
            after = page[-1].call_id
            checked += len(page)
            due = [record.call_id for record in page if lifecycle.sweepable(record, cutoff)]
            if resolve is not None and due:
                due = _resolve_batch(writer, due, resolve, pool, cutoff, max_body_bytes, outcomes)
            if due:
                expired += writer.run(
                    partial(applying.expire_calls, call_ids=due, swept_at=now, cutoff=cutoff),
                    subject="this batch of the sweep",
                )
    return SweepReport(
        checked,
        tuple(expired),
        tuple(outcomes["resolved"]),
        tuple(outcomes["kept"]),
        tuple(outcomes["failed"]),
    )


def _resolve_batch(
    writer: Writer,
    call_ids: list[str],
    resolve: Resolve,
    pool: ThreadPoolExecutor,
    cutoff: datetime,
    max_body_bytes: int,
    outcomes: dict[str, list[str]],
) -> list[str]:
    """Offer these calls to `resolve`; the ids still due for expiry. What `resolve` answers:
    None (unknown there: 404, or older than Bandwidth keeps) leaves the call due. A call state
    saying the call still goes on keeps it live, whatever its age (`kept`). One saying it
    disconnected, or a terminal callback, is applied as the provider's end (origin
    `provider`, `resolved`). Any other callback (a host's hook telling the call answered
    lately) is applied as a delivery (origin `sweep`), and the call is kept if that makes it
    recent. A `ProviderError` leaves the call live and counts it `failed`, unless the
    credentials were refused (`refused`): asking on is useless then, so it stops the sweep.
    Any other exception stops the sweep too, and reaches the caller. Whatever was applied and
    is not now ended, nor recent, stays due."""
    with reading.one_moment(writer.engine) as connection:
        found = storage.where_calls_by_id(connection, call_ids)
        offered = reading.snapshots(
            connection,
            [found[i] for i in call_ids if i in found and found[i].state in lifecycle.LIVE_STATES],
        )
    answers = list(pool.map(partial(_ask, resolve), offered))
    due: list[str] = []
    provider: list[bytes] = []
    deliveries: list[bytes] = []
    for call, answer in zip(offered, answers, strict=True):
        if isinstance(answer, ProviderError):
            if answer.refused:
                raise answer
            outcomes["failed"].append(call.call_id)
        elif answer is None:
            due.append(call.call_id)
        else:
            read = parsing.read_provider_answer(answer, max_body_bytes)
            content = read.content
            if isinstance(content, ProviderCall) and not content.ended:
                outcomes["kept"].append(call.call_id)
            elif isinstance(content, Unreadable) and _is_live_callback(answer, max_body_bytes):
                deliveries.append(read.raw)
                due.append(call.call_id)
            else:
                provider.append(read.raw)
                due.append(call.call_id)
    if provider:
        applying.apply_bodies(writer, provider, max_body_bytes, PROVIDER_ORIGIN)
    if deliveries:
        applying.apply_bodies(writer, deliveries, max_body_bytes, parsing.SWEEP_ORIGIN)
    if not provider and not deliveries:
        return due
    with writer.engine.connect() as connection:
        now_found = storage.where_calls_by_id(connection, due)
    still_due: list[str] = []
    for call_id in due:
        record = now_found.get(call_id)
        if record is None or record.state == lifecycle.DISCONNECTED:
            outcomes["resolved"].append(call_id)
        elif lifecycle.sweepable(record, cutoff):
            still_due.append(call_id)
        else:
            outcomes["kept"].append(call_id)
    return still_due


def _ask(resolve: Resolve, call: Call) -> Body | ProviderError | None:
    """`resolve(call)`, a `ProviderError` returned rather than raised (one failed look-up is
    the sweep's business, not the end of it)."""
    try:
        return resolve(call)
    except ProviderError as error:
        return error


def _is_live_callback(answer: Body, max_body_bytes: int) -> bool:
    return isinstance(parsing.read(answer, max_body_bytes).content, parsing.Event)


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
