"""Stage 2 of the pipeline: what one terminal event does to the calls it concerns.

Pure: no I/O. It takes the event and the records it touches (the call, its parent, the parent's
ancestry) and returns a `Decision`: the new records, the transitions taken, or the rule broken.
The state graph is the table just below. Every rule that rejects an event has its own code in
`Reason` and one function in `tracker.rules`; a call's facts, and which event's facts win, are
in `tracker.facts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

from transitions import Machine, MachineError

# The dispositions, the record, its facts and the decision are defined with the ranks that merge
# them; named here too, as the lifecycle's: callers import them from here.
from tracker.facts import ALL_DISPOSITIONS as ALL_DISPOSITIONS
from tracker.facts import (
    CALLBACK,
    PROVIDER_FACTS,
    PROVIDER_RANK,
    answer_news,
    end_source_of,
    offered_by,
)
from tracker.facts import DISPOSITIONS as DISPOSITIONS
from tracker.facts import EXPIRED as EXPIRED
from tracker.facts import FAILED as FAILED
from tracker.facts import MERGED_FACTS as MERGED_FACTS
from tracker.facts import RANKS as RANKS
from tracker.facts import RECORD_FIELDS as RECORD_FIELDS
from tracker.facts import CallRecord as CallRecord
from tracker.facts import Decision as Decision
from tracker.facts import TransitionTaken as TransitionTaken
from tracker.facts import changed as changed
from tracker.facts import disposition_of as disposition_of
from tracker.facts import facts_of as facts_of
from tracker.parsing import (
    Event,
    MachineDetectionComplete,
    TransferComplete,
    read_call_url,
)
from tracker.provider import CALL_STATE, ProviderCall

# The states are defined with the records that carry them; named here too, as the machine's.
from tracker.records import ANSWERED as ANSWERED
from tracker.records import DISCONNECTED as DISCONNECTED
from tracker.records import INITIATED as INITIATED
from tracker.records import LIVE_STATES as LIVE_STATES
from tracker.records import STATES as STATES
from tracker.records import IgnoredReason, Outcome, TransferAttempt
from tracker.rules import (
    account_of,
    check_against,
    check_ancestry,
    check_call_url,
    check_times,
    iso,
)

# The whole lifecycle. `disconnected` is terminal: no transition leaves it.
TRANSITIONS: Final = (
    {"trigger": "answer", "source": INITIATED, "dest": ANSWERED},
    {"trigger": "end", "source": [INITIATED, ANSWERED], "dest": DISCONNECTED},
)

# What a history step the sweep made names as its event.
SWEEP: Final = "sweep"


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
    elif end_time is not None and terminal_event is None:  # the provider's end (`provide`)
        terminal_event = CALL_STATE
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
    first.

    A callback is decided against what the callbacks alone said (`without_provider`): the
    provider's facts are not theirs to contradict. They are laid back over the result where the
    callbacks still say nothing, unless the event is the call's terminal one, which replaces the
    provider's end entirely; so the record is the same whatever the order of the deliveries."""
    own, provided = without_provider(call) if call is not None else (None, {})
    parent_own, parent_provided = without_provider(parent) if parent is not None else (None, {})
    decision = _decide(event, own, parent_own, parent_ancestry)
    if (not provided and not parent_provided) or decision.outcome is not Outcome.APPLIED:
        return decision
    assert decision.call is not None
    after = _with_provider(decision.call[1], provided)
    parent_change = decision.parent
    if parent_change is not None and parent_change[0] is not None:
        parent_change = (parent, _with_provider(parent_change[1], parent_provided)[0])
    return replace(decision, call=(call, after[0]), parent=parent_change, history=after[1])


def _decide(
    event: Event,
    call: CallRecord | None,
    parent: CallRecord | None,
    parent_ancestry: Sequence[str],
) -> Decision:
    url = read_call_url(event.call_url)
    rejection = (
        check_call_url(event, url)
        or check_times(event.event_type, event.start_time, event.answer_time, event.end_time)
        or check_ancestry(event, parent_ancestry)
    )
    if rejection is not None:
        return rejection
    tree_account = account_of(event, url, call, parent)
    if isinstance(tree_account, Decision):
        return tree_account
    base = call if call is not None else CallRecord(call_id=event.call_id)
    rejection = check_against(event, base)
    if rejection is not None:
        return rejection
    after, history = _merge(event, base, tree_account.account)
    rejection = check_times("call", after.start_time, after.answer_time, after.end_time)
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


def provide(answer: ProviderCall, call: CallRecord | None, parent: CallRecord | None) -> Decision:
    """Bandwidth's call state (`answer`) applied to `call` (None when never seen): when it says
    the call disconnected, its facts end the call as the provider's end (`end_source`
    `provider`), each filling only what the callbacks said nothing of, so that every callback,
    whenever it comes, wins over them, and a terminal one replaces them all. A call a terminal
    callback ended is left as it is: the provider's word never changes it (a disagreement is
    for `Tracker.reconcile` to report). A sweep's expiry is replaced, as a callback replaces
    it. `parent`: the call the answer names as the parent, None when never seen: it is then
    recorded as a placeholder, as a leg's callback would (its numbers are the legs' callbacks'
    to give). The account is not a fact of the end but of the call's tree, as for a callback:
    the tree's, else the one Bandwidth was asked for, which a tree without one then learns."""
    call_id = answer.call_id
    if not answer.ended:
        return Decision(
            outcome=Outcome.IGNORED,
            reason=IgnoredReason.LIVE_THERE,
            detail=f"Bandwidth says call {call_id} is {answer.state}: nothing to apply",
        )
    if call is not None and call.end_source == CALLBACK:
        if call.account_id is None and answer.account_id is not None:
            # Not a fact of the end: the tree learns it whichever came first.
            return Decision(
                outcome=Outcome.APPLIED,
                detail=f"call {call_id} was ended by its {call.terminal_event}, which the "
                f"provider's answer never changes; its tree learns account {answer.account_id}",
                call=(call, call),
                history=history_of(call)[1],
                fill_account=answer.account_id,
            )
        return Decision(
            outcome=Outcome.IGNORED,
            reason=IgnoredReason.ENDED_BY_CALLBACK,
            detail=f"call {call_id} was ended by its {call.terminal_event}, which the provider's "
            f"answer never changes (there: {answer.cause or 'no cause'} at "
            f"{iso(answer.ended_at)}; here: {call.cause} at {iso(call.end_time)})",
        )
    rejection = check_times(
        "provider's call", answer.start_time, answer.answer_time, answer.ended_at
    )
    if rejection is not None:
        return rejection
    offered: dict[str, Any] = {
        "parent_call_id": answer.parent_call_id,
        "application_id": answer.application_id,
        "direction": answer.direction,
        "from_number": answer.from_number,
        "to_number": answer.to_number,
        "enqueued_time": answer.enqueued_time,
        "start_time": answer.start_time,
        "answer_time": answer.answer_time,
        "end_time": answer.ended_at,
        "cause": answer.cause or UNKNOWN_CAUSE,
        "error_message": answer.error_message,
        "error_id": answer.error_id,
    }
    # The account is the tree's, as for a callback (`rules.account_of`): the one the call or its
    # parent has, else the one Bandwidth was asked for, which the whole tree then learns.
    account = (
        (call.account_id if call is not None else None)
        or (parent.account_id if parent is not None else None)
        or answer.account_id
    )
    base = call if call is not None else CallRecord(call_id=call_id, account_id=account)
    after, history = _with_provider(base, offered)
    if call is not None and after == call:
        return Decision(
            outcome=Outcome.DUPLICATE,
            detail=f"call {call_id} already ended with what the provider says",
        )
    answered = f", answered at {iso(after.answer_time)}" if after.answer_time else ""
    placeholder = None
    if parent is None and after.parent_call_id is not None and after.parent_call_id != call_id:
        placeholder = (None, CallRecord(call_id=after.parent_call_id, account_id=account))
    elif after.parent_call_id == call_id:  # no call is its own parent, whatever is answered
        after = changed(after, {"parent_call_id": None})
    return Decision(
        outcome=Outcome.APPLIED,
        detail=f"call {call_id} ended as Bandwidth's call state says ({after.cause}){answered}",
        call=(call, after),
        parent=placeholder,
        history=history,
        fill_account=account
        if call is not None and (call.account_id is None or _links(call, after))
        else None,
    )


def _links(call: CallRecord, after: CallRecord) -> bool:
    """Whether the provider's answer links the call to a parent: two trees become one, and
    the one without an account learns the other's."""
    return after.parent_call_id is not None and call.parent_call_id != after.parent_call_id


# The cause of a call Bandwidth says disconnected without saying why: its own word for that.
UNKNOWN_CAUSE: Final = "unknown"


def without_provider(call: CallRecord) -> tuple[CallRecord, dict[str, Any]]:
    """The call as its callbacks alone leave it, and the facts the provider filled (by name):
    what a callback is decided against, and what is laid back over the result."""
    if PROVIDER_RANK not in call.sources.values():
        return call, {}
    provided = {
        name: getattr(call, name) for name, rank in call.sources.items() if rank == PROVIDER_RANK
    }
    changes: dict[str, Any] = dict.fromkeys(provided)
    changes["sources"] = {
        name: rank for name, rank in call.sources.items() if rank != PROVIDER_RANK
    }
    if call.answer_event == CALL_STATE:
        changes["answer_event"] = None
    return _restated(changed(call, changes))[0], provided


def _with_provider(
    call: CallRecord, offered: dict[str, Any]
) -> tuple[CallRecord, tuple[TransitionTaken, ...]]:
    """`call` with the provider's facts filled in where its callbacks said nothing (no source
    of theirs, no value), and its state and history walked again. Of two provider answers that
    differ, the larger value of each fact wins, as between two callbacks of one type. A call a
    terminal callback ended takes none of them."""
    if call.terminal_event is not None or not offered:
        return call, history_of(call)[1]
    sources = dict(call.sources)
    changes: dict[str, Any] = {}
    if offered.get("end_time") is not None and call.swept_at is not None:
        changes.update(swept_at=None, disposition=None)  # the provider's end replaces the sweep's
    for name in PROVIDER_FACTS:
        value = offered.get(name)
        if value is None or name == "disposition":
            continue
        held = sources.get(name)
        current = getattr(call, name)
        if (held is None and current is None) or (
            held == PROVIDER_RANK and value != current and str(value) > str(current)
        ):
            changes[name] = value
            sources[name] = PROVIDER_RANK
    if sources.get("cause") == PROVIDER_RANK:  # the disposition goes with the cause
        cause = changes.get("cause", call.cause)
        changes["disposition"] = disposition_of(cause) if cause is not None else None
        sources["disposition"] = PROVIDER_RANK
    if sources.get("answer_time") == PROVIDER_RANK and call.answer_event is None:
        changes["answer_event"] = CALL_STATE
    changes["sources"] = sources
    return _restated(changed(call, changes))


def _restated(call: CallRecord) -> tuple[CallRecord, tuple[TransitionTaken, ...]]:
    """`call` with the state and end source its facts give, and its history."""
    state, history = history_of(call)
    source = end_source_of(state, call.terminal_event, call.swept_at)
    if (state, source) != (call.state, call.end_source):
        call = changed(call, {"state": state, "end_source": source})
    return call, history


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
    after = changed(after, {"state": state, "end_source": end_source_of(state, None, at)})
    heard = f"nothing heard of it since {iso(known)}" if known else "no time known for it"
    return Decision(
        outcome=Outcome.APPLIED,
        detail=f"call {call.call_id} expired by the sweep at {iso(at)}: {heard}",
        call=(call, after),
        history=history,
    )


def _merge(
    event: Event, call: CallRecord, account: str | None
) -> tuple[CallRecord, tuple[TransitionTaken, ...]]:
    """The call as this event leaves it, and its history. Each fact keeps the value of the
    highest-ranked event that carried it (ties, two events of one type, go to the larger
    value), so any order of arrival gives the same record."""
    rank = RANKS[event.event_type]
    sources = dict(call.sources)
    changes: dict[str, Any] = {}
    for name, value in offered_by(event).items():
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
        if answer_news(event.event_type) < answer_news(call.answer_event):
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
    changes["end_source"] = end_source_of(
        state,
        *(
            changes[name] if name in changes else getattr(call, name)
            for name in ("terminal_event", "swept_at")
        ),
    )
    return changed(call, changes), history


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
    answered = f", answered at {iso(call.answer_time)}" if call.answer_time else ""
    if call.state == DISCONNECTED:
        return f"call {event.call_id} disconnected ({call.cause or call.disposition}){answered}"
    return f"call {event.call_id} is {call.state}{answered}"


def _parent_after(
    event: Event, leg: CallRecord, parent: CallRecord | None, account: str | None
) -> tuple[CallRecord | None, CallRecord]:
    """The parent as this leg leaves it. A leg always writes its parent (at least its version),
    so that a concurrent change to the parent and this leg cannot both commit unseen. `account`
    is the tree's, as `account_of` resolved it: a parent without one takes it."""
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
    if parent.account_id is None:  # the tree learns its account (see `account_of`)
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
