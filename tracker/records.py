"""What the tracker hands back: results of `apply`, call snapshots, history and the event log.

Plain frozen dataclasses, detached from any database session, safe to keep and pass around.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final


class Outcome(StrEnum):
    """What `apply` did with one body."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    INVALID = "invalid"
    IGNORED = "ignored"


# The reason codes of `Result.reason`, one enum per outcome that has them. Stable: callers branch
# on them, and docs/concepts.md lists every one (tests/test_project.py keeps the two in step).


class Reason(StrEnum):
    """Why a well-formed event was `rejected`: the lifecycle rule it breaks."""

    CONFLICTING_TERMINAL_EVENT = "conflicting_terminal_event"
    DIRECTION_CHANGED = "direction_changed"
    ACCOUNT_CHANGED = "account_changed"
    PARENT_CHANGED = "parent_changed"
    LEG_ACCOUNT_MISMATCH = "leg_account_mismatch"
    ANCESTRY_CYCLE = "ancestry_cycle"
    END_BEFORE_START = "end_before_start"
    ANSWER_OUTSIDE_CALL = "answer_outside_call"
    CALL_URL_CALL_MISMATCH = "call_url_call_mismatch"
    CALL_URL_ACCOUNT_MISMATCH = "call_url_account_mismatch"
    START_TIME_CHANGED = "start_time_changed"
    ANSWER_TIME_CHANGED = "answer_time_changed"


class InvalidReason(StrEnum):
    """Why a body is `invalid`: not a readable callback."""

    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    TOO_LARGE = "too_large"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_BODY = "unsupported_body"
    # A provider's answer (origin `provider`) that is not Bandwidth's call state.
    NOT_A_CALL_STATE = "not_a_call_state"


class IgnoredReason(StrEnum):
    """Why a readable callback was `ignored`."""

    UNTRACKED_EVENT_TYPE = "untracked_event_type"
    # A provider's answer (origin `provider`) that does not end the call here: Bandwidth says
    # the call is still going, or a terminal callback ended the call already.
    LIVE_THERE = "live_there"
    ENDED_BY_CALLBACK = "ended_by_callback"


# The states a call is in (`tracker.lifecycle` moves it between them). A call is live, ringing
# or talking, in the first two: `LIVE_STATES` is the one definition of "live", for the calls'
# filters, counts and sweep alike (`Call.live`, `storage`, the endpoint's gauge).
INITIATED: Final = "initiated"
ANSWERED: Final = "answered"
DISCONNECTED: Final = "disconnected"
STATES: Final = (INITIATED, ANSWERED, DISCONNECTED)
LIVE_STATES: Final = (INITIATED, ANSWERED)

# The longest id (call, account, application) stored; the storage layer's id columns have this
# size, and parsing refuses a longer id with a clear error rather than let the database fail.
MAX_ID_LENGTH: Final = 256

# A `detail` is a sentence for people, stored in the event log: bounded, so that quoting a
# hostile value can never overflow a column (MySQL's TEXT holds 64 KB).
MAX_DETAIL_LENGTH: Final = 2000


def clipped(detail: str) -> str:
    """`detail` cut to `MAX_DETAIL_LENGTH` characters, saying that it was."""
    if len(detail) <= MAX_DETAIL_LENGTH:
        return detail
    return detail[: MAX_DETAIL_LENGTH - 14] + " ... (clipped)"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one delivery, with a stable `reason` code and a `detail` for people."""

    outcome: Outcome
    call_id: str | None
    reason: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Transition:
    """One move of a call's state machine, at the instant the callback says it happened."""

    source: str
    target: str
    at: datetime
    event: str
    event_id: int


@dataclass(frozen=True, slots=True)
class TransferAttempt:
    """One `<Transfer>` attempt of a call, as its `transferComplete` told it: `cause` is the
    transfer's outcome (`busy`, `timeout`, ...), never the call's; `at` is its `eventTime`."""

    at: datetime | None
    cause: str
    disposition: str
    transfer_to: str | None
    transfer_caller_id: str | None
    error_message: str | None
    error_id: str | None


@dataclass(frozen=True, slots=True)
class Call:
    """A snapshot of one call (one leg) as the tracker knows it."""

    call_id: str
    parent_call_id: str | None
    legs: tuple[str, ...]
    account_id: str | None
    application_id: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    state: str
    cause: str | None
    disposition: str | None
    start_time: datetime | None
    answer_time: datetime | None
    end_time: datetime | None
    enqueued_time: datetime | None
    tag: str | None
    error_message: str | None
    error_id: str | None
    history: tuple[Transition, ...]
    machine_detection: str | None = None
    attestation: str | None = None
    verstat: str | None = None
    diversion: Mapping[str, Any] | None = None
    caller_display_name: str | None = None
    transfers: tuple[TransferAttempt, ...] = ()
    # When the sweep ended the call, its terminal event never having come (disposition
    # `expired`); None for every other call, and again once the real end arrives.
    swept_at: datetime | None = None
    # Where the end came from: `callback` (its terminal callback), `provider` (Bandwidth's call
    # state API, the callback having been lost) or `sweep` (expired: nobody could say); None
    # while live. A function of the deliveries, whatever their order.
    end_source: str | None = None

    @property
    def swept(self) -> bool:
        """Ended by the sweep, not by an event of its own."""
        return self.swept_at is not None

    @property
    def live(self) -> bool:
        """Ringing or talking now: `initiated` or `answered` (`LIVE_STATES`)."""
        return self.state in LIVE_STATES

    @property
    def answered(self) -> bool:
        return self.answer_time is not None

    @property
    def duration(self) -> timedelta | None:
        return _between(self.start_time, self.end_time)

    @property
    def talk_duration(self) -> timedelta | None:
        return _between(self.answer_time, self.end_time)

    @property
    def ring_duration(self) -> timedelta | None:
        return _between(self.start_time, self.answer_time)


def _between(start: datetime | None, end: datetime | None) -> timedelta | None:
    if start is None or end is None:
        return None
    return end - start


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event log: a body exactly as received and what became of it."""

    id: int
    received_at: datetime
    body: bytes
    outcome: Outcome
    reason: str | None
    detail: str
    call_id: str | None
    event_type: str | None
    # None for a body handed to `apply`; `sweep` for an entry the sweep wrote: its own end of a
    # call (event type `sweep`, a body of the tracker's own) or a body its `resolve` hook gave.
    origin: str | None = None


# The outcomes a re-drive takes: the only ones a later release, or data that changed since, can
# turn out differently (an applied, duplicate or ignored delivery would come back a duplicate or
# ignored again).
REDRIVEN_OUTCOMES: Final = (Outcome.REJECTED, Outcome.INVALID)


@dataclass(frozen=True, slots=True)
class RedriveReport:
    """What `Tracker.redrive` did. `redriven` bodies were applied again, giving the new
    outcomes counted in `outcomes` by (outcome, reason); `repeats` entries held a body this run
    had already applied (a retried delivery, or an earlier re-drive's entry); `too_large`
    entries were skipped, their body cut at the size limit when logged."""

    redriven: int
    outcomes: Mapping[tuple[Outcome, str | None], int]
    repeats: int
    too_large: int

    @property
    def applied(self) -> int:
        """How many re-driven bodies were applied this time."""
        return sum(n for (outcome, _), n in self.outcomes.items() if outcome is Outcome.APPLIED)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What `Tracker.sweep` did. `checked`: the live calls it looked at; `expired`: the ids of
    those it ended (disposition `expired`); `resolved`: the ids of those the provider's answer
    (from the `resolve` hook) ended instead; `kept`: calls the answer showed still going (or
    alive lately), so left live; `failed`: calls whose look-up failed (`ProviderError`), left
    live for the next sweep to ask again: never expired on a failure."""

    checked: int
    expired: tuple[str, ...]
    resolved: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """What `Tracker.upgrade` did: the revision found (None: an empty database) and the head."""

    from_revision: str | None
    to_revision: str

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


@dataclass(frozen=True, slots=True)
class CallDifference:
    """One call whose live record is not the one its logged deliveries give. `kind` is
    `differs` (both exist; `fields` names the record fields that differ, `transfers` among
    them), `not_live` (the log gives the call, the database has no row for it) or `not_in_log`
    (the database has the call, no applied delivery in the log tells of it: a pruned log)."""

    call_id: str
    kind: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What `Tracker.rebuild` found, and with `apply=True`, what it wrote.

    `deliveries_replayed`: the applied deliveries of the log, replayed in log order;
    `not_reapplied`: the log ids of those the replay did not apply again (their order mattered,
    which the tracker's guarantees say cannot happen for one consistent workload);
    `written`: the calls whose recomputed record was written; `moved`: differing calls a
    delivery changed after the comparison, left as they are; `stopped`: why writing stopped
    early (deliveries applied while the rebuild ran), None when it did not.

    So that a report stays small however much differs, `differences`, `written` and `moved`
    list at most `tracker.rebuilding.REPORTED` calls each (the first by call id);
    `calls_differing`, `calls_written` and `calls_moved` count them all."""

    calls_checked: int
    deliveries_replayed: int
    differences: tuple[CallDifference, ...]
    not_reapplied: tuple[int, ...] = ()
    applied: bool = False
    written: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()
    stopped: str | None = None
    calls_differing: int = 0
    calls_written: int = 0
    calls_moved: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """One applied delivery of the change feed (`Tracker.changes`). `call` is the call as it
    was when the feed read it, not as this delivery left it: several changes of one call in a
    page carry the same snapshot. `origin` is None for a body handed to `apply`, `sweep` for an
    entry the housekeeping sweep wrote. `cursor` resumes the feed just after this change."""

    id: int
    received_at: datetime
    outcome: Outcome
    event_type: str | None
    origin: str | None
    call_id: str | None
    call: Call | None
    cursor: str


@dataclass(frozen=True, slots=True)
class ChangesPage:
    """What one `Tracker.changes` call read: the changes in the order they became visible, the
    cursor to pass next time, and `more`: the read stopped at its limit, so call again at once
    rather than after a pause."""

    changes: tuple[Change, ...]
    cursor: str
    more: bool


@dataclass(frozen=True, slots=True)
class CallStatistics:
    """The numbers of one bucket of `Tracker.stats`: the calls (legs included) that started in
    it. `start`/`end` bound the bucket (an hour or a day; the window asked for otherwise, None
    where open); `account_id` is the bucket's account (`by="account"`; None there is the calls of
    no known account) or the account asked for. Times are float seconds. How each figure is
    counted is in docs/statistics.md and in `tracker.statistics`."""

    start: datetime | None
    end: datetime | None
    account_id: str | None
    attempts: int
    answered: int
    # Attempts not ended yet: ringing or talking (the rest are counted in `dispositions`).
    live: int
    # Mean talk time (end - answer) of the answered calls that have an end time.
    acd: float | None
    # Mean ring time (answer - start) of the answered calls.
    mean_ring_time: float | None
    dispositions: Mapping[str, int]
    causes: Mapping[str, int]
    peak_concurrent_calls: int
    # Ended attempts per where their end came from (`callback`, `provider`, `sweep`): a rising
    # provider or sweep share is a tenant whose callbacks are being lost.
    end_sources: Mapping[str, int] = field(default_factory=dict)
    # With a billing policy (`billing=`, docs/reporting.md), else None: the seconds billed for
    # the bucket's calls, their mean per answered call with an end time (the calls ACD counts),
    # and the answered calls with no end time yet, which bill 0 until their end is known.
    billable_seconds: int | None = None
    mean_billable_seconds: float | None = None
    answered_without_end: int | None = None
    # The bucket's number with `by="number"` (its `to` or `from`; None: no known number).
    number: str | None = None

    @property
    def asr(self) -> float | None:
        """Answer-seizure ratio: answered / attempts (None without attempts)."""
        return self.answered / self.attempts if self.attempts else None
