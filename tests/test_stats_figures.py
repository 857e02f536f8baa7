"""Every figure the database counts equals the one counted in Python, and each definition holds."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.stats_support import (
    ACCOUNTS,
    NOW,
    T0,
    assert_figures,
    expected,
    generated_bodies,
    load,
)
from tracker import Call, Tracker
from tracker.testing import (
    answer,
    disconnect_between,
    initiate,
    new_call_id,
    realistic_bodies,
    transfer_disconnect,
)


@pytest.fixture
def generated(tracker: Tracker) -> list[Call]:
    """A tracker holding `generated_bodies`, with the early live calls expired by a sweep."""
    bodies, stale = generated_bodies(seed=9, calls=260)
    load(tracker, bodies)
    report = tracker.sweep(timedelta(hours=1), now=T0 + timedelta(hours=21))
    assert set(stale) <= set(report.expired)
    found = tracker.calls()
    dispositions = Counter(call.disposition for call in found)
    assert dispositions["expired"] > 0 and dispositions[None] > 0  # both kinds of unended call
    assert any(call.start_time is None for call in found)  # placeholders
    assert any(call.parent_call_id for call in found)
    return found


# --- every figure, on every backend ---------------------------------------------------------

WINDOWS = [
    pytest.param({}, id="everything"),
    pytest.param(
        {
            "since": T0 + timedelta(hours=5, minutes=17),
            "until": T0 + timedelta(hours=41, seconds=3),
        },
        id="mid-hour-window",
    ),
    pytest.param({"since": T0 + timedelta(hours=30)}, id="since-only"),
    pytest.param({"until": T0 + timedelta(hours=2, minutes=30)}, id="until-only"),
    pytest.param({"account_id": ACCOUNTS[1]}, id="one-account"),
    pytest.param(
        {"account_id": ACCOUNTS[0], "since": T0 + timedelta(hours=26, minutes=30)},
        id="account-since",
    ),
]


@pytest.mark.parametrize("by", ["hour", "day", "account", None])
def test_every_figure_equals_the_one_counted_from_the_snapshots(
    tracker: Tracker, generated: list[Call], by: str | None
) -> None:
    for window in WINDOWS:
        arguments: dict[str, Any] = window.values[0]
        found = tracker.stats(by=by, now=NOW, **arguments)
        assert_figures(found, expected(generated, by, **arguments), by)


def test_the_realistic_stream_gives_the_figures_counted_from_its_snapshots(
    tracker: Tracker,
) -> None:
    bodies = [json.loads(body) for body in realistic_bodies(1200, seed=11)]
    calls = load(tracker, bodies)
    for by in ("hour", "account", None):
        assert_figures(tracker.stats(by=by, now=NOW), expected(calls, by), by)


# --- the definitions, one at a time ----------------------------------------------------------


def test_an_expired_call_is_an_attempt_of_its_own_disposition_with_no_talk_time(
    tracker: Tracker,
) -> None:
    call_id = new_call_id()
    load(tracker, [answer(call_id, start=T0, ring=4.0)])
    tracker.sweep(timedelta(hours=1), now=T0 + timedelta(hours=5))

    (row,) = tracker.stats(now=NOW)

    assert (row.attempts, row.answered, row.live) == (1, 1, 0)
    assert (row.dispositions, row.causes) == ({"expired": 1}, {})
    assert (row.acd, row.mean_ring_time) == (None, 4.0)
    # Up for its four known seconds of ringing, not until the sweep.
    assert row.peak_concurrent_calls == 1
    assert tracker.stats(since=T0 + timedelta(seconds=5), now=NOW)[0].peak_concurrent_calls == 0


def test_calls_still_up_when_an_hour_starts_count_in_that_hours_peak(tracker: Tracker) -> None:
    ten = T0.replace(hour=10)
    minutes = [(50, 80), (55, 65), (90, 91), (130, 131)]  # from ten o'clock
    load(
        tracker,
        [
            disconnect_between(ten + timedelta(minutes=up), ten + timedelta(minutes=down))
            for up, down in minutes
        ],
    )

    rows = tracker.stats(by="hour", now=NOW)

    # At 11:00 the first two calls are up; nothing starts in that hour before 11:30.
    assert [(row.start, row.attempts, row.peak_concurrent_calls) for row in rows] == [
        (ten, 2, 2),
        (ten + timedelta(hours=1), 1, 2),
        (ten + timedelta(hours=2), 1, 1),
    ]


def test_a_call_ending_as_another_starts_is_not_counted_with_it(tracker: Tracker) -> None:
    first = disconnect_between(T0, T0 + timedelta(minutes=5))
    second = disconnect_between(T0 + timedelta(minutes=5), T0 + timedelta(minutes=9))
    load(tracker, [first, second])

    assert tracker.stats(now=NOW)[0].peak_concurrent_calls == 1


def test_a_live_call_counts_as_up_until_now(tracker: Tracker) -> None:
    ringing = new_call_id()
    brief = disconnect_between(T0 + timedelta(hours=1), T0 + timedelta(hours=1, minutes=1))
    load(tracker, [initiate(ringing, start=T0), brief])

    def peaks(now: datetime) -> list[int]:
        return [row.peak_concurrent_calls for row in tracker.stats(by="hour", now=now)]

    assert peaks(T0 + timedelta(hours=2)) == [1, 2]
    assert peaks(T0 + timedelta(minutes=30)) == [1, 1]
    row = tracker.stats(now=NOW)[0]
    assert (row.attempts, row.live, row.dispositions) == (2, 1, {"completed": 1})


def test_a_window_where_no_call_started_still_shows_the_calls_up_in_it(tracker: Tracker) -> None:
    load(tracker, [disconnect_between(T0, T0 + timedelta(hours=3))])

    (row,) = tracker.stats(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2))

    assert (row.attempts, row.asr, row.acd, row.peak_concurrent_calls) == (0, None, None, 1)
    assert (row.start, row.end) == (T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert tracker.stats(by="hour", since=T0 + timedelta(hours=1)) == []


def test_the_peak_is_looked_for_within_the_window_only(tracker: Tracker) -> None:
    ten = T0.replace(hour=10)
    before = [disconnect_between(ten, ten + timedelta(minutes=20)) for _ in range(3)]
    after = [
        disconnect_between(ten + timedelta(minutes=40), ten + timedelta(minutes=50)),
        disconnect_between(ten + timedelta(minutes=45), ten + timedelta(minutes=70)),
    ]
    load(tracker, [*before, *after])
    window = {"since": ten + timedelta(minutes=30), "until": ten + timedelta(minutes=60)}

    assert tracker.stats(**window)[0].peak_concurrent_calls == 2
    assert [row.peak_concurrent_calls for row in tracker.stats(by="hour", **window)] == [2]
    assert [row.peak_concurrent_calls for row in tracker.stats(by="hour")] == [3]


def test_legs_are_attempts_and_a_parent_known_only_through_them_is_not(tracker: Tracker) -> None:
    parent = new_call_id()
    taken = transfer_disconnect(parent, start=T0, ring=2.0, talk=30.0)
    missed = transfer_disconnect(parent, start=T0, ring=None, cause="timeout")
    load(tracker, [taken, missed])

    (row,) = tracker.stats(now=NOW)

    assert (row.attempts, row.answered, row.asr) == (2, 1, 0.5)
    assert row.dispositions == {"completed": 1, "no-answer": 1}
    assert (row.acd, row.mean_ring_time) == (30.0, 2.0)


def test_means_keep_the_microseconds_of_the_times(tracker: Tracker) -> None:
    def micro(at: datetime) -> str:
        return at.isoformat(timespec="microseconds").replace("+00:00", "Z")

    start = T0 + timedelta(microseconds=123_456)
    answered = start + timedelta(seconds=1, microseconds=7)
    end = answered + timedelta(seconds=2, microseconds=999_989)
    body = disconnect_between(start, end, answered=answered)
    body.update(startTime=micro(start), answerTime=micro(answered), endTime=micro(end))
    load(tracker, [body])

    (row,) = tracker.stats()

    assert row.mean_ring_time == 1.000007
    assert row.acd == 2.999989


def test_an_empty_database_gives_one_empty_bucket_and_no_hours(tracker: Tracker) -> None:
    (row,) = tracker.stats()

    assert (row.attempts, row.answered, row.asr, row.peak_concurrent_calls) == (0, 0, None, 0)
    assert (row.dispositions, row.causes) == ({}, {})
    assert tracker.stats(by="day") == [] == tracker.stats(by="account")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"by": "week"},
            "by must be one of 'account', 'hour', 'day', 'number' or None; got 'week'",
        ),
        ({"since": datetime(2026, 3, 1)}, "since=2026-03-01T00:00:00 has no time zone"),
        ({"until": "2026-03-01"}, "until must be a datetime"),
        ({"now": datetime(2026, 3, 1)}, "now=2026-03-01T00:00:00 has no time zone"),
        ({"since": T0, "until": T0}, "must be after since"),
        ({"account_id": 5555}, "account_id must be a str or None"),
    ],
)
def test_bad_arguments_are_refused_with_what_to_pass(
    tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tracker.stats(**arguments)
