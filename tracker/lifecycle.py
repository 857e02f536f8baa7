"""Stage 2 of the pipeline: what one terminal event does to the calls it concerns.

Pure: no I/O. It takes the event and the records it touches (the call, its parent, the parent's
ancestry) and returns a `Decision`: the new records, the transitions taken, or the rule broken.
The state graph is the table just below; every rule that rejects an event has its own code in
`Reason` and one function here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from functools import cache
from operator import attrgetter
from typing import Any, Final

from transitions import Machine, MachineError

from tracker import instants
from tracker.parsing import (
    CallUrl,
    Disconnect,
    Event,
    Initiate,
    MachineDetectionComplete,
    TransferComplete,
    TransferDisconnect,
    read_call_url,
    shown,
)

# The states are defined with the records that carry them; named here too, as the machine's.
from tracker.records import ANSWERED as ANSWERED
from tracker.records import DISCONNECTED as DISCONNECTED
from tracker.records import INITIATED as INITIATED
from tracker.records import LIVE_STATES as LIVE_STATES
from tracker.records import STATES as STATES
from tracker.records import Outcome, Reason, TransferAttempt, Transition

# The whole lifecycle. `disconnected` is terminal: no transition leaves it.
TRANSITIONS: Final = (
    {"trigger": "answer", "source": INITIATED, "dest": ANSWERED},
    {"trigger": "end", "source": [INITIATED, ANSWERED], "dest": DISCONNECTED},
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
# A call the sweep ended because its terminal event never came (`expire`): no cause.
EXPIRED: Final = "expired"
ALL_DISPOSITIONS: Final = (*DISPOSITIONS.values(), FAILED, EXPIRED)
# What a history step the sweep made names as its event.
SWEEP: Final = "sweep"


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
    # When the sweep ended a call whose end was lost (`expire`); None once a real terminal
    # event says how it ended.
    swept_at: datetime | None = None
    # For a placeholder: the leg whose from/to it shows. The earliest leg (start time, then id)
    # wins, so the result does not depend on which leg arrived first.
    numbers_leg_id: str | None = None
    numbers_leg_start: datetime | None = None
    # The highest `RANKS` of the call's own events so far (0: a placeholder), and for each fact
    # the rank of the event it came from, so a later event knows whether it may replace it.
    seen_rank: int = 0
    sources: dict[str, int] = dataclass_field(default_factory=dict)
    # The history as stored, each step with the delivery that made it. `history_of` says what
    # the steps are; the storage layer keeps this in step with it and only it writes it.
    history: tuple[Transition, ...] = ()
    # Compare-and-set token of the storage layer; the lifecycle only carries it along.
    version: int = 0

    @property
    def is_placeholder(self) -> bool:
        return self.seen_rank == 0


# The facts an event may set, merged by rank (see `_merge`).
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
# What a terminal event says: a second one agrees when it says all of it the same.
_TERMINAL_FACTS: Final = (
    "start_time",
    "answer_time",
    "end_time",
    "cause",
    "error_message",
    "error_id",
    "terminal_event",
    "direction",
    "from_number",
    "to_number",
    "application_id",
    "enqueued_time",
    "tag",
)


@dataclass(frozen=True, slots=True)
class TransitionTaken:
    source: str
    target: str
    at: datetime
    event: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What applying one event means. `call`/`parent` hold (before, after) pairs to write; a
    `before` of None means the row is new. `history` is the call's whole history as `after`
    leaves it (`history_of(after)`, walked once here); a leg never changes its parent's."""

    outcome: Outcome
    detail: str
    reason: Reason | None = None
    call: tuple[CallRecord | None, CallRecord] | None = None
    parent: tuple[CallRecord | None, CallRecord] | None = None
    transfer: TransferAttempt | None = None
    history: tuple[TransitionTaken, ...] = ()
    # Set when the tree the call belongs to learns its account: every call of the tree without
    # one takes it (a transfer never crosses accounts, see `_account_of`).
    fill_account: str | None = None


# One machine per process, built from the table above: the one authority on which moves are
# legal. The lifecycle asks it for each move (`get_transitions`) rather than firing its
# triggers: a state and a history follow from a call's facts alone, so no model needs moving,
# and asking costs about a microsecond where firing costs fifteen (callbacks, logging).
_MACHINE: Final = Machine(
    model=None,
    states=list(STATES),
    transitions=[dict(t) for t in TRANSITIONS],
    initial=INITIATED,
    auto_transitions=False,
)


@cache
def move(trigger: str, source: str) -> str:
    """The state `trigger` takes a call in `source` to, as the machine says; `MachineError`
    when the machine has no such move (nothing leaves `disconnected`). Remembered per pair: the
    machine's table never changes once built."""
    found = _MACHINE.get_transitions(trigger, source=source)
    if not found:
        raise MachineError(f"Can't trigger event {trigger} from state {source}!")
    dest = found[0].dest
    assert dest is not None
    return dest


def history_of(call: CallRecord) -> tuple[str, tuple[TransitionTaken, ...]]:
    """The state and history a call's facts give: the machine walked from `initiated` (at the
    start time) through `answered` at the answer time and `disconnected` at the end time,
    whichever events taught them and in whatever order they came. So the state only moves
    forward, and a late event fills in the step it knows without undoing a later one."""
    return _walk(
        call.answer_time, call.answer_event, call.end_time, call.terminal_event, call.swept_at
    )


def _walk(
    answer_time: datetime | None,
    answer_event: str | None,
    end_time: datetime | None,
    terminal_event: str | None,
    swept_at: datetime | None,
) -> tuple[str, tuple[TransitionTaken, ...]]:
    state = INITIATED
    taken: list[TransitionTaken] = []
    if end_time is None and swept_at is not None:  # ended by the sweep until the real end comes
        end_time, terminal_event = swept_at, SWEEP
    for trigger, at, event in (
        ("answer", answer_time, answer_event),
        ("end", end_time, terminal_event),
    ):
        if at is not None:
            assert event is not None  # each time comes with the event that told it
            target = move(trigger, state)
            taken.append(TransitionTaken(state, target, at, event))
            state = target
    return state, tuple(taken)


def decide(
    event: Event,
    call: CallRecord | None,
    parent: CallRecord | None,
    parent_ancestry: Sequence[str] = (),
) -> Decision:
    """Apply `event` to `call` (None when never seen) and its `parent` (None when the event names
    none, or names one never seen). `parent_ancestry` lists the parent's ancestors, nearest
    first."""
    url = read_call_url(event.call_url)
    rejection = (
        _check_call_url(event, url)
        or _check_times(event.event_type, event.start_time, event.answer_time, event.end_time)
        or _check_ancestry(event, parent_ancestry)
    )
    if rejection is not None:
        return rejection
    tree_account = _account_of(event, url, call, parent)
    if isinstance(tree_account, Decision):
        return tree_account
    base = call if call is not None else CallRecord(call_id=event.call_id)
    rejection = _check_against(event, base)
    if rejection is not None:
        return rejection
    after, history = _merge(event, base, tree_account.account)
    rejection = _check_times("call", after.start_time, after.answer_time, after.end_time)
    if rejection is not None:
        return rejection
    # Applied even when it teaches nothing new (a late `answer` repeating what the `disconnect`
    # said): it is a delivery of its own; only the very same delivery is a duplicate, which the
    # caller recognises by its content key before asking.
    transfer = _transfer_attempt(event)
    return Decision(
        outcome=Outcome.APPLIED,
        detail=_what_happened(event, after),
        call=(call, after),
        parent=_parent_after(event, after, parent, tree_account.account)
        if event.parent_call_id
        else None,
        transfer=transfer,
        history=history,
        fill_account=tree_account.account if tree_account.tree_learns_it else None,
    )


def last_known_time(call: CallRecord) -> datetime | None:
    """The latest instant the call's facts name: its start, its answer, and for a placeholder
    (a parent seen only through its legs) the start of the leg it was seen through. None when
    no fact names one (a call seen only through a `transferComplete` or a
    `machineDetectionComplete` without `startTime`)."""
    known = [
        instant
        for instant in (call.start_time, call.answer_time, call.numbers_leg_start)
        if instant is not None
    ]
    return max(known, default=None)


def sweepable(call: CallRecord, cutoff: datetime) -> bool:
    """Whether the sweep ends `call`: live, and last heard of before `cutoff` (or never dated:
    see `expire`)."""
    if call.state not in LIVE_STATES:
        return False
    known = last_known_time(call)
    return known is None or known < cutoff


def expire(call: CallRecord | None, at: datetime, cutoff: datetime | None) -> Decision | None:
    """The sweep's end of a call whose terminal event never came: `disconnected` at `at`, with
    disposition `expired`, no cause and no end time (nobody knows when it ended), by the
    machine's own `end` move. None when there is nothing to sweep: the call ended meanwhile, or
    was heard of at or after `cutoff` (None: no age check, as when a rebuild replays a sweep).
    A call no fact dates is swept: its age is unknown, and the sweep is undone by the real end
    when it comes (`_merge`), so ending it wrongly costs less than leaving it live for ever."""
    if call is None or call.state not in LIVE_STATES:
        return None
    if cutoff is not None and not sweepable(call, cutoff):
        return None
    known = last_known_time(call)
    after = changed(call, {"swept_at": at, "disposition": EXPIRED})
    state, history = history_of(after)
    after = changed(after, {"state": state})
    heard = f"nothing heard of it since {_iso(known)}" if known else "no time known for it"
    return Decision(
        outcome=Outcome.APPLIED,
        detail=f"call {call.call_id} expired by the sweep at {_iso(at)}: {heard}",
        call=(call, after),
        history=history,
    )


def _offered(event: Event) -> dict[str, Any]:
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


def _merge(
    event: Event, call: CallRecord, account: str | None
) -> tuple[CallRecord, tuple[TransitionTaken, ...]]:
    """The call as this event leaves it, and its history. Each fact keeps the value of the
    highest-ranked event that carried it (ties, two events of one type, go to the larger
    value), so any order of arrival gives the same record."""
    rank = RANKS[event.event_type]
    sources = dict(call.sources)
    changes: dict[str, Any] = {}
    for name, value in _offered(event).items():
        held = sources.get(name, 0)
        current = getattr(call, name)
        if held < rank or (held == rank and value != current and str(value) > str(current)):
            changes[name] = value
            sources[name] = rank
    if event.IS_LEG is False or event.parent_call_id is not None:
        # Known now: a leg of that parent, or no leg at all (a `transferAnswer` without
        # `parentCallId` is a leg whose parent is still unknown).
        sources.setdefault("parent_call_id", rank)
    if event.parent_call_id is not None:
        changes["parent_call_id"] = event.parent_call_id
    if event.start_time is not None:
        changes["start_time"] = event.start_time
    if event.answer_time is not None:
        changes["answer_time"] = event.answer_time
        if _answer_news(event.event_type) < _answer_news(call.answer_event):
            changes["answer_event"] = event.event_type
    if account is not None:
        changes["account_id"] = account
    if {"from_number", "to_number"} & changes.keys():
        changes.update(numbers_leg_id=None, numbers_leg_start=None)
    if "end_time" in changes and call.swept_at is not None:
        # The real end replaces the sweep's entirely; the disposition went with the cause.
        changes["swept_at"] = None
    changes["seen_rank"] = max(call.seen_rank, rank)
    changes["sources"] = sources
    state, history = _walk(
        *(
            changes[name] if name in changes else getattr(call, name)
            for name in ("answer_time", "answer_event", "end_time", "terminal_event", "swept_at")
        )
    )
    changes["state"] = state
    return changed(call, changes), history


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


def _answer_news(event_type: str | None) -> int:
    return _ANSWER_NEWS.index(event_type) if event_type in _ANSWER_NEWS else len(_ANSWER_NEWS)


def _transfer_attempt(event: Event) -> TransferAttempt | None:
    if not isinstance(event, TransferComplete):
        return None
    return TransferAttempt(
        at=event.event_time,
        cause=event.cause,
        disposition=disposition_of(event.cause),
        transfer_to=event.transfer_to,
        transfer_caller_id=event.transfer_caller_id,
        error_message=event.error_message,
        error_id=event.error_id,
    )


def _what_happened(event: Event, call: CallRecord) -> str:
    if isinstance(event, TransferComplete):
        return f"call {event.call_id} recorded a transfer attempt ({event.cause})"
    if isinstance(event, MachineDetectionComplete):
        return f"call {event.call_id} machine detection: {call.machine_detection}"
    answered = f", answered at {_iso(call.answer_time)}" if call.answer_time else ""
    if call.state == DISCONNECTED:
        return f"call {event.call_id} disconnected ({call.cause or call.disposition}){answered}"
    return f"call {event.call_id} is {call.state}{answered}"


def _parent_after(
    event: Event, leg: CallRecord, parent: CallRecord | None, account: str | None
) -> tuple[CallRecord | None, CallRecord]:
    """The parent as this leg leaves it. A leg always writes its parent (at least its version),
    so that a concurrent change to the parent and this leg cannot both commit unseen. `account`
    is the tree's, as `_account_of` resolved it: a parent without one takes it."""
    assert event.parent_call_id is not None and leg.start_time is not None
    if parent is None:
        placeholder = CallRecord(
            call_id=event.parent_call_id,
            account_id=account,
            from_number=event.from_number,
            to_number=event.to_number,
            numbers_leg_id=leg.call_id,
            numbers_leg_start=leg.start_time,
        )
        return None, placeholder
    after = parent
    if parent.account_id is None:  # the tree learns its account (see `_account_of`)
        after = changed(after, {"account_id": account})
    # The original call's numbers, as its legs' events repeat them, stand until an event of
    # its own says them; of several legs, the earliest one's.
    own_numbers = {"from_number", "to_number"} & parent.sources.keys()
    if not own_numbers and _earlier_leg(leg, parent):
        after = replace(
            after,
            from_number=event.from_number,
            to_number=event.to_number,
            numbers_leg_id=leg.call_id,
            numbers_leg_start=leg.start_time,
        )
    return parent, after


def _earlier_leg(leg: CallRecord, placeholder: CallRecord) -> bool:
    if placeholder.numbers_leg_start is None or placeholder.numbers_leg_id is None:
        return True
    return leg_order(leg.call_id, leg.start_time) < leg_order(
        placeholder.numbers_leg_id, placeholder.numbers_leg_start
    )


_NO_START_YET: Final = datetime.min.replace(tzinfo=UTC)


def leg_order(call_id: str, start_time: datetime | None) -> tuple[bool, datetime, str]:
    """Where a leg sorts among its siblings: by start time, then id, and a call with no start
    time yet (a placeholder) last. `storage.BY_START_TIME` is the same order in SQL."""
    return (start_time is None, start_time or _NO_START_YET, call_id)


def _check_against(event: Event, call: CallRecord) -> Decision | None:
    """The rules that compare the event with what the call already has."""
    said_parent = event.parent_call_id
    known_parent = call.parent_call_id
    not_a_leg = event.IS_LEG is False
    known_not_a_leg = known_parent is None and "parent_call_id" in call.sources
    if (
        (said_parent is not None and known_parent not in (None, said_parent))
        or (not_a_leg and known_parent is not None)
        or (said_parent is not None and known_not_a_leg)
    ):
        return _reject(
            Reason.PARENT_CHANGED,
            f"call {call.call_id} is a leg of {known_parent or 'no call'}, "
            f"but this event makes it a leg of {said_parent or 'no call'}",
        )
    if call.direction is not None and event.direction not in (None, call.direction):
        return _reject(
            Reason.DIRECTION_CHANGED,
            f"call {call.call_id} is {call.direction}, but this event says {event.direction}; "
            "a call's direction never changes",
        )
    if call.terminal_event is not None and event.ending_cause is not None:
        return _second_terminal_event(event, call)
    for name, reason in (
        ("start_time", Reason.START_TIME_CHANGED),
        ("answer_time", Reason.ANSWER_TIME_CHANGED),
    ):
        known, said = getattr(call, name), getattr(event, name)
        if known is not None and said is not None and known != said:
            return _reject(
                reason,
                f"call {call.call_id} has {_camel(name)} {_iso(known)}, but this "
                f"{event.event_type} event says {_iso(said)}",
            )
    return None


def _second_terminal_event(event: Event, call: CallRecord) -> Decision:
    """A call ends once. Another terminal event that says the same is a repeat of it; one that
    says otherwise is refused, naming the first facts that differ. What the first one said is
    each fact it was the source of (a live event's tag, say, is not its word)."""
    offered = _offered(event) | {
        "start_time": event.start_time,
        "answer_time": event.answer_time,
    }
    said_first = {
        name: getattr(call, name)
        if name in ("start_time", "answer_time") or call.sources.get(name, 0) >= TERMINAL_RANK
        else None
        for name in _TERMINAL_FACTS
    }
    differing = [name for name in _TERMINAL_FACTS if said_first[name] != offered.get(name)]
    if not differing:
        return Decision(
            outcome=Outcome.DUPLICATE,
            detail=f"call {call.call_id} already ended with exactly these facts",
        )
    shown_facts = ", ".join(
        f"{name} {_show(said_first[name])} vs {_show(offered.get(name))}" for name in differing[:4]
    )
    return _reject(
        Reason.CONFLICTING_TERMINAL_EVENT,
        f"call {call.call_id} already ended and this terminal event disagrees: {shown_facts}",
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True, slots=True)
class _TreeAccount:
    account: str | None
    # True when a tree that had no account learns it from this event: every call of the tree
    # then takes it (the parent in this decision, the rest by `Decision.fill_account`).
    tree_learns_it: bool


def _account_of(
    event: Event, url: CallUrl | None, call: CallRecord | None, parent: CallRecord | None
) -> _TreeAccount | Decision:
    """The one home of the account rule. A call's account comes from its body, else its
    callUrl path, else its transfer tree: a transfer never crosses accounts, so every call of
    a tree has the same account, stored on each (so that filters and statistics by account
    are plain indexed reads). A leg and its parent must agree; a placeholder's account came
    from its legs, so its own event must agree with them; and a tree that had none learns it
    from the first call that brings one."""
    account = _resolved_account(event, url, call, parent)
    if isinstance(account, Decision):
        return account
    lacking = (parent is not None and parent.account_id is None) or (
        call is not None and call.account_id is None
    )
    return _TreeAccount(account, tree_learns_it=account is not None and lacking)


def _resolved_account(
    event: Event, url: CallUrl | None, call: CallRecord | None, parent: CallRecord | None
) -> str | Decision | None:
    own = event.account_id or (url.account_id if url else None)
    if call is not None and call.is_placeholder and call.account_id is not None:
        # A placeholder's account came from its legs.
        if own is not None and own != call.account_id:
            return _reject(
                Reason.LEG_ACCOUNT_MISMATCH,
                f"call {event.call_id} says account {own}, but its legs belong to "
                f"account {call.account_id}",
            )
        own = call.account_id
    elif call is not None and call.account_id is not None and own not in (None, call.account_id):
        return _reject(
            Reason.ACCOUNT_CHANGED,
            f"call {call.call_id} belongs to account {call.account_id}, but this event says {own}",
        )
    if parent is not None and parent.account_id is not None:
        if own is not None and own != parent.account_id:
            return _reject(
                Reason.LEG_ACCOUNT_MISMATCH,
                f"leg {event.call_id} belongs to account {own}, but its parent "
                f"{parent.call_id} belongs to account {parent.account_id}",
            )
        own = parent.account_id
    if own is None and call is not None:
        own = call.account_id
    return own


def _check_call_url(event: Event, url: CallUrl | None) -> Decision | None:
    if url is None:
        return None
    if url.call_id != event.call_id:
        return _reject(
            Reason.CALL_URL_CALL_MISMATCH,
            f"callUrl names call {url.call_id}, but the body is about call {event.call_id}",
        )
    if event.account_id is not None and url.account_id != event.account_id:
        return _reject(
            Reason.CALL_URL_ACCOUNT_MISMATCH,
            f"callUrl names account {url.account_id}, but accountId is {event.account_id}",
        )
    return None


def _check_times(
    what: str, start: datetime | None, answer: datetime | None, end: datetime | None
) -> Decision | None:
    """A call answers within itself and ends after it starts: the event's own times, then the
    call's once the event's are merged in (an `answer` after its `disconnect` must fit)."""
    if start is not None and end is not None and end < start:
        return _reject(
            Reason.END_BEFORE_START,
            f"the {what}'s endTime {_iso(end)} is before its startTime {_iso(start)}",
        )
    if answer is not None and (
        (start is not None and answer < start) or (end is not None and answer > end)
    ):
        return _reject(
            Reason.ANSWER_OUTSIDE_CALL,
            f"the {what}'s answerTime {_iso(answer)} is outside the call, which ran from "
            f"{_iso(start)} to {_iso(end)}",
        )
    return None


def _check_ancestry(event: Event, parent_ancestry: Sequence[str]) -> Decision | None:
    parent_id = event.parent_call_id
    if parent_id is None:
        return None
    if parent_id == event.call_id or event.call_id in parent_ancestry:
        chain = " -> ".join([event.call_id, parent_id, *parent_ancestry])
        return _reject(
            Reason.ANCESTRY_CYCLE,
            f"call {event.call_id} would become its own ancestor ({chain})",
        )
    return None


def _reject(reason: Reason, detail: str) -> Decision:
    return Decision(outcome=Outcome.REJECTED, reason=reason, detail=detail)


def _iso(value: datetime | None) -> str:
    return instants.text(value) if value else "none"


def _show(value: object) -> str:
    if isinstance(value, datetime):
        return _iso(value)
    return shown(value)
