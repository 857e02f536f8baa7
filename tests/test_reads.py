"""Reading calls: any number of snapshots costs a few statements, and each says exactly what
reading that call alone says."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from tests.factories import ACCOUNT, APPLICATION, BASE_TIME, disconnect, transfer_disconnect
from tracker import Call, Outcome, Tracker, lifecycle, storage

OTHER_APPLICATION = "0f1e2d3c-0000-4000-8000-000000000002"


@contextmanager
def statements_sent(tracker: Tracker) -> Iterator[list[str]]:
    """Every statement the tracker's engine sends to the database while the block runs."""
    sent: list[str] = []

    def record(*arguments: Any) -> None:
        sent.append(arguments[2])

    event.listen(tracker.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(tracker.engine, "before_cursor_execute", record)


def transfer_trees(trees: int, *, first: int = 0) -> list[dict[str, Any]]:
    """`trees` trees of three calls: a root, its leg, and the leg's own leg (which ends busy and
    names no account or application), applied deepest first so every parent reports after its
    legs."""
    bodies: list[dict[str, Any]] = []
    for number in range(first, first + trees):
        start = BASE_TIME + timedelta(minutes=number)
        root = disconnect(start=start)
        leg = transfer_disconnect(root["callId"], start=start + timedelta(seconds=5))
        grandchild = transfer_disconnect(
            leg["callId"],
            start=start + timedelta(seconds=9),
            ring=None,
            cause="busy",
            callUrl=...,
        )
        bodies += [grandchild, leg, root]
    return bodies


def apply_all(tracker: Tracker, bodies: list[dict[str, Any]]) -> None:
    assert {result.outcome for result in tracker.apply_many(bodies)} == {Outcome.APPLIED}


def fetch(tracker: Tracker, call_id: str) -> Call:
    call = tracker.get_call(call_id)
    assert call is not None, call_id
    return call


def count_statements(tracker: Tracker, **filters: Any) -> tuple[int, list[Call]]:
    with statements_sent(tracker) as sent:
        found = tracker.calls(**filters)
    return len(sent), found


def test_listing_300_calls_sends_as_few_statements_as_listing_30(tracker: Tracker) -> None:
    apply_all(tracker, transfer_trees(10))
    few_statements, few = count_statements(tracker)
    apply_all(tracker, transfer_trees(90, first=10))
    many_statements, many = count_statements(tracker)
    assert (len(few), len(many)) == (30, 300)
    assert many_statements == few_statements
    # The calls, then legs, histories and transfer attempts of all of them (SQLite adds its
    # BEGIN).
    assert many_statements <= 5


def test_ancestors_outside_the_list_cost_one_statement_per_level(tracker: Tracker) -> None:
    """Only the grandchildren are listed: their parents and grandparents are read level by level
    for all of them at once, not call by call."""
    apply_all(tracker, transfer_trees(10))
    few_statements, few = count_statements(tracker, disposition="busy")
    apply_all(tracker, transfer_trees(90, first=10))
    many_statements, many = count_statements(tracker, disposition="busy")
    assert (len(few), len(many)) == (10, 100)
    assert {call.application_id for call in many} == {APPLICATION}
    assert many_statements == few_statements
    assert many_statements <= 7  # as above, plus the parents, then the grandparents


def test_a_listed_call_equals_the_call_read_alone(tracker: Tracker) -> None:
    bodies = transfer_trees(4)
    placeholder_leg = transfer_disconnect("c-placeholder", start=BASE_TIME + timedelta(hours=1))
    own_application = transfer_disconnect(bodies[2]["callId"], applicationId=OTHER_APPLICATION)
    apply_all(tracker, [*bodies, placeholder_leg, own_application])
    listed = tracker.calls()
    assert listed == [fetch(tracker, call.call_id) for call in listed]
    assert tracker.calls(disposition="busy") == [
        fetch(tracker, call.call_id) for call in listed if call.disposition == "busy"
    ]


def test_snapshots_do_not_depend_on_how_the_ids_are_chunked(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_all(tracker, transfer_trees(5))
    whole = tracker.calls()
    whole_grandchildren = tracker.calls(disposition="busy")
    monkeypatch.setattr(storage, "_CHUNK", 2)
    assert tracker.calls() == whole
    assert tracker.calls(disposition="busy") == whole_grandchildren


def test_legs_of_every_listed_call_are_its_own_by_start_time_then_id(tracker: Tracker) -> None:
    first, second = disconnect(), disconnect(start=BASE_TIME + timedelta(seconds=1))
    at = BASE_TIME + timedelta(seconds=30)
    legs = [
        transfer_disconnect(first["callId"], "c-late", start=at + timedelta(seconds=1)),
        transfer_disconnect(first["callId"], "c-tie-b", start=at),
        transfer_disconnect(second["callId"], "c-other", start=at),
        transfer_disconnect(first["callId"], "c-tie-a", start=at),
    ]
    grandchild = transfer_disconnect("c-tie-a", "c-grandchild", start=at)
    apply_all(tracker, [*legs, grandchild, second, first])
    by_id = {call.call_id: call for call in tracker.calls()}
    assert by_id[first["callId"]].legs == ("c-tie-a", "c-tie-b", "c-late")
    assert by_id[second["callId"]].legs == ("c-other",)
    assert by_id["c-tie-a"].legs == ("c-grandchild",)
    assert by_id["c-grandchild"].legs == ()


def test_a_call_with_no_start_time_sorts_after_every_started_one() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    legs = [("c-b", None), ("c-z", started), ("c-a", None), ("c-y", started - timedelta(days=1))]
    assert sorted(legs, key=lambda leg: lifecycle.leg_order(*leg)) == [
        ("c-y", started - timedelta(days=1)),
        ("c-z", started),
        ("c-a", None),
        ("c-b", None),
    ]


def test_a_leg_shows_the_application_of_its_nearest_ancestor_that_names_one(
    tracker: Tracker,
) -> None:
    root = disconnect()
    plain_leg = transfer_disconnect(root["callId"])
    named_leg = transfer_disconnect(root["callId"], applicationId=OTHER_APPLICATION)
    under_plain = transfer_disconnect(plain_leg["callId"])
    under_named = transfer_disconnect(named_leg["callId"])
    apply_all(tracker, [root, plain_leg, named_leg, under_plain, under_named])
    shown = {call.call_id: call.application_id for call in tracker.calls()}
    assert shown == {
        root["callId"]: APPLICATION,
        plain_leg["callId"]: APPLICATION,
        named_leg["callId"]: OTHER_APPLICATION,
        under_plain["callId"]: APPLICATION,  # two levels up
        under_named["callId"]: OTHER_APPLICATION,  # the nearest one, not the root's
    }


def test_a_parent_reporting_after_its_legs_gives_them_its_application(tracker: Tracker) -> None:
    root = disconnect()
    leg = transfer_disconnect(root["callId"])
    grandchild = transfer_disconnect(leg["callId"], start=BASE_TIME + timedelta(seconds=20))
    apply_all(tracker, [grandchild, leg])
    before = tracker.calls()
    # The root is still a placeholder: it has no start time, so it comes last.
    assert [call.call_id for call in before] == [
        leg["callId"],
        grandchild["callId"],
        root["callId"],
    ]
    assert {call.application_id for call in before} == {None}
    placeholder = before[-1]
    assert (placeholder.state, placeholder.legs, placeholder.history) == (
        "initiated",
        (leg["callId"],),
        (),
    )
    apply_all(tracker, [root])
    assert {call.application_id for call in tracker.calls()} == {APPLICATION}
    assert fetch(tracker, grandchild["callId"]).application_id == APPLICATION


def test_a_loop_in_the_ancestry_ends_the_walk_with_no_application(tracker: Tracker) -> None:
    """A race may leave a call its own ancestor (issue 12, item 8); reading must still end."""
    root = disconnect(applicationId=...)
    leg = transfer_disconnect(root["callId"])
    grandchild = transfer_disconnect(leg["callId"])
    apply_all(tracker, [root, leg, grandchild])
    with tracker.engine.begin() as connection:
        connection.execute(
            update(storage.calls)
            .where(storage.calls.c.call_id == root["callId"])
            .values(parent_call_id=grandchild["callId"])
        )
    listed = tracker.calls()
    assert {call.application_id for call in listed} == {None}
    assert {call.account_id for call in listed} == {ACCOUNT}
    assert listed == [fetch(tracker, call.call_id) for call in listed]
    assert fetch(tracker, root["callId"]).legs == (leg["callId"],)
