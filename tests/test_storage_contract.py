"""The storage promises, on every backend: what `apply` returns is what was stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from tests.factories import BASE_TIME, disconnect, transfer_disconnect
from tracker import Outcome, Tracker
from tracker.storage import UTCDateTime


def test_applied_call_reads_back_with_every_fact(tracker: Tracker) -> None:
    body = disconnect(tag="vip", errorMessage="", enqueuedTime="2026-06-10T19:14:59.5Z")
    result = tracker.apply(json.dumps(body))
    assert result.outcome is Outcome.APPLIED
    call = tracker.get_call(body["callId"])
    assert call is not None
    assert call.state == "disconnected"
    assert call.tag == "vip"
    assert call.error_message == ""
    assert call.enqueued_time is not None and call.enqueued_time.microsecond == 500000
    assert [(step.source, step.target) for step in call.history] == [
        ("initiated", "answered"),
        ("answered", "disconnected"),
    ]


def test_leg_links_to_placeholder_parent(tracker: Tracker) -> None:
    leg = transfer_disconnect("c-parent")
    assert tracker.apply(leg).outcome is Outcome.APPLIED
    parent = tracker.get_call("c-parent")
    assert parent is not None
    assert parent.legs == (leg["callId"],)
    assert parent.state == "initiated"


def test_event_log_keeps_every_body_byte_for_byte(tracker: Tracker) -> None:
    bodies = [b"\xff\xfe not utf-8", b'{"eventType": "dtmf"}', json.dumps(disconnect()).encode()]
    for body in bodies:
        tracker.apply(body)
    logged = tracker.events()
    assert [event.body for event in logged] == bodies
    assert [event.outcome for event in logged] == ["invalid", "ignored", "applied"]
    assert all(event.received_at.tzinfo is not None for event in logged)


def test_event_log_filters_by_call_and_outcome_and_keeps_the_newest(tracker: Tracker) -> None:
    body = disconnect()
    for _ in range(3):
        tracker.apply(body)
    tracker.apply(disconnect())
    assert [e.outcome for e in tracker.events(call_id=body["callId"])] == [
        "applied",
        "duplicate",
        "duplicate",
    ]
    assert len(tracker.events(outcome="duplicate")) == 2
    newest = tracker.events(limit=2)
    assert [e.id for e in newest] == [e.id for e in tracker.events()][-2:]


def test_upgrade_reports_the_revisions_it_moved_between(database_url: str) -> None:
    with Tracker(database_url) as tracker:
        first = tracker.upgrade()
        again = tracker.upgrade()
    assert first.from_revision is None and first.changed
    assert (again.from_revision, again.changed) == (first.to_revision, False)


def test_calls_are_listed_by_start_time_with_placeholders_last(tracker: Tracker) -> None:
    late = disconnect(start=BASE_TIME + timedelta(hours=1))
    early = disconnect(start=BASE_TIME)
    leg = transfer_disconnect("c-placeholder", start=BASE_TIME + timedelta(minutes=30))
    for body in (late, leg, early):
        tracker.apply(body)
    assert [call.call_id for call in tracker.calls()] == [
        early["callId"],
        leg["callId"],
        late["callId"],
        "c-placeholder",
    ]


def test_calls_filter_by_state_disposition_account_and_time(tracker: Tracker) -> None:
    busy = disconnect(ring=None, cause="busy", start=BASE_TIME)
    other_account = disconnect(accountId="777", callUrl=..., start=BASE_TIME + timedelta(hours=2))
    tracker.apply(busy)
    tracker.apply(other_account)
    tracker.apply(transfer_disconnect("c-open"))
    assert [c.call_id for c in tracker.calls(disposition="busy")] == [busy["callId"]]
    assert [c.call_id for c in tracker.calls(state="initiated")] == ["c-open"]
    assert [c.call_id for c in tracker.calls(account_id="777")] == [other_account["callId"]]
    window = tracker.calls(
        started_after=BASE_TIME + timedelta(hours=1), started_before=BASE_TIME + timedelta(hours=3)
    )
    assert [c.call_id for c in window] == [other_account["callId"]]


@given(st.datetimes(timezones=st.just(UTC)))
def test_sqlite_instants_are_stored_as_sqlalchemys_datetime_text(instant: datetime) -> None:
    """The tracker's faster SQLite conversion writes and reads exactly SQLAlchemy's DATETIME
    text, so rows written before it, and by it, read back the same."""
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect)
    theirs = sqlite.DATETIME()
    naive = instant.replace(tzinfo=None)
    text = theirs.bind_processor(dialect)(naive)
    assert ours.bind_processor(dialect)(instant) == text
    assert ours.result_processor(dialect, None)(text) == instant
    assert theirs.result_processor(dialect, None)(text) == naive
