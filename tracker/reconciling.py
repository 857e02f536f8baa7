"""Reconcile: the calls Bandwidth lists for a window, compared call by call with the tracker's
records (`Tracker.reconcile`), and on request Bandwidth's facts applied where the tracker lacks
them.

Each call gets one status (`ReconcileStatus`):

- `agrees`: both tell the same story. Ended on both sides with the same cause, end time and
  answer time; or still active there and live here; or active there and ended here after
  Bandwidth's page was asked for (it ended while the page was on its way).
- `missing`: Bandwidth has the call, the tracker has no record of it (active or ended there).
- `live_here`: ended there, and here live, or ended only by the sweep (`end_source` `sweep`,
  disposition `expired`): the tracker never learnt how it ended, Bandwidth knows.
- `differs`: both ended, with another cause, end time or answer time; or active there but
  ended here before Bandwidth's page was asked for (a sweep that expired a call still going, or
  an end Bandwidth does not know). Instants are compared at Bandwidth's precision, the
  millisecond, so a time the tracker holds to the microsecond differs only when its
  millisecond does.
- `unknown_there`: the tracker has a call that started in the window (of the account) that
  Bandwidth did not list. Only calls whose start and account the tracker knows are looked
  for: a parent known only through its legs has no start time yet.

`--apply` (`apply=True`) applies Bandwidth's call state to the `missing` and `live_here` calls
only (those that ended there: a call still active there has no end to apply yet), as the
provider's end (`end_source` `provider`, logged with origin `provider`, so rebuild
replays it); a `differs` call is reported, never changed: a callback's end outranks Bandwidth's
list, and which side is wrong is for a person to say.

Bandwidth keeps calls for 7 days (`provider.KEPT_DAYS`): the tracker's calls that started
before that (and an hour more, as Bandwidth may drop them while reconcile runs) cannot be in
its list. They are not reported `unknown_there`; the report counts them (`not_compared`) and
says that the window reaches past what Bandwidth keeps.

Memory follows one page, never the window. Each page Bandwidth lists is compared with the
tracker's records of its ids, read in one short transaction, and then dropped. The ids
Bandwidth listed are kept in a scratch SQLite file (a temporary file, deleted afterwards),
which also tells a call listed twice from a new one; the tracker's calls of the window are then
walked a keyset page at a time (start time, id) and each page looked up there.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Engine

from tracker import instants, lifecycle, storage
from tracker.facts import SWEPT
from tracker.lifecycle import CallRecord
from tracker.provider import KEPT_DAYS, ProviderCall, ProviderError
from tracker.reading import one_moment, snapshots
from tracker.records import Call, Outcome, Result

# The account whose calls are listed when none is given.
ACCOUNT_VARIABLE: Final = "BANDWIDTH_ACCOUNT_ID"
# The tracker's calls of the window read per keyset page while looking for `unknown_there`.
RECONCILE_BATCH_SIZE: Final = 1000
# Bandwidth drops calls older than `KEPT_DAYS` on its own clock, possibly while reconcile runs:
# calls that started within this margin of the limit are not compared either.
KEPT_MARGIN: Final = timedelta(hours=1)
# The most ids one look-up of the scratch file names (SQLite allows 32,766 variables).
_SCRATCH_CHUNK: Final = 500


class ReconcileStatus(StrEnum):
    """How a call of the window compares with Bandwidth's record of it: see
    `tracker.reconciling` for each, with the cases it covers."""

    AGREES = "agrees"
    MISSING = "missing"
    LIVE_HERE = "live_here"
    DIFFERS = "differs"
    UNKNOWN_THERE = "unknown_there"


# The statuses `apply=True` writes Bandwidth's facts for.
APPLIED_STATUSES: Final = (ReconcileStatus.MISSING, ReconcileStatus.LIVE_HERE)


@dataclass(frozen=True, slots=True)
class ReconciledCall:
    """One call that does not agree: its `status`, the tracker's snapshot (`here`, None when it
    has no record) and Bandwidth's record (`there`, None when Bandwidth did not list it).
    `differing` names the facts that differ (`state`, `cause`, `end_time`, `answer_time`) for a
    `differs` call. `result` is what applying Bandwidth's facts did (`apply=True`, a `missing`
    or `live_here` call), else None."""

    call_id: str
    status: ReconcileStatus
    here: Call | None
    there: ProviderCall | None
    differing: tuple[str, ...] = ()
    result: Result | None = None


@dataclass(frozen=True, slots=True)
class ReconcilePage:
    """One page compared, as `Tracker.reconcile` hands it to `on_page` as soon as it is done:
    `source` `bandwidth` (a page of Bandwidth's list, compared with the tracker's records) or
    `tracker` (a page of the tracker's calls of the window, looked for in Bandwidth's list);
    `compared` calls, of which `calls` are those that do not agree."""

    source: str
    compared: int
    calls: tuple[ReconciledCall, ...]


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What `Tracker.reconcile` found in [since, until) of `account_id`: `counts` per status
    (every status, zero included), `pages` of Bandwidth's list read, and with `apply=True`
    the calls whose Bandwidth facts were `applied` (outcome `applied`).

    `kept_from` is the oldest start Bandwidth could still list (`KEPT_DAYS` before the run,
    less `KEPT_MARGIN`); when the window starts before it, `reaches_past_kept` is True and the
    `not_compared` calls of the tracker that started before it were not looked for (Bandwidth
    has forgotten them, so their absence proves nothing)."""

    since: datetime
    until: datetime
    account_id: str
    counts: Mapping[str, int]
    pages: int
    applying: bool
    applied: int
    kept_from: datetime
    reaches_past_kept: bool
    not_compared: int


class CallLister(Protocol):
    """What reconcile asks of Bandwidth: its calls of an account that started in a window, a
    page at a time (`tracker.bandwidth.BandwidthClient` is one)."""

    def list_calls(
        self, account_id: str, since: datetime, until: datetime
    ) -> Iterable[Sequence[ProviderCall]]: ...


# Applies Bandwidth call state documents as the provider's end, in one transaction
# (`Tracker.apply_call_states`).
ApplyDocuments = Callable[[Sequence[dict[str, Any]]], list[Result]]
OnPage = Callable[[ReconcilePage], None]


def compare(
    there: ProviderCall, here: CallRecord | None, asked_at: datetime
) -> tuple[ReconcileStatus, tuple[str, ...]]:
    """The status of a call Bandwidth listed, and the facts that differ; `asked_at` is when its
    page was asked for, so an end here after it is news Bandwidth's page could not have."""
    if here is None:
        return ReconcileStatus.MISSING, ()
    live_here = here.state in lifecycle.LIVE_STATES
    if not there.ended:
        if live_here:
            return ReconcileStatus.AGREES, ()
        if here.end_source != SWEPT and here.end_time is not None and here.end_time >= asked_at:
            return ReconcileStatus.AGREES, ()
        return ReconcileStatus.DIFFERS, ("state",)
    if live_here or here.end_source == SWEPT:
        return ReconcileStatus.LIVE_HERE, ()
    differing = tuple(
        name
        for name, ours, theirs in (
            # A disconnect Bandwidth gives no cause for ends here with its word for that.
            ("cause", here.cause, there.cause or lifecycle.UNKNOWN_CAUSE),
            ("end_time", _millisecond(here.end_time), _millisecond(there.ended_at)),
            ("answer_time", _millisecond(here.answer_time), _millisecond(there.answer_time)),
        )
        if ours != theirs
    )
    return (ReconcileStatus.DIFFERS if differing else ReconcileStatus.AGREES), differing


def _millisecond(instant: datetime | None) -> datetime | None:
    """`instant` cut to Bandwidth's precision, the millisecond."""
    if instant is None:
        return None
    return instant.replace(microsecond=instant.microsecond - instant.microsecond % 1000)


def call_state_document(call: ProviderCall) -> dict[str, Any]:
    """`call` written back as Bandwidth's call state document (camelCase, instants in UTC to
    the millisecond with `Z`, absent facts left out): what `--apply` hands the tracker, read by
    `provider.read_call_state` as the same call."""
    document: dict[str, Any] = {"callId": call.call_id, "state": call.state}
    for key, value in (
        ("accountId", call.account_id),
        ("applicationId", call.application_id),
        ("parentCallId", call.parent_call_id),
        ("direction", call.direction),
        ("from", call.from_number),
        ("to", call.to_number),
        ("enqueuedTime", call.enqueued_time),
        ("startTime", call.start_time),
        ("answerTime", call.answer_time),
        ("endTime", call.end_time),
        ("lastUpdate", call.last_update),
        ("disconnectCause", call.cause),
        ("errorMessage", call.error_message),
        ("errorId", call.error_id),
    ):
        if isinstance(value, datetime):
            document[key] = _bandwidth_instant(value)
        elif value is not None:
            document[key] = value
    return document


def _bandwidth_instant(instant: datetime) -> str:
    """As Bandwidth writes an instant, to the millisecond, unless it holds more: then all of it."""
    exact = instant.microsecond % 1000 == 0
    return instants.text(instant, "milliseconds" if exact else "microseconds")


@contextmanager
def lister_and_account(client: CallLister | None) -> Iterator[tuple[CallLister, str | None]]:
    """`client`, else Bandwidth's own API configured from the environment (`tracker.bandwidth`,
    closed afterwards; a `ProviderError` (`refused`) naming the variables to set when it
    cannot be), with the account to list when none is given: the settings' (else
    `BANDWIDTH_ACCOUNT_ID`)."""
    if client is not None:
        yield client, os.environ.get(ACCOUNT_VARIABLE) or None
        return
    try:
        from tracker.bandwidth import BandwidthClient, BandwidthSettings
    except ImportError as error:
        raise ProviderError(
            f"reconcile asks Bandwidth's API through the bandwidth extra, which is not "
            f"installed ({error}): pip install 'tracker[bandwidth]'",
            refused=True,
        ) from error
    settings = BandwidthSettings.from_environment()
    with BandwidthClient(settings) as bandwidth:
        yield bandwidth, settings.account_id


def account_to_list(account_id: str | None, default: str | None) -> str:
    """`account_id`, else `default`: Bandwidth lists calls per account, so one is needed."""
    account = account_id or default
    if account is None:
        raise ValueError(
            f"reconcile lists the calls of one Bandwidth account: pass it (--account ID, "
            f"account_id=...) or set {ACCOUNT_VARIABLE}"
        )
    return account


def kept_from(now: datetime) -> datetime:
    """The oldest start time Bandwidth can still list at `now`, with `KEPT_MARGIN` to spare."""
    return now - timedelta(days=KEPT_DAYS) + KEPT_MARGIN


def reconcile(
    engine: Engine,
    lister: CallLister,
    *,
    since: datetime,
    until: datetime,
    account_id: str,
    now: datetime | None,
    apply_documents: ApplyDocuments | None,
    on_page: OnPage | None,
    batch_size: int = RECONCILE_BATCH_SIZE,
) -> ReconcileReport:
    """Compare Bandwidth's list of [since, until) with the tracker's records of `engine`, page
    by page, then look for the tracker's calls of the window Bandwidth did not list; with
    `apply_documents`, apply Bandwidth's facts to each page's `missing` and `live_here` calls
    as soon as the page is compared. `on_page` gets each page when it is done. `now` (None: the
    wall clock) dates the run: what Bandwidth still keeps, when each page was asked for."""

    def clock() -> datetime:
        return datetime.now(UTC) if now is None else now

    horizon = kept_from(clock())
    counts = dict.fromkeys(ReconcileStatus, 0)
    applied = pages = 0

    def done(page: ReconcilePage) -> None:
        if page.source == "bandwidth":  # the tracker's pages count only what it lists
            counts[ReconcileStatus.AGREES] += page.compared - len(page.calls)
        for call in page.calls:
            counts[call.status] += 1
        if on_page is not None:
            on_page(page)

    with tempfile.TemporaryDirectory(prefix="tracker-reconcile-") as folder:
        listed = _ListedIds(Path(folder) / "listed.db")
        try:
            for asked_at, calls in _timed(lister.list_calls(account_id, since, until), clock):
                pages += 1
                page = _compare_page(engine, listed, calls, asked_at)
                if apply_documents is not None:
                    page, newly_applied = _apply(apply_documents, page)
                    applied += newly_applied
                done(page)
            for page in _unknown_there(
                engine, listed, max(since, horizon), until, account_id, batch_size
            ):
                done(page)
        finally:
            listed.close()
    not_compared = 0
    if since < horizon:
        with engine.connect() as connection:
            not_compared = storage.count_calls(
                connection,
                account_id=account_id,
                started_after=since,
                started_before=min(horizon, until),
            )
    return ReconcileReport(
        since=since,
        until=until,
        account_id=account_id,
        counts={status.value: count for status, count in counts.items()},
        pages=pages,
        applying=apply_documents is not None,
        applied=applied,
        kept_from=horizon,
        reaches_past_kept=since < horizon,
        not_compared=not_compared,
    )


def _timed(
    pages: Iterable[Sequence[ProviderCall]], clock: Callable[[], datetime]
) -> Iterator[tuple[datetime, Sequence[ProviderCall]]]:
    """Each page with the instant it was asked for."""
    iterator = iter(pages)
    while True:
        asked_at = clock()
        try:
            calls = next(iterator)
        except StopIteration:
            return
        yield asked_at, calls


def _compare_page(
    engine: Engine, listed: _ListedIds, page: Sequence[ProviderCall], asked_at: datetime
) -> ReconcilePage:
    """A page of Bandwidth's list compared with the tracker's records of its calls, read at one
    moment. A call an earlier page listed already (pages may overlap while calls change) is
    not compared again."""
    fresh = listed.add([call.call_id for call in page])
    calls: list[ProviderCall] = []
    for call in page:
        if call.call_id in fresh:
            fresh.discard(call.call_id)
            calls.append(call)
    with one_moment(engine) as connection:
        records = storage.where_calls_by_id(connection, [call.call_id for call in calls])
        found = []
        for there in calls:
            record = records.get(there.call_id)
            status, differing = compare(there, record, asked_at)
            if status is not ReconcileStatus.AGREES:
                found.append((there, record, status, differing))
        here = _snapshots(connection, [record for _, record, _, _ in found if record is not None])
    return ReconcilePage(
        "bandwidth",
        len(calls),
        tuple(
            ReconciledCall(
                there.call_id,
                status,
                None if record is None else here[record.call_id],
                there,
                differing,
            )
            for there, record, status, differing in found
        ),
    )


def _snapshots(connection: Connection, records: Sequence[CallRecord]) -> dict[str, Call]:
    return {call.call_id: call for call in snapshots(connection, records)}


def _apply(apply_documents: ApplyDocuments, page: ReconcilePage) -> tuple[ReconcilePage, int]:
    """Apply Bandwidth's facts to the page's `missing` and `live_here` calls that ended there,
    in one transaction; the page with each such call's result, and how many were applied. A
    call still active there has no end to apply: the tracker learns of it from its callbacks,
    or from the sweep's resolver once it ends."""
    to_apply = [
        (call, call.there)
        for call in page.calls
        if call.status in APPLIED_STATUSES and call.there is not None and call.there.ended
    ]
    if not to_apply:
        return page, 0
    results = apply_documents([call_state_document(there) for _, there in to_apply])
    result_of = {call.call_id: result for (call, _), result in zip(to_apply, results, strict=True)}
    calls = tuple(
        replace(call, result=result_of[call.call_id]) if call.call_id in result_of else call
        for call in page.calls
    )
    applied = sum(result.outcome is Outcome.APPLIED for result in results)
    return replace(page, calls=calls), applied


def _unknown_there(
    engine: Engine,
    listed: _ListedIds,
    since: datetime,
    until: datetime,
    account_id: str,
    batch_size: int,
) -> Iterator[ReconcilePage]:
    """The tracker's calls of account `account_id` that started in [since, until), a keyset
    page at a time, each page with those Bandwidth did not list."""
    if until <= since:
        return
    after: tuple[datetime, str] | None = None
    while True:
        with engine.connect() as connection:
            page = storage.where_started_call_ids(
                connection,
                started_after=since,
                started_before=until,
                account_id=account_id,
                after=after,
                limit=batch_size,
            )
        if not page:
            return
        known = listed.known([call_id for _, call_id in page])
        unknown = [call_id for _, call_id in page if call_id not in known]
        calls: tuple[ReconciledCall, ...] = ()
        if unknown:
            with one_moment(engine) as connection:
                records = storage.where_calls_by_id(connection, unknown)
                here = snapshots(connection, [records[i] for i in unknown if i in records])
            calls = tuple(
                ReconciledCall(call.call_id, ReconcileStatus.UNKNOWN_THERE, call, None)
                for call in here
            )
        yield ReconcilePage("tracker", len(page), calls)
        if len(page) < batch_size:
            return
        after = page[-1]


class _ListedIds:
    """The ids Bandwidth listed, in a scratch SQLite file rather than in memory: a window may
    hold millions of calls. Written a page at a time, looked up a page at a time."""

    def __init__(self, path: Path) -> None:
        # Thrown away afterwards: no syncing, no journal to keep.
        self._database = sqlite3.connect(path, isolation_level=None)
        self._database.execute("PRAGMA journal_mode = OFF")
        self._database.execute("PRAGMA synchronous = OFF")
        self._database.execute("CREATE TABLE listed (call_id TEXT PRIMARY KEY) WITHOUT ROWID")

    def close(self) -> None:
        self._database.close()

    def add(self, call_ids: Sequence[str]) -> set[str]:
        """Keep these ids; those not kept before (each once, however often it repeats)."""
        fresh = set(call_ids) - self.known(call_ids)
        self._database.execute("BEGIN")
        self._database.executemany(
            "INSERT INTO listed (call_id) VALUES (?)", [(call_id,) for call_id in fresh]
        )
        self._database.execute("COMMIT")
        return fresh

    def known(self, call_ids: Sequence[str]) -> set[str]:
        """Of these ids, those kept."""
        found: set[str] = set()
        wanted = list(dict.fromkeys(call_ids))
        for start in range(0, len(wanted), _SCRATCH_CHUNK):
            chunk = wanted[start : start + _SCRATCH_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._database.execute(
                f"SELECT call_id FROM listed WHERE call_id IN ({marks})", chunk
            )
            found.update(call_id for (call_id,) in rows)
        return found
