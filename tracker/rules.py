"""Part of the lifecycle: the rules that refuse an event, each with its own code in `Reason`.

Pure: no I/O. Each check returns None when the event passes it, else the `Decision` that refuses
it (or, for a repeated terminal event, the one that calls it a duplicate); `decide` in
`tracker.lifecycle` runs them in turn. The account rule lives here too (`account_of`): which
account a call and its transfer tree have, and when an event's disagrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from tracker import instants
from tracker.facts import TERMINAL_RANK, CallRecord, Decision, offered_by
from tracker.parsing import CallUrl, Event, shown
from tracker.records import Outcome, Reason

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


def check_against(event: Event, call: CallRecord) -> Decision | None:
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
                f"call {call.call_id} has {_camel(name)} {iso(known)}, but this "
                f"{event.event_type} event says {iso(said)}",
            )
    return None


def _second_terminal_event(event: Event, call: CallRecord) -> Decision:
    """A call ends once. Another terminal event that says the same is a repeat of it; one that
    says otherwise is refused, naming the first facts that differ. What the first one said is
    each fact it was the source of (a live event's tag, say, is not its word)."""
    offered = offered_by(event) | {
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


@dataclass(slots=True)  # not frozen, as `facts.Decision` is not: made on every delivery
class TreeAccount:
    account: str | None
    # True when a tree that had no account learns it from this event: every call of the tree
    # then takes it (the parent in this decision, the rest by `Decision.fill_account`).
    tree_learns_it: bool


def account_of(
    event: Event, url: CallUrl | None, call: CallRecord | None, parent: CallRecord | None
) -> TreeAccount | Decision:
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
    return TreeAccount(account, tree_learns_it=account is not None and lacking)


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


def check_call_url(event: Event, url: CallUrl | None) -> Decision | None:
    """A callUrl names the call and the account the body is about."""
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


def check_times(
    what: str, start: datetime | None, answer: datetime | None, end: datetime | None
) -> Decision | None:
    """A call answers within itself and ends after it starts: the event's own times, then the
    call's once the event's are merged in (an `answer` after its `disconnect` must fit)."""
    if start is not None and end is not None and end < start:
        return _reject(
            Reason.END_BEFORE_START,
            f"the {what}'s endTime {iso(end)} is before its startTime {iso(start)}",
        )
    if answer is not None and (
        (start is not None and answer < start) or (end is not None and answer > end)
    ):
        return _reject(
            Reason.ANSWER_OUTSIDE_CALL,
            f"the {what}'s answerTime {iso(answer)} is outside the call, which ran from "
            f"{iso(start)} to {iso(end)}",
        )
    return None


def check_ancestry(event: Event, parent_ancestry: Sequence[str]) -> Decision | None:
    """A call never becomes its own ancestor."""
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


def iso(value: datetime | None) -> str:
    """An instant as the lifecycle's messages show it; "none" when unknown."""
    return instants.text(value) if value else "none"


def _show(value: object) -> str:
    if isinstance(value, datetime):
        return iso(value)
    return shown(value)
