"""Reading calls: any number of snapshots costs a few statements, and each says exactly what
reading that call alone says."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError

from tests.conftest import SERVERS, fresh_database
from tracker import LIVE_STATES, Call, Outcome, Tracker, lifecycle, storage
from tracker import tracker as tracker_module
from tracker.storage import statements
from tracker.testing import (
    ACCOUNT,
    APPLICATION,
    BASE_TIME,
    disconnect,
    initiate,
    new_call_id,
    transfer_disconnect,
)

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
    monkeypatch.setattr(statements, "CHUNK", 2)
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


# --- arguments: one rule for instants, every filter checked -----------------------------------


@contextmanager
def local_time_zone(zone: str) -> Iterator[None]:
    """The process's local time zone set to `zone` while the block runs (POSIX `tzset`)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_an_instant_gives_the_same_calls_whatever_the_local_time_zone(tracker: Tracker) -> None:
    """A naive bound is refused in every zone, never read as local time; an aware one selects
    the same calls in New York as in UTC."""
    early, late = disconnect(), disconnect(start=BASE_TIME + timedelta(hours=3))
    apply_all(tracker, [early, late])
    after = BASE_TIME + timedelta(hours=1)
    naive = after.replace(tzinfo=None)
    answers = []
    for zone in ("UTC", "America/New_York"):
        with local_time_zone(zone):
            assert time.localtime().tm_zone in ("UTC", "EST", "EDT")
            found = tracker.calls(started_after=after)
            answers.append([call.call_id for call in found])
            for arguments in ({"started_after": naive}, {"started_before": naive}):
                with pytest.raises(ValueError, match="has no time zone"):
                    tracker.calls(**arguments)
            with pytest.raises(ValueError, match="has no time zone"):
                list(tracker.export(since=naive))
            with pytest.raises(ValueError, match="has no time zone"):
                tracker.stats(since=naive)
    assert answers == [[late["callId"]]] * 2


def test_the_column_type_refuses_a_naive_datetime_instead_of_reading_it_as_local_time(
    tracker: Tracker,
) -> None:
    """Below the public methods too: a naive datetime bound to a time column is an error, in
    every local time zone, on the driver path and on SQLAlchemy's alike."""
    apply_all(tracker, [disconnect()])
    naive = BASE_TIME.replace(tzinfo=None)
    with local_time_zone("America/New_York"), tracker.engine.connect() as connection:
        with pytest.raises(Exception, match="has no time zone") as raised:
            connection.execute(
                select(storage.calls.c.call_id).where(storage.calls.c.start_time >= naive)
            )
        assert isinstance(raised.value, ValueError | StatementError)
        with pytest.raises(ValueError, match="has no time zone"):
            storage.where_calls_page(
                connection,
                after=None,
                since=naive,
                until=None,
                account_id=None,
                originals_only=False,
                limit=10,
            )
        aware = storage.where_calls(connection, started_after=BASE_TIME)
    assert len(aware) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"state": "live"}, "state='live' is not a state: pass state=LIVE_STATES"),
        ({"state": "ringing"}, "state must be one of 'initiated', 'answered', 'disconnected'"),
        ({"state": ["answered", "talking"]}, "got 'talking'"),
        ({"state": []}, "a non-empty list of them, or None"),
        ({"state": 3}, "got 3"),
        ({"disposition": "hangup"}, "disposition must be one of 'completed'"),
        ({"account_id": 55555555}, "account_id must be a str or None"),
        ({"started_after": datetime(2026, 3, 1)}, "started_after=2026-03-01T00:00:00 has no"),
        ({"started_before": "2026-03-01"}, "started_before must be a datetime"),
        (
            {"started_after": BASE_TIME, "started_before": BASE_TIME},
            "started_before (2026-06-10T19:15:00+00:00) must be after started_after",
        ),
        ({"limit": -1}, "limit must be a positive int; got -1"),
        ({"limit": 0}, "limit must be a positive int; got 0"),
        ({"limit": True}, "limit must be a positive int; got True"),
        ({"limit": 2.0}, "limit must be a positive int; got 2.0"),
    ],
)
def test_bad_arguments_of_calls_are_refused_with_what_to_pass(
    tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    """The same answer on every backend: a ValueError before anything is read, never a list on
    one database and a StorageError on another."""
    apply_all(tracker, [disconnect()])
    with pytest.raises(ValueError, match=re.escape(message)):
        tracker.calls(**arguments)
    if set(arguments) != {"limit"}:
        with pytest.raises(ValueError, match=re.escape(message)):
            tracker.iter_calls(**arguments)
    if set(arguments) == {"state"}:
        with pytest.raises(ValueError, match=re.escape(message)):
            tracker.count_calls(**arguments)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"outcome": "accepted"}, "outcome must be one of 'applied', 'duplicate'"),
        ({"outcome": ["applied"]}, "outcome must be one of"),
        ({"call_id": 42}, "call_id must be a str or None; got 42"),
        ({"limit": -1}, "limit must be a positive int; got -1"),
        ({"limit": "10"}, "limit must be a positive int; got '10'"),
    ],
)
def test_bad_arguments_of_events_are_refused_with_what_to_pass(
    tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    apply_all(tracker, [disconnect()])
    with pytest.raises(ValueError, match=re.escape(message)):
        tracker.events(**arguments)


def test_live_calls_are_asked_for_by_their_two_states(tracker: Tracker) -> None:
    ringing, ended = new_call_id(), disconnect()
    apply_all(tracker, [initiate(ringing), ended])
    assert [call.call_id for call in tracker.calls(state=LIVE_STATES)] == [ringing]
    assert [call.call_id for call in tracker.calls(state=list(LIVE_STATES))] == [ringing]
    assert [call.call_id for call in tracker.calls(state="initiated")] == [ringing]
    assert tracker.count_calls(state=LIVE_STATES) == 1
    assert [event.outcome for event in tracker.events(outcome=Outcome.APPLIED)] == [
        Outcome.APPLIED
    ] * 2


# --- bounded reads: lists with a cap, iterators a page at a time ------------------------------


def test_a_list_of_more_calls_or_entries_than_the_cap_is_refused_not_held(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `MAX_LISTED`, `calls()` and `events()` with no limit refuse (having read one row
    more than the cap, no more); a limit, or the iterators, read what is asked."""
    apply_all(tracker, transfer_trees(3))  # nine calls, nine log entries
    monkeypatch.setattr(tracker_module, "MAX_LISTED", 9)
    assert len(tracker.calls()) == 9
    assert len(tracker.events()) == 9
    monkeypatch.setattr(tracker_module, "MAX_LISTED", 8)
    with (
        statements_sent(tracker) as sent,
        pytest.raises(ValueError, match=r"more than 8 calls match.*iter_calls"),
    ):
        tracker.calls()
    assert any("LIMIT" in statement.upper() for statement in sent)
    with pytest.raises(ValueError, match=r"more than 8 log entries match.*iter_events"):
        tracker.events()
    assert len(tracker.calls(limit=9)) == 9
    assert len(tracker.events(limit=100)) == 9
    assert len(tracker.calls(disposition="busy")) == 3


def test_iter_calls_reads_every_call_in_list_order_a_page_at_a_time(tracker: Tracker) -> None:
    """Pages split calls that share a start time and the placeholders (which come last): the
    calls come out complete, in `calls()` order, one short read per page."""
    tied = BASE_TIME + timedelta(hours=2)
    bodies = transfer_trees(3)
    bodies += [disconnect(f"c-tie-{n}", start=tied) for n in (3, 1, 4, 0, 2)]
    bodies += [transfer_disconnect(f"c-placeholder-{n}", start=tied) for n in (2, 0, 1)]
    apply_all(tracker, bodies)
    whole = tracker.calls()
    assert len(whole) == 9 + 5 + 3 + 3
    assert [call.call_id for call in whole[-3:]] == [f"c-placeholder-{n}" for n in range(3)]
    for page_size in (1, 2, 3, 7, 1000):
        pages = count_connections(tracker)
        with pages:
            assert list(tracker.iter_calls(page_size=page_size)) == whole
        assert pages.count == len(whole) // page_size + 1
    window = {"started_after": tied, "account_id": ACCOUNT}
    assert list(tracker.iter_calls(**window, page_size=2)) == tracker.calls(**window)
    assert list(tracker.iter_calls(disposition="busy", page_size=2)) == tracker.calls(
        disposition="busy"
    )
    assert list(tracker.iter_calls(state=LIVE_STATES, page_size=1)) == tracker.calls(
        state=LIVE_STATES
    )


def test_iter_events_reads_the_whole_log_oldest_first_a_page_at_a_time(tracker: Tracker) -> None:
    bodies = transfer_trees(4)
    apply_all(tracker, bodies)
    tracker.apply(b"not json")
    tracker.apply_many(bodies[:3])  # duplicates
    whole = tracker.events()
    assert len(whole) == 12 + 1 + 3
    for page_size in (1, 5, 16, 17):
        pages = count_connections(tracker)
        with pages:
            assert list(tracker.iter_events(page_size=page_size)) == whole
        assert pages.count == len(whole) // page_size + 1
    for filters in ({"outcome": "duplicate"}, {"call_id": bodies[0]["callId"]}):
        assert list(tracker.iter_events(**filters, page_size=1)) == tracker.events(**filters)


class count_connections:  # noqa: N801 - used as a context manager, named as a function
    """How many connections the tracker's engine checks out while the block runs: one per page
    of a paged read."""

    def __init__(self, tracker: Tracker) -> None:
        self.engine = tracker.engine
        self.count = 0

    def _checked_out(self, *_arguments: Any) -> None:
        self.count += 1

    def __enter__(self) -> None:
        event.listen(self.engine, "engine_connect", self._checked_out)

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "engine_connect", self._checked_out)


# --- one order of ids: code point, on every backend and in Python -----------------------------

# In code point order. An ICU `en-US` collation orders them `c_a, c-A, C-a, c-b`.
TIED_IDS = ("C-a", "c-A", "c-b", "c_a")


@pytest.fixture
def database_in_a_language_collation(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend; on PostgreSQL, one whose collation is ICU's `en-US`
    (ignoring punctuation and case at first), the kind a server set up for people gets."""
    if backend != "postgresql":
        yield from fresh_database(backend, tmp_path)
        return
    for url in fresh_database(backend, tmp_path):  # for the server check and a name to drop
        name = make_url(url).database
        admin = create_engine(SERVERS["postgresql"], isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}"'))
                connection.execute(
                    text(
                        f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8 '
                        "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                    )
                )
                # The database really does order ids the other way: the test proves something.
                ordered = connection.execute(
                    text(
                        "SELECT id FROM (VALUES ('C-a'), ('c-A'), ('c-b'), ('c_a')) AS t(id) "
                        'ORDER BY id COLLATE "en-US-x-icu"'
                    )
                ).scalars()
                assert tuple(ordered) == ("c_a", "c-A", "C-a", "c-b")
        finally:
            admin.dispose()
        yield url


def test_calls_legs_and_the_export_order_tied_ids_by_code_point(
    database_in_a_language_collation: str,
) -> None:
    parent = disconnect("c-parent", start=BASE_TIME - timedelta(minutes=1))
    tied = BASE_TIME + timedelta(seconds=30)
    legs = [transfer_disconnect("c-parent", call_id, start=tied) for call_id in TIED_IDS[::-1]]
    originals = [disconnect(f"o{call_id}", start=tied) for call_id in TIED_IDS[::-1]]
    with Tracker(database_in_a_language_collation) as tracker:
        tracker.upgrade()
        apply_all(tracker, [*legs, *originals, parent])
        expected = ["c-parent", *TIED_IDS, *(f"o{call_id}" for call_id in TIED_IDS)]
        assert sorted(expected[1:]) == expected[1:]  # Python's order is code point order
        assert fetch(tracker, "c-parent").legs == TIED_IDS
        assert [call.call_id for call in tracker.calls()] == expected
        assert [call.call_id for call in tracker.iter_calls(page_size=3)] == expected
        for batch_size in (1000, 3):
            exported = tracker.export(batch_size=batch_size)
            assert [row["call_id"] for row in exported] == expected
        windowed = tracker.export(since=tied, account_id=ACCOUNT, batch_size=2)
        assert [row["call_id"] for row in windowed] == expected[1:]
