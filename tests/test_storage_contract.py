"""The storage promises, on every backend: what `apply` returns is what was stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine.default import DefaultDialect

from tests.conftest import fresh_database
from tracker import Outcome, Tracker
from tracker.storage import UTCDateTime
from tracker.testing import (
    BASE_TIME,
    disconnect,
    initiate,
    transfer_complete,
    transfer_disconnect,
)


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


# --- a database without INSERT ... RETURNING for many rows (MySQL 8) ---------------------------


@pytest.fixture
def tracker_without_many_returning(backend: str, tmp_path: Path) -> Iterator[Tracker]:
    """A tracker whose dialect says, as MySQL 8's does, that an INSERT of many rows cannot return
    their ids (and, where the driver has a last row id, that no INSERT can return anything).
    No MySQL 8 server is at hand: this is the path it takes, on each backend here."""
    folder = tmp_path / "without-returning"
    folder.mkdir()
    for url in fresh_database(backend, folder):
        with Tracker(url) as tracker:
            tracker.upgrade()
            dialect = cast(DefaultDialect, tracker.engine.dialect)
            dialect.insert_executemany_returning = False
            dialect.insert_executemany_returning_sort_by_parameter_order = False
            if dialect.postfetch_lastrowid:  # PostgreSQL has no last row id, only RETURNING
                dialect.insert_returning = False
            yield tracker


def test_apply_many_without_insert_returning_gives_the_ids_log_and_outcomes_of_the_normal_path(
    tracker: Tracker, tracker_without_many_returning: Tracker
) -> None:
    parent = disconnect(direction="inbound")
    leg = transfer_disconnect(parent["callId"])
    bodies = [
        json.dumps(initiate(parent["callId"])),
        json.dumps(parent),
        json.dumps(leg),
        json.dumps(parent, indent=1),  # a duplicate
        b"not json",
        json.dumps({"eventType": "dtmf", "callId": parent["callId"]}),
        json.dumps(transfer_complete(parent["callId"])),
    ]
    expected = tracker.apply_many(bodies)
    found = tracker_without_many_returning.apply_many(bodies)

    assert found == expected
    assert [result.outcome for result in found] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
        Outcome.INVALID,
        Outcome.IGNORED,
        Outcome.APPLIED,
    ]
    logged = tracker_without_many_returning.events()
    assert [(e.id, e.body, e.outcome) for e in logged] == [
        (e.id, e.body, e.outcome) for e in tracker.events()
    ]
    assert [e.id for e in logged] == sorted(e.id for e in logged)
    for call_id in (parent["callId"], leg["callId"]):
        assert tracker_without_many_returning.get_call(call_id) == tracker.get_call(call_id)
