"""Lifecycle rules: each broken rule rejects the event with its own code and touches nothing."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

import pytest
from transitions import MachineError

from tracker import Outcome, Reason, Tracker, lifecycle
from tracker.lifecycle import STATES, TRANSITIONS, CallRecord, decide, history_of
from tracker.parsing import Disconnect, read
from tracker.testing import BASE_TIME, call_url, disconnect, stamp, transfer_disconnect


def everything(tracker: Tracker) -> dict[str, Any]:
    """Every call and its history, to show a rejected event changed none of it."""
    return {call.call_id: asdict(call) for call in tracker.calls()}


def assert_rejected(tracker: Tracker, body: dict[str, Any], reason: Reason) -> None:
    before = everything(tracker)
    result = tracker.apply(body)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, reason.value), result.detail
    assert result.detail
    assert everything(tracker) == before
    logged = tracker.events(outcome="rejected")[-1]
    assert (logged.reason, logged.call_id) == (reason.value, body["callId"])


def test_the_state_graph_is_one_table() -> None:
    assert STATES == ("initiated", "answered", "disconnected")
    moves = {
        (t["source"] if isinstance(t["source"], str) else tuple(t["source"]), t["dest"])
        for t in TRANSITIONS
    }
    assert moves == {("initiated", "answered"), (("initiated", "answered"), "disconnected")}


def test_disconnected_is_terminal_for_the_machine() -> None:
    """Every trigger the lifecycle's machine knows, fired on a disconnected call, is refused."""
    triggers = sorted(lifecycle._MACHINE.events)
    assert triggers == sorted({t["trigger"] for t in TRANSITIONS})
    for trigger in triggers:
        with pytest.raises(MachineError, match="Can't trigger event"):
            lifecycle.move(trigger, lifecycle.DISCONNECTED)


def test_every_move_is_the_machines() -> None:
    """The lifecycle asks the `transitions` machine built from TRANSITIONS for each move, so
    the table is the only place a legal move is written."""
    for transition in TRANSITIONS:
        sources = transition["source"]
        for source in [sources] if isinstance(sources, str) else sources:
            assert lifecycle.move(str(transition["trigger"]), source) == transition["dest"]
    with pytest.raises(MachineError):
        lifecycle.move("answer", lifecycle.ANSWERED)  # answered once only


def test_unanswered_call_goes_straight_to_disconnected() -> None:
    event = read(disconnect(ring=None, cause="busy")).content
    assert isinstance(event, Disconnect)
    decision = decide(event, None, None)
    assert decision.call is not None
    _state, history = history_of(decision.call[1])
    assert [(t.source, t.target) for t in history] == [("initiated", "disconnected")]


def test_placeholder_record_starts_initiated() -> None:
    assert CallRecord(call_id="c-1").state == "initiated"


def test_second_terminal_event_that_disagrees_is_rejected(sqlite_tracker: Tracker) -> None:
    body = disconnect(cause="hangup")
    sqlite_tracker.apply(body)
    assert_rejected(
        sqlite_tracker,
        dict(body, cause="busy", eventTime="2030-01-01T00:00:00Z"),
        Reason.CONFLICTING_TERMINAL_EVENT,
    )


def test_second_terminal_event_that_agrees_is_a_duplicate(sqlite_tracker: Tracker) -> None:
    body = disconnect()
    sqlite_tracker.apply(body)
    result = sqlite_tracker.apply(dict(body, eventTime="2030-01-01T00:00:00Z"))
    assert result.outcome is Outcome.DUPLICATE


def test_direction_cannot_change(sqlite_tracker: Tracker) -> None:
    body = disconnect(direction="inbound")
    sqlite_tracker.apply(body)
    assert_rejected(sqlite_tracker, dict(body, direction="outbound"), Reason.DIRECTION_CHANGED)


def test_account_cannot_change(sqlite_tracker: Tracker) -> None:
    body = disconnect()
    sqlite_tracker.apply(body)
    changed = dict(body, accountId="999", callUrl=call_url(body["callId"], "999"))
    assert_rejected(sqlite_tracker, changed, Reason.ACCOUNT_CHANGED)


def test_parent_cannot_change(sqlite_tracker: Tracker) -> None:
    leg = transfer_disconnect("c-parent-1")
    sqlite_tracker.apply(leg)
    assert_rejected(sqlite_tracker, dict(leg, parentCallId="c-parent-2"), Reason.PARENT_CHANGED)


def test_leg_of_another_account_than_its_parent_is_rejected(sqlite_tracker: Tracker) -> None:
    parent = disconnect()
    sqlite_tracker.apply(parent)
    leg = transfer_disconnect(parent["callId"])
    leg["callUrl"] = call_url(leg["callId"], "999")
    assert_rejected(sqlite_tracker, leg, Reason.LEG_ACCOUNT_MISMATCH)


def test_parent_of_another_account_than_its_legs_is_rejected(sqlite_tracker: Tracker) -> None:
    parent = disconnect()
    sqlite_tracker.apply(transfer_disconnect(parent["callId"]))
    moved = dict(parent, accountId="999", callUrl=call_url(parent["callId"], "999"))
    assert_rejected(sqlite_tracker, moved, Reason.LEG_ACCOUNT_MISMATCH)


def test_call_cannot_be_its_own_parent(sqlite_tracker: Tracker) -> None:
    leg = transfer_disconnect("c-self", call_id="c-self")
    assert_rejected(sqlite_tracker, leg, Reason.ANCESTRY_CYCLE)


def test_call_cannot_become_its_own_ancestor(sqlite_tracker: Tracker) -> None:
    sqlite_tracker.apply(transfer_disconnect("c-a", call_id="c-b"))
    sqlite_tracker.apply(transfer_disconnect("c-b", call_id="c-c"))
    assert_rejected(
        sqlite_tracker, transfer_disconnect("c-c", call_id="c-a"), Reason.ANCESTRY_CYCLE
    )


def test_end_before_start_is_rejected(sqlite_tracker: Tracker) -> None:
    body = disconnect(ring=None, endTime=stamp(BASE_TIME - timedelta(seconds=1)))
    assert_rejected(sqlite_tracker, body, Reason.END_BEFORE_START)


@pytest.mark.parametrize("offset", [-1.0, 3600.0])
def test_answer_outside_the_call_is_rejected(sqlite_tracker: Tracker, offset: float) -> None:
    body = disconnect(answerTime=stamp(BASE_TIME + timedelta(seconds=offset)))
    assert_rejected(sqlite_tracker, body, Reason.ANSWER_OUTSIDE_CALL)


def test_answer_at_the_very_start_or_end_is_accepted(sqlite_tracker: Tracker) -> None:
    body = disconnect()
    assert sqlite_tracker.apply(dict(body, answerTime=body["startTime"])).outcome is Outcome.APPLIED
    other = disconnect()
    assert sqlite_tracker.apply(dict(other, answerTime=other["endTime"])).outcome is Outcome.APPLIED


def test_call_url_naming_another_call_is_rejected(sqlite_tracker: Tracker) -> None:
    body = disconnect(callUrl=call_url("c-someone-else"))
    assert_rejected(sqlite_tracker, body, Reason.CALL_URL_CALL_MISMATCH)


def test_call_url_naming_another_account_is_rejected(sqlite_tracker: Tracker) -> None:
    body = disconnect()
    body["callUrl"] = call_url(body["callId"], "999")
    assert_rejected(sqlite_tracker, body, Reason.CALL_URL_ACCOUNT_MISMATCH)


def test_rejected_leg_creates_no_placeholder_parent(sqlite_tracker: Tracker) -> None:
    leg = transfer_disconnect("c-never", ring=None, endTime="2020-01-01T00:00:00Z")
    assert sqlite_tracker.apply(leg).outcome is Outcome.REJECTED
    assert sqlite_tracker.get_call("c-never") is None
    assert sqlite_tracker.get_call(leg["callId"]) is None


def test_every_rule_has_its_own_reason_code() -> None:
    # Iterating an Enum skips aliases (a second name given an existing value), so a duplicate
    # code shows only in __members__, which lists every name.
    codes = {name: reason.value for name, reason in Reason.__members__.items()}
    assert len(set(codes.values())) == len(codes), codes
