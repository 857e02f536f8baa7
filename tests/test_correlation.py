"""Legs and parents: linked whichever arrives first; placeholders invent nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tracker import Call, Outcome, Tracker
from tracker.testing import ACCOUNT, APPLICATION, BASE_TIME, disconnect, transfer_disconnect


def fetch(tracker: Tracker, call_id: str) -> Call:
    call = tracker.get_call(call_id)
    assert call is not None, call_id
    return call


def test_placeholder_parent_holds_only_what_the_leg_says(tracker: Tracker) -> None:
    tracker.apply(transfer_disconnect("c-parent", **{"from": "Anonymous", "to": "+15550001111"}))
    parent = fetch(tracker, "c-parent")
    assert parent.state == "initiated"
    assert parent.account_id == ACCOUNT  # from the leg's callUrl
    assert (parent.from_number, parent.to_number) == ("Anonymous", "+15550001111")
    assert parent.direction is None
    assert parent.application_id is None
    assert parent.cause is parent.disposition is parent.tag is None
    assert parent.start_time is parent.answer_time is parent.end_time is None
    assert parent.duration is None
    assert parent.history == ()
    assert parent.parent_call_id is None


@pytest.mark.parametrize("parent_first", [True, False])
def test_leg_links_to_parent_whichever_arrives_first(tracker: Tracker, parent_first: bool) -> None:
    parent = disconnect(direction="inbound", **{"from": "+15557770000"})
    leg = transfer_disconnect(parent["callId"])
    for body in [parent, leg] if parent_first else [leg, parent]:
        assert tracker.apply(body).outcome is Outcome.APPLIED
    linked = fetch(tracker, parent["callId"])
    assert linked.legs == (leg["callId"],)
    assert linked.state == "disconnected"
    assert linked.direction == "inbound"
    assert linked.from_number == "+15557770000"
    assert [(t.source, t.target) for t in linked.history] == [
        ("initiated", "answered"),
        ("answered", "disconnected"),
    ]
    child = fetch(tracker, leg["callId"])
    assert child.parent_call_id == parent["callId"]
    assert child.application_id == APPLICATION  # inherited: the leg's body names none


def test_leg_without_any_account_takes_its_parents(tracker: Tracker) -> None:
    parent = disconnect()
    leg = transfer_disconnect(parent["callId"], callUrl=...)
    tracker.apply(leg)
    assert fetch(tracker, leg["callId"]).account_id is None
    tracker.apply(parent)
    assert fetch(tracker, leg["callId"]).account_id == ACCOUNT


def test_placeholder_learns_its_account_from_a_later_leg(tracker: Tracker) -> None:
    first = transfer_disconnect("c-parent", callUrl=...)
    second = transfer_disconnect("c-parent")
    tracker.apply(first)
    tracker.apply(second)
    assert fetch(tracker, "c-parent").account_id == ACCOUNT
    assert fetch(tracker, first["callId"]).account_id == ACCOUNT


def test_placeholder_shows_the_numbers_of_its_earliest_leg(tracker: Tracker) -> None:
    early = transfer_disconnect("c-p", start=BASE_TIME, **{"from": "+1000", "to": "+2000"})
    late = transfer_disconnect(
        "c-p", start=BASE_TIME + timedelta(seconds=5), **{"from": "+3000", "to": "+4000"}
    )
    tracker.apply(late)
    tracker.apply(early)
    parent = fetch(tracker, "c-p")
    assert (parent.from_number, parent.to_number) == ("+1000", "+2000")


def test_parents_own_event_replaces_what_the_legs_said(tracker: Tracker) -> None:
    parent = disconnect(**{"from": "+19998887777"})
    tracker.apply(transfer_disconnect(parent["callId"], **{"from": "+1000"}))
    tracker.apply(parent)
    assert fetch(tracker, parent["callId"]).from_number == "+19998887777"


def test_legs_are_ordered_by_start_time_then_id(tracker: Tracker) -> None:
    parent = disconnect()
    later = transfer_disconnect(parent["callId"], "c-a", start=BASE_TIME + timedelta(seconds=9))
    tie_b = transfer_disconnect(parent["callId"], "c-c", start=BASE_TIME + timedelta(seconds=4))
    tie_a = transfer_disconnect(parent["callId"], "c-b", start=BASE_TIME + timedelta(seconds=4))
    for body in (later, parent, tie_b, tie_a):
        tracker.apply(body)
    assert fetch(tracker, parent["callId"]).legs == ("c-b", "c-c", "c-a")


def test_simultaneous_ring_losers_are_cancelled_legs(tracker: Tracker) -> None:
    parent = disconnect()
    winner = transfer_disconnect(parent["callId"], ring=4.0)
    losers = [transfer_disconnect(parent["callId"], ring=None, cause="cancel") for _ in range(2)]
    for body in (*losers, parent, winner):
        assert tracker.apply(body).outcome is Outcome.APPLIED
    assert len(fetch(tracker, parent["callId"]).legs) == 3
    loser = fetch(tracker, losers[0]["callId"])
    assert (loser.disposition, loser.answered, loser.talk_duration) == ("cancelled", False, None)
    assert fetch(tracker, winner["callId"]).disposition == "completed"


def test_legs_of_legs_form_a_tree(tracker: Tracker) -> None:
    root = disconnect()
    leg = transfer_disconnect(root["callId"])
    grandchild = transfer_disconnect(leg["callId"], callUrl=...)
    for body in (grandchild, leg, root):
        assert tracker.apply(body).outcome is Outcome.APPLIED
    assert fetch(tracker, root["callId"]).legs == (leg["callId"],)
    assert fetch(tracker, leg["callId"]).legs == (grandchild["callId"],)
    descendant = fetch(tracker, grandchild["callId"])
    assert (descendant.account_id, descendant.application_id) == (ACCOUNT, APPLICATION)


@pytest.mark.parametrize(
    ("cause", "disposition"),
    [
        ("hangup", "completed"),
        ("busy", "busy"),
        ("timeout", "no-answer"),
        ("cancel", "cancelled"),
        ("rejected", "rejected"),
        ("callback-error", "failed"),
        ("invalid-bxml", "failed"),
        ("application-error", "failed"),
        ("account-limit", "failed"),
        ("node-capacity-exceeded", "failed"),
        ("error", "failed"),
        ("unknown", "failed"),
        ("sip-503-brand-new-cause", "failed"),
    ],
)
def test_cause_maps_to_disposition(sqlite_tracker: Tracker, cause: str, disposition: str) -> None:
    body = disconnect(cause=cause)
    sqlite_tracker.apply(body)
    call = fetch(sqlite_tracker, body["callId"])
    assert (call.cause, call.disposition) == (cause, disposition)


def test_durations_come_from_the_times(tracker: Tracker) -> None:
    body = disconnect(ring=3.25, talk=61.5)
    tracker.apply(body)
    call = fetch(tracker, body["callId"])
    assert call.ring_duration == timedelta(seconds=3.25)
    assert call.talk_duration == timedelta(seconds=61.5)
    assert call.duration == timedelta(seconds=64.75)
    assert call.answered is True


def test_unanswered_call_has_no_talk_or_ring_duration(tracker: Tracker) -> None:
    body = disconnect(ring=None, cause="timeout")
    tracker.apply(body)
    call = fetch(tracker, body["callId"])
    assert (call.answered, call.talk_duration, call.ring_duration) == (False, None, None)
    assert call.duration == timedelta(seconds=20)


def test_sub_second_precision_survives_storage(tracker: Tracker) -> None:
    body = disconnect(startTime="2026-06-10T19:15:00.123456789Z", answerTime=...)
    tracker.apply(body)
    start = fetch(tracker, body["callId"]).start_time
    assert start is not None and start.microsecond == 123456 and start.utcoffset() == timedelta(0)


def test_texts_are_stored_as_sent(tracker: Tracker) -> None:
    fields: dict[str, Any] = {
        "tag": "",
        "errorMessage": "Callee is busy ☎ «ça»",
        "from": "sip:alice@example.com",
        "to": "Anonymous",
    }
    body = disconnect(**fields)
    tracker.apply(body)
    call = fetch(tracker, body["callId"])
    assert (call.tag, call.error_message) == ("", "Callee is busy ☎ «ça»")
    assert (call.from_number, call.to_number) == ("sip:alice@example.com", "Anonymous")
    assert call.error_id is None


def test_call_ids_differing_only_in_case_are_different_calls(tracker: Tracker) -> None:
    lower = disconnect("c-abc", callUrl=...)
    upper = disconnect("c-ABC", callUrl=..., cause="busy")
    assert tracker.apply(lower).outcome is Outcome.APPLIED
    assert tracker.apply(upper).outcome is Outcome.APPLIED
    assert fetch(tracker, "c-ABC").cause == "busy"
