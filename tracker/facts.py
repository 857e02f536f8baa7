"""Part of the lifecycle: the facts of one call. The disposition a cause means, the record of a
call as stored (`CallRecord`), which event's facts win when two say different things (`RANKS`,
`offered_by`), and the `Decision` the lifecycle returns.

Pure: no I/O, no state machine. `tracker.lifecycle` merges an event's facts into a record with
these; `tracker.rules` compares them with what a record already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

from tracker.parsing import Disconnect, Event, Initiate, TransferDisconnect
from tracker.records import (
    DISCONNECTED,
    INITIATED,
    IgnoredReason,
    Outcome,
    Reason,
    TransferAttempt,
    Transition,
)

# Causes Bandwidth documents map to a disposition; every other cause (including ones no list
# names yet) is a failure, and the cause itself is kept verbatim.
DISPOSITIONS: Final = {
    "hangup": "completed",
    "busy": "busy",
    "timeout": "no-answer",
    "cancel": "cancelled",
    "rejected": "rejected",
}
FAILED: Final = "failed"
# A call the sweep ended because its terminal event never came (`lifecycle.expire`): no cause.
EXPIRED: Final = "expired"
ALL_DISPOSITIONS: Final = (*DISPOSITIONS.values(), FAILED, EXPIRED)


def disposition_of(cause: str) -> str:
    return DISPOSITIONS.get(cause, FAILED)


# Which event types' facts win when two events of one call say different things, so that the
# result does not depend on the order they arrive in: the terminal event carries the call's
# complete facts; a live event's facts stand until it comes. One rank per type, so two events
# only tie when they are of one type.
RANKS: Final = {
    "transferComplete": 1,
    "machineDetectionComplete": 2,
    "initiate": 3,
    "transferAnswer": 4,
    "answer": 5,
    "transferDisconnect": 6,
    "disconnect": 7,
}
# The event a history's `answered` step names, among those that carry the answerTime: the one
# whose news it is, before those that merely repeat it.
_ANSWER_NEWS: Final = (
    "answer",
    "transferAnswer",
    "disconnect",
    "transferDisconnect",
    "transferComplete",
    "machineDetectionComplete",
)
TERMINAL_RANK: Final = RANKS["transferDisconnect"]
# The rank `sources` gives a fact the provider's answer filled (`lifecycle.provide`): below every
# callback's, so any callback that carries the fact replaces it, and a terminal callback
# replaces every one of them (`lifecycle.without_provider`).
PROVIDER_RANK: Final = 0
# The facts a provider's answer may fill, each only where the callbacks said nothing of it.
PROVIDER_FACTS: Final = (
    "parent_call_id",
    "application_id",
    "direction",
    "from_number",
    "to_number",
    "enqueued_time",
    "start_time",
    "answer_time",
    "end_time",
    "cause",
    "disposition",
    "error_message",
    "error_id",
)


# Not frozen: a frozen dataclass's constructor costs ten times a plain one's, and a record is
# built several times per delivery. It is a value all the same: nothing changes one in place
# (a batch shares each record between its cache, the decisions and the compare-and-set
# expectation); a change is a new record, made by `changed`.
@dataclass(slots=True)
class CallRecord:
    """The facts of one call as stored. A call no event of its own has reached yet
    (`seen_rank` 0) is a placeholder: a parent seen only through its legs, holding only what
    the legs say of it."""

    call_id: str
    parent_call_id: str | None = None
    account_id: str | None = None
    application_id: str | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    state: str = INITIATED
    cause: str | None = None
    disposition: str | None = None
    start_time: datetime | None = None
    answer_time: datetime | None = None
    end_time: datetime | None = None
    enqueued_time: datetime | None = None
    tag: str | None = None
    error_message: str | None = None
    error_id: str | None = None
    terminal_event: str | None = None
    answer_event: str | None = None
    machine_detection: str | None = None
    attestation: str | None = None
    verstat: str | None = None
    diversion: dict[str, Any] | None = None
    caller_display_name: str | None = None
    # When the sweep ended a call whose end was lost (`lifecycle.expire`); None once a real terminal
    # event says how it ended.
    swept_at: datetime | None = None
    # Where the call's end came from (`END_SOURCES`), None while live: `end_source_of`.
    end_source: str | None = None
    # For a placeholder: the leg whose from/to it shows. The earliest leg (start time, then id)
    # wins, so the result does not depend on which leg arrived first.
    numbers_leg_id: str | None = None
    numbers_leg_start: datetime | None = None
    # The highest `RANKS` of the call's own events so far (0: a placeholder), and for each fact
    # the rank of the event it came from, so a later event knows whether it may replace it.
    seen_rank: int = 0
    sources: dict[str, int] = dataclass_field(default_factory=dict)
    # The history as stored, each step with the delivery that made it. `lifecycle.history_of`
    # says what the steps are; the storage layer keeps this in step with it and only it writes it.
    history: tuple[Transition, ...] = ()
    # Compare-and-set token of the storage layer; the lifecycle only carries it along.
    version: int = 0

    @property
    def is_placeholder(self) -> bool:
        return self.seen_rank == 0


# The facts an event may set, merged by rank (see `tracker.lifecycle`).
MERGED_FACTS: Final = (
    "application_id",
    "direction",
    "from_number",
    "to_number",
    "enqueued_time",
    "tag",
    "cause",
    "disposition",
    "error_message",
    "error_id",
    "end_time",
    "terminal_event",
    "machine_detection",
    "attestation",
    "verstat",
    "diversion",
    "caller_display_name",
)


# The values the lifecycle makes on every delivery are plain slots dataclasses, as
# `CallRecord` is: a frozen one's constructor sets each field through `object.__setattr__`,
# five times the cost of a plain one's (a `Decision` took about a microsecond more per delivery).
# They are values all the same: nothing changes one once made.
@dataclass(slots=True)
class TransitionTaken:
    source: str
    target: str
    at: datetime
    event: str


@dataclass(slots=True)
class Decision:
    """What applying one event means. `call`/`parent` hold (before, after) pairs to write; a
    `before` of None means the row is new. `history` is the call's whole history as `after`
    leaves it (`lifecycle.history_of(after)`, walked once); a leg never changes its parent's."""

    outcome: Outcome
    detail: str
    reason: Reason | IgnoredReason | None = None
    call: tuple[CallRecord | None, CallRecord] | None = None
    parent: tuple[CallRecord | None, CallRecord] | None = None
    transfer: TransferAttempt | None = None
    history: tuple[TransitionTaken, ...] = ()
    # Set when the tree the call belongs to learns its account: every call of the tree without
    # one takes it (a transfer never crosses accounts, see `rules.account_of`).
    fill_account: str | None = None


RECORD_FIELDS: Final = tuple(field.name for field in fields(CallRecord))
_POSITION: Final = {name: index for index, name in enumerate(RECORD_FIELDS)}
# Every field of a record as one tuple, in `RECORD_FIELDS` order, in one C call.
facts_of: Final = attrgetter(*RECORD_FIELDS)


def changed(call: CallRecord, changes: dict[str, Any]) -> CallRecord:
    """A new record: `call` with `changes`. (`dataclasses.replace`, at a fraction of its cost:
    records change on every delivery.)"""
    values = list(facts_of(call))
    for name, value in changes.items():
        values[_POSITION[name]] = value
    return CallRecord(*values)


# Where an ended call's end came from: a terminal callback, Bandwidth's call state API (its
# answer when the callback was lost), or the sweep (nobody could say).
CALLBACK: Final = "callback"
PROVIDER: Final = "provider"
SWEPT: Final = "sweep"
END_SOURCES: Final = (CALLBACK, PROVIDER, SWEPT)
"""Where an ended call's end came from (`Call.end_source`): its terminal callback, Bandwidth's
call state API (the callback lost), or the sweep (nobody could say)."""


def end_source_of(state: str, terminal_event: str | None, swept_at: datetime | None) -> str | None:
    """A function of the facts, so of the deliveries and not of their order: a terminal
    callback's end wins over the provider's, which wins over the sweep's (`lifecycle.provide`,
    `lifecycle.expire`)."""
    if state != DISCONNECTED:
        return None
    if terminal_event is not None:
        return CALLBACK
    return SWEPT if swept_at is not None else PROVIDER


def answer_news(event_type: str | None) -> int:
    return _ANSWER_NEWS.index(event_type) if event_type in _ANSWER_NEWS else len(_ANSWER_NEWS)


def offered_by(event: Event) -> dict[str, Any]:
    """The mergeable facts this event carries (absent ones are not offered: absent is never a
    contradiction, nor a reason to forget what another event said)."""
    facts: dict[str, Any] = {
        "application_id": event.application_id,
        "direction": event.direction,
        "from_number": event.own_from,
        "to_number": event.own_to,
        "enqueued_time": event.enqueued_time,
        "tag": event.tag,
        "machine_detection": event.machine_detection,
    }
    cause = event.ending_cause
    if cause is not None:
        assert isinstance(event, Disconnect | TransferDisconnect)
        facts.update(
            cause=cause,
            disposition=disposition_of(cause),
            error_message=event.error_message,
            error_id=event.error_id,
            end_time=event.end_time,
            terminal_event=event.event_type,
        )
    if isinstance(event, Initiate):
        stir_shaken = event.stir_shaken
        facts.update(
            attestation=stir_shaken.attestation_indicator if stir_shaken else None,
            verstat=stir_shaken.verstat if stir_shaken else None,
            diversion=event.diversion,
            caller_display_name=event.caller_display_name,
        )
    return {name: value for name, value in facts.items() if value is not None}
