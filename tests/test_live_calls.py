"""The whole lifecycle: live callbacks make calls ringing and talking now, any
order of arrival gives the same records, and the new rules reject with their own codes."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import timedelta
from typing import Any

import pytest

from tracker import LIVE_STATES, Call, Outcome, Reason, Tracker
from tracker.testing import (
    ACCOUNT,
    BASE_TIME,
    answer,
    disconnect,
    initiate,
    machine_detection_complete,
    new_call_id,
    stamp,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
)


def history(call: Call | None) -> list[tuple[str, str, str, str]]:
    assert call is not None
    return [(step.source, step.target, stamp(step.at), step.event) for step in call.history]


def facts(call: Call | None) -> dict[str, Any]:
    """Everything a snapshot says, but which log entries made the history."""
    assert call is not None
    found = {f.name: getattr(call, f.name) for f in fields(call) if f.name != "history"}
    found["history"] = history(call)
    return found


def test_initiate_makes_a_ringing_inbound_call_with_its_caller_facts(tracker: Tracker) -> None:
    call_id = new_call_id()
    body = initiate(call_id, diversion={"origTo": "+15550001111", "reason": "unavailable"})

    result = tracker.apply(body)

    assert result.outcome is Outcome.APPLIED
    call = tracker.get_call(call_id)
    assert call is not None
    assert (call.state, call.direction, call.start_time) == ("initiated", "inbound", BASE_TIME)
    assert (call.attestation, call.verstat) == ("A", "TN-Validation-Passed")
    assert call.caller_display_name == "ALICE EXAMPLE"
    assert call.diversion == {"origTo": "+15550001111", "reason": "unavailable"}
    assert (call.account_id, call.cause, call.disposition, call.history) == (
        ACCOUNT,
        None,
        None,
        (),
    )
    assert [c.call_id for c in tracker.calls(state=LIVE_STATES)] == [call_id]


def test_answer_moves_an_outbound_call_to_answered(tracker: Tracker) -> None:
    call_id = new_call_id()
    assert tracker.apply(answer(call_id, ring=4.5)).outcome is Outcome.APPLIED
    call = tracker.get_call(call_id)
    assert call is not None and call.state == "answered"
    assert history(call) == [
        ("initiated", "answered", stamp(BASE_TIME + timedelta(seconds=4.5)), "answer")
    ]
    assert [c.call_id for c in tracker.calls(state="answered")] == [call_id]


def test_a_late_answer_merges_without_moving_the_state_back(tracker: Tracker) -> None:
    call_id = new_call_id()
    ended = disconnect(call_id, ring=3.0)
    assert tracker.apply(ended).outcome is Outcome.APPLIED
    late = answer(call_id, ring=3.0, tag="late")

    assert tracker.apply(late).outcome is Outcome.APPLIED

    call = tracker.get_call(call_id)
    assert call is not None and call.state == "disconnected"
    assert call.tag == "late"  # the disconnect had none: the answer's stands
    # The answered step now names the event whose news it was, as in arrival order.
    assert [step.event for step in call.history] == ["answer", "disconnect"]
    in_order = tracker_records_in_order(tracker, [late, ended])
    assert facts(call) == in_order


def tracker_records_in_order(tracker: Tracker, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The record the same bodies give on a fresh SQLite database, applied in this order."""
    import tempfile

    with (
        tempfile.TemporaryDirectory() as directory,
        Tracker(f"sqlite:///{directory}/fresh.db") as fresh,
    ):
        fresh.upgrade()
        outcomes = [fresh.apply(body).outcome for body in bodies]
        assert outcomes == [Outcome.APPLIED] * len(bodies)
        return facts(fresh.get_call(bodies[0]["callId"]))


def test_transfer_complete_records_an_attempt_and_never_ends_the_call(tracker: Tracker) -> None:
    call_id = new_call_id()
    tracker.apply(initiate(call_id))
    busy = transfer_complete(call_id, cause="busy", answerTime=stamp(BASE_TIME))
    later = transfer_complete(call_id, at=BASE_TIME + timedelta(minutes=2), transferTo="+1555")

    assert [tracker.apply(body).outcome for body in (later, busy)] == [Outcome.APPLIED] * 2

    call = tracker.get_call(call_id)
    assert call is not None
    assert (call.state, call.cause, call.disposition, call.end_time) == (
        "answered",
        None,
        None,
        None,
    )
    assert [(t.cause, t.disposition, t.transfer_to) for t in call.transfers] == [
        ("busy", "busy", "+15556667777"),
        ("hangup", "completed", "+1555"),
    ]
    assert call.transfers[0].error_message == "Callee is busy"
    assert call.transfers[0].at == BASE_TIME + timedelta(seconds=40)
    assert tracker.apply(busy).outcome is Outcome.DUPLICATE
    assert len(tracker.get_call(call_id).transfers) == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "result", ["human", "answering-machine", "silence", "timeout", "error", "fax-tone-9"]
)
def test_machine_detection_result_is_kept_verbatim(sqlite_tracker: Tracker, result: str) -> None:
    call_id = new_call_id()
    body = machine_detection_complete(call_id, result=result)
    assert sqlite_tracker.apply(body).outcome is Outcome.APPLIED
    call = sqlite_tracker.get_call(call_id)
    assert call is not None and call.machine_detection == result


def test_transfer_answer_links_the_leg_and_creates_a_placeholder_parent(tracker: Tracker) -> None:
    parent_id, leg_id = new_call_id(), new_call_id()
    assert tracker.apply(transfer_answer(parent_id, leg_id)).outcome is Outcome.APPLIED
    leg, parent = tracker.get_call(leg_id), tracker.get_call(parent_id)
    assert leg is not None and parent is not None
    assert (leg.state, leg.parent_call_id, leg.from_number) == (
        "answered",
        parent_id,
        "+15551115555",
    )
    assert (parent.state, parent.legs, parent.from_number) == (
        "initiated",
        (leg_id,),
        "+15551112222",
    )
    assert parent.account_id == ACCOUNT


def test_a_leg_answered_without_parent_id_is_linked_by_its_transfer_disconnect(
    tracker: Tracker,
) -> None:
    parent_id, leg_id = new_call_id(), new_call_id()
    assert tracker.apply(transfer_answer(None, leg_id)).outcome is Outcome.APPLIED
    assert tracker.get_call(leg_id).parent_call_id is None  # type: ignore[union-attr]
    ended = transfer_disconnect(parent_id, leg_id, ring=2.0)
    assert tracker.apply(ended).outcome is Outcome.APPLIED
    leg = tracker.get_call(leg_id)
    assert leg is not None and (leg.parent_call_id, leg.state) == (parent_id, "disconnected")
    assert [step.event for step in leg.history] == ["transferAnswer", "transferDisconnect"]


@pytest.mark.parametrize(
    ("make", "change", "reason"),
    [
        (initiate, {"startTime": stamp(BASE_TIME + timedelta(seconds=1))}, "start_time_changed"),
        (answer, {"answerTime": stamp(BASE_TIME + timedelta(seconds=9))}, "answer_time_changed"),
        (answer, {"direction": "inbound"}, "direction_changed"),
        (answer, {"accountId": "9999", "callUrl": ...}, "account_changed"),
    ],
)
def test_an_event_contradicting_the_call_is_rejected_and_changes_nothing(
    tracker: Tracker, make: Any, change: dict[str, Any], reason: str
) -> None:
    call_id = new_call_id()
    first = make(call_id)
    if first["eventType"] == "initiate":
        first_outcome = tracker.apply(first).outcome
    else:
        first_outcome = tracker.apply(first).outcome
    assert first_outcome is Outcome.APPLIED
    before = tracker.get_call(call_id)
    second = disconnect(call_id, ring=3.0, direction=first["direction"])
    second.update({key: value for key, value in change.items() if value is not ...})
    for key in [key for key, value in change.items() if value is ...]:
        second.pop(key)

    result = tracker.apply(second)

    assert (result.outcome, result.reason) == (Outcome.REJECTED, reason)
    assert tracker.get_call(call_id) == before


def test_an_answer_outside_the_call_it_joins_is_rejected(tracker: Tracker) -> None:
    call_id = new_call_id()
    tracker.apply(disconnect(call_id, ring=None))  # ended 20 s after its start, never answered
    late = answer(call_id, ring=25.0)
    result = tracker.apply(late)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, Reason.ANSWER_OUTSIDE_CALL)


def test_every_rule_applies_to_live_events_too(tracker: Tracker) -> None:
    parent_id, leg_id = new_call_id(), new_call_id()
    cycle = transfer_answer(leg_id, leg_id)
    assert tracker.apply(cycle).reason == Reason.ANCESTRY_CYCLE
    wrong_url = answer(
        new_call_id(), callUrl="https://voice.bandwidth.com/api/v2/accounts/55555555/calls/c-other"
    )
    assert tracker.apply(wrong_url).reason == Reason.CALL_URL_CALL_MISMATCH
    tracker.apply(transfer_answer(parent_id, leg_id))
    moved = transfer_disconnect(new_call_id(), leg_id)
    assert tracker.apply(moved).reason == Reason.PARENT_CHANGED
    original = new_call_id()
    tracker.apply(initiate(original))
    assert tracker.apply(transfer_answer(parent_id, original)).reason == Reason.PARENT_CHANGED


def test_calls_live_lists_ringing_and_talking_calls(tracker: Tracker) -> None:
    ringing, talking, ended = new_call_id(), new_call_id(), new_call_id()
    for body in (initiate(ringing), answer(talking), disconnect(ended)):
        tracker.apply(body)
    assert {call.call_id for call in tracker.calls(state=LIVE_STATES)} == {ringing, talking}
    assert {call.call_id for call in tracker.calls(state="disconnected")} == {ended}
    assert all(call.live for call in tracker.calls(state=LIVE_STATES))


def test_a_repeated_live_event_is_a_duplicate_and_another_delivery_is_applied(
    tracker: Tracker,
) -> None:
    call_id = new_call_id()
    body = initiate(call_id)
    assert tracker.apply(body).outcome is Outcome.APPLIED
    before = tracker.get_call(call_id)
    assert tracker.apply(json.dumps(body, indent=2)).outcome is Outcome.DUPLICATE
    # Another delivery saying nothing new (only its eventTime differs) is applied, and changes
    # no fact.
    again = dict(body, eventTime=stamp(BASE_TIME + timedelta(seconds=1)))
    assert tracker.apply(again).outcome is Outcome.APPLIED
    assert facts(tracker.get_call(call_id)) == facts(before)
