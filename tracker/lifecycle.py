"""Stage 2 of the pipeline: what one terminal event does to the calls it concerns.

Pure: no I/O. It takes the event and the records it touches (the call, its parent, the parent's
ancestry) and returns a `Decision`: the new records, the transitions taken, or the rule broken.
The state graph is the table just below; every rule that rejects an event has its own code in
`Reason` and one function here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Final

from transitions import EventData, Machine

from tracker.parsing import CallUrl, TerminalEvent, read_call_url, shown
from tracker.records import Outcome, Reason

INITIATED: Final = "initiated"
ANSWERED: Final = "answered"
DISCONNECTED: Final = "disconnected"

STATES: Final = (INITIATED, ANSWERED, DISCONNECTED)

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
ALL_DISPOSITIONS: Final = (*DISPOSITIONS.values(), FAILED)


def disposition_of(cause: str) -> str:
    return DISPOSITIONS.get(cause, FAILED)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """The facts of one call as stored. A call whose `terminal_event` is None is a placeholder:
    a parent seen only through its legs, holding only what the legs say of it."""

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
    # For a placeholder: the leg whose from/to it shows. The earliest leg (start time, then id)
    # wins, so the result does not depend on which leg arrived first.
    numbers_leg_id: str | None = None
    numbers_leg_start: datetime | None = None
    # Compare-and-set token of the storage layer; the lifecycle only carries it along.
    version: int = 0

    @property
    def is_placeholder(self) -> bool:
        return self.terminal_event is None


# Facts a terminal event sets; a second terminal event agrees when it sets them all the same.
_FACTS: Final = tuple(
    f.name
    for f in fields(CallRecord)
    if f.name not in {"call_id", "numbers_leg_id", "numbers_leg_start", "version"}
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
    `before` of None means the row is new."""

    outcome: Outcome
    detail: str
    reason: Reason | None = None
    call: tuple[CallRecord | None, CallRecord] | None = None
    parent: tuple[CallRecord | None, CallRecord] | None = None
    transitions: tuple[TransitionTaken, ...] = ()
    # Set when the tree the call belongs to learns its account: every call of the tree without
    # one takes it (a transfer never crosses accounts, see `_account_of`).
    fill_account: str | None = None


class _Walk:
    """The light model the shared machine moves: a state and the transitions taken."""

    __slots__ = ("state", "taken")

    def __init__(self, state: str) -> None:
        self.state = state
        self.taken: list[TransitionTaken] = []

    def record(self, event: EventData) -> None:
        transition = event.transition
        assert transition is not None and transition.dest is not None
        self.taken.append(
            TransitionTaken(
                transition.source, transition.dest, event.kwargs["at"], event.kwargs["event"]
            )
        )


# One machine per process, never one per call: building a Machine costs hundreds of
# microseconds, firing an event on a shared one about ten (see the fsm-persistence anchors).
_MACHINE: Final = Machine(
    model=None,
    states=list(STATES),
    transitions=[dict(t) for t in TRANSITIONS],
    initial=INITIATED,
    auto_transitions=False,
    send_event=True,
    after_state_change="record",
)


def _fire(walk: _Walk, trigger: str, **details: Any) -> None:
    _MACHINE.events[trigger].trigger(walk, **details)


def decide(
    event: TerminalEvent,
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
        or _check_times(event)
        or _check_ancestry(event, parent_ancestry)
    )
    if rejection is not None:
        return rejection
    tree_account = _account_of(event, url, call, parent)
    if isinstance(tree_account, Decision):
        return tree_account
    account = tree_account.account
    # Only the call's own application is stored; a leg without one shows its parent's, resolved
    # when read, so a parent arriving after its legs need not rewrite them.
    application = event.application_id
    base = call if call is not None else CallRecord(call_id=event.call_id)

    if base.state == DISCONNECTED:
        return _second_terminal_event(event, base, account, application)

    walk = _Walk(base.state)
    if event.answer_time is not None:
        _fire(walk, "answer", at=event.answer_time, event=event.event_type)
    _fire(walk, "end", at=event.end_time, event=event.event_type)
    after = _facts_of(event, base, account, application, walk.state)

    parent_write = _parent_after(event, after, parent) if event.parent_call_id else None
    answered = f", answered at {_iso(event.answer_time)}" if event.answer_time else ""
    return Decision(
        outcome=Outcome.APPLIED,
        detail=f"call {event.call_id} disconnected ({event.cause}){answered}",
        call=(call, after),
        parent=parent_write,
        transitions=tuple(walk.taken),
        fill_account=account if tree_account.tree_learns_it else None,
    )


def _facts_of(
    event: TerminalEvent,
    base: CallRecord,
    account: str | None,
    application: str | None,
    state: str,
) -> CallRecord:
    return replace(
        base,
        parent_call_id=event.parent_call_id,
        account_id=account,
        application_id=application,
        direction=event.direction,
        from_number=event.own_from,
        to_number=event.own_to,
        state=state,
        cause=event.cause,
        disposition=disposition_of(event.cause),
        start_time=event.start_time,
        answer_time=event.answer_time,
        end_time=event.end_time,
        enqueued_time=event.enqueued_time,
        tag=event.tag,
        error_message=event.error_message,
        error_id=event.error_id,
        terminal_event=event.event_type,
        numbers_leg_id=None,
        numbers_leg_start=None,
    )


def _parent_after(
    event: TerminalEvent, leg: CallRecord, parent: CallRecord | None
) -> tuple[CallRecord | None, CallRecord]:
    """The parent as this leg leaves it. A leg always writes its parent (at least its version),
    so that a concurrent change to the parent and this leg cannot both commit unseen."""
    assert event.parent_call_id is not None and leg.start_time is not None
    if parent is None:
        placeholder = CallRecord(
            call_id=event.parent_call_id,
            account_id=leg.account_id,
            from_number=event.from_number,
            to_number=event.to_number,
            numbers_leg_id=leg.call_id,
            numbers_leg_start=leg.start_time,
        )
        return None, placeholder
    after = parent
    if parent.account_id is None:  # the tree learns its account (see `_account_of`)
        after = replace(after, account_id=leg.account_id)
    if parent.is_placeholder and _earlier_leg(leg, parent):
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


def _second_terminal_event(
    event: TerminalEvent, call: CallRecord, account: str | None, application: str | None
) -> Decision:
    """A call ends once. Another terminal event that says the same is a repeat of it; one that
    says otherwise is refused, naming the first fact that differs."""
    again = _facts_of(event, call, account, application, DISCONNECTED)
    if call.parent_call_id != again.parent_call_id:
        return _reject(
            Reason.PARENT_CHANGED,
            f"call {call.call_id} is a leg of {call.parent_call_id or 'no call'}, "
            f"but this event makes it a leg of {again.parent_call_id or 'no call'}",
        )
    if call.direction is not None and again.direction not in (None, call.direction):
        return _reject(
            Reason.DIRECTION_CHANGED,
            f"call {call.call_id} is {call.direction}, but this event says {again.direction}; "
            "a call's direction never changes",
        )
    if call.account_id is not None and account not in (None, call.account_id):
        return _reject(
            Reason.ACCOUNT_CHANGED,
            f"call {call.call_id} belongs to account {call.account_id}, "
            f"but this event says {account}",
        )
    differing = [name for name in _FACTS if getattr(call, name) != getattr(again, name)]
    if differing:
        shown = ", ".join(
            f"{name} {_show(getattr(call, name))} vs {_show(getattr(again, name))}"
            for name in differing[:4]
        )
        return _reject(
            Reason.CONFLICTING_TERMINAL_EVENT,
            f"call {call.call_id} already ended and this terminal event disagrees: {shown}",
        )
    return Decision(
        outcome=Outcome.DUPLICATE,
        detail=f"call {call.call_id} already ended with exactly these facts",
    )


@dataclass(frozen=True, slots=True)
class _TreeAccount:
    account: str | None
    # True when a tree that had no account learns it from this event: every call of the tree
    # then takes it (the parent in this decision, the rest by `Decision.fill_account`).
    tree_learns_it: bool


def _account_of(
    event: TerminalEvent, url: CallUrl | None, call: CallRecord | None, parent: CallRecord | None
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
    event: TerminalEvent, url: CallUrl | None, call: CallRecord | None, parent: CallRecord | None
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


def _check_call_url(event: TerminalEvent, url: CallUrl | None) -> Decision | None:
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


def _check_times(event: TerminalEvent) -> Decision | None:
    if event.end_time < event.start_time:
        return _reject(
            Reason.END_BEFORE_START,
            f"endTime {_iso(event.end_time)} is before startTime {_iso(event.start_time)}",
        )
    answer = event.answer_time
    if answer is not None and not event.start_time <= answer <= event.end_time:
        return _reject(
            Reason.ANSWER_OUTSIDE_CALL,
            f"answerTime {_iso(answer)} is outside the call, which ran from "
            f"{_iso(event.start_time)} to {_iso(event.end_time)}",
        )
    return None


def _check_ancestry(event: TerminalEvent, parent_ancestry: Sequence[str]) -> Decision | None:
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
    return value.isoformat().replace("+00:00", "Z") if value else "none"


def _show(value: object) -> str:
    if isinstance(value, datetime):
        return _iso(value)
    return shown(value)
