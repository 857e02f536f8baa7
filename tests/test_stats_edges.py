"""Statistics at the edges: bucket starts, `since`, fractions of a second, and exact means."""

from __future__ import annotations

from datetime import timedelta

from tests.stats_support import (
    NOW,
    T0,
    load,
    with_micro_times,
)
from tracker import Tracker
from tracker.testing import (
    disconnect_between,
    initiate,
    new_call_id,
)

# --- edges: bucket starts, `since`, fractions of a second, exact means --------------------------


def test_a_call_ending_as_an_hour_starts_is_not_up_in_that_hour(tracker: Tracker) -> None:
    eleven = T0.replace(hour=11)
    noon = eleven + timedelta(hours=1)
    load(
        tracker,
        [
            disconnect_between(eleven, noon),
            disconnect_between(eleven + timedelta(minutes=30), noon),
            disconnect_between(noon + timedelta(minutes=30), noon + timedelta(minutes=40)),
        ],
    )

    rows = tracker.stats(by="hour", now=NOW)

    # Up on [start, end): at 12:00 both earlier calls are down, and nothing else is up until C.
    assert [(row.start, row.attempts, row.peak_concurrent_calls) for row in rows] == [
        (eleven, 2, 2),
        (noon, 1, 1),
    ]


def test_an_hour_whose_only_attempt_was_never_up_still_counts_the_calls_up_through_it(
    tracker: Tracker,
) -> None:
    eleven = T0.replace(hour=11)
    noon = eleven + timedelta(hours=1)
    expired = new_call_id()
    load(
        tracker,
        [
            disconnect_between(eleven, noon + timedelta(hours=2)),
            initiate(expired, start=noon + timedelta(minutes=30)),
        ],
    )
    tracker.sweep(timedelta(hours=1), now=NOW)  # up for no time: its start is all that is known

    rows = tracker.stats(by="hour", now=NOW)

    assert [(row.start, row.attempts, row.peak_concurrent_calls) for row in rows] == [
        (eleven, 1, 1),
        (noon, 1, 1),
    ]


def test_a_call_ending_exactly_at_since_is_not_up_in_the_window(tracker: Tracker) -> None:
    eleven = T0.replace(hour=11)
    noon = eleven + timedelta(hours=1)
    load(
        tracker,
        [
            disconnect_between(eleven, noon),
            disconnect_between(eleven + timedelta(minutes=30), noon),
            disconnect_between(noon + timedelta(minutes=30), noon + timedelta(minutes=40)),
        ],
    )
    window = {"since": noon, "until": noon + timedelta(hours=1), "now": NOW}

    assert [row.peak_concurrent_calls for row in tracker.stats(**window)] == [1]
    assert [row.peak_concurrent_calls for row in tracker.stats(by="hour", **window)] == [1]
    assert [row.peak_concurrent_calls for row in tracker.stats(by="account", **window)] == [1]


def test_a_fraction_of_a_second_past_999500_microseconds_is_not_rounded_up(
    tracker: Tracker,
) -> None:
    start = T0 + timedelta(microseconds=999_600)
    answered = T0 + timedelta(seconds=5)
    end = answered + timedelta(seconds=7, microseconds=999_999)
    body = disconnect_between(start, end, answered=answered)
    load(tracker, [with_micro_times(body, start, answered, end)])

    (row,) = tracker.stats(now=NOW)

    assert row.mean_ring_time == 4_000_400 / 1_000_000
    assert row.acd == 7_999_999 / 1_000_000


def test_means_are_whole_microseconds_summed_and_divided_once(tracker: Tracker) -> None:
    # Summed as float seconds, 0.1 + 0.2 + 0.3 is 0.6000000000000001; as DECIMAL, 0.6/3 is
    # 0.19999999999999998. In whole microseconds it is 600000 / 3000000: 0.2 on every backend.
    bodies = []
    for tenths in (1, 2, 3):
        start = T0 + timedelta(minutes=tenths)
        answered = start + timedelta(seconds=tenths / 10)
        end = answered + timedelta(seconds=tenths / 10)
        bodies.append(with_micro_times(disconnect_between(start, end), start, answered, end))
    load(tracker, bodies)

    (row,) = tracker.stats(now=NOW)

    assert row.mean_ring_time == 0.2
    assert row.acd == 0.2
