"""Peak concurrency over a window finds the calls up in it by their start, their end, the live
set and the sweep's ends: exact at the window's edges, whatever history precedes it."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect

from benchmarks import stats as stats_bench
from tests.stats_support import (
    MICROSECOND,
    NOW,
    T0,
    assert_figures,
    expected,
    load,
    with_micro_times,
)
from tracker import Tracker
from tracker.schema import alembic_config
from tracker.testing import ACCOUNT, answer, disconnect_between, initiate, new_call_id

SINCE = T0 + timedelta(days=2)
UNTIL = SINCE + timedelta(days=1)
HISTORY_DAYS = 10


def history(seed: int, calls: int) -> list[dict[str, Any]]:
    """Calls of one to ten minutes over the days before the window, all ended an hour before
    it: none of them is up in it."""
    draw = random.Random(seed)
    bodies = []
    for _ in range(calls):
        start = SINCE - timedelta(seconds=draw.uniform(2 * 3600, HISTORY_DAYS * 86400))
        end = start + timedelta(seconds=draw.uniform(60, 600))
        answered = start + timedelta(seconds=draw.uniform(1, 20)) if draw.random() < 0.8 else None
        bodies.append(disconnect_between(start, end, answered=answered))
    return bodies


def between(start: datetime, end: datetime) -> dict[str, Any]:
    """An ended call, its times to the microsecond."""
    return with_micro_times(disconnect_between(start, end), start, None, end)


def load_the_edges(tracker: Tracker) -> None:
    """Eight calls up at `since`, found every way a report finds them: a call live for days;
    calls that started an hour or less before `since` (exactly an hour, 50 and 30 minutes) and
    ended after it; long calls that started earlier (three hours, an hour and a microsecond)
    and ended after it; and calls the sweep ended after an answer after `since` (started ten
    minutes and two hours before it). Beside them, calls that must not count: ended a
    microsecond before `since` or at it (long ones too), started at `until`, swept with their
    last known time before `since`. No later instant of the window has as many calls up."""
    swept_in, swept_long = new_call_id(), new_call_id()
    swept_before, swept_unanswered = new_call_id(), new_call_id()
    load(
        tracker,
        [
            # Last known times: answers at since + 10 min and since + 5 min; an answer and a
            # start before `since`.
            answer(swept_in, start=SINCE - timedelta(minutes=10), ring=20 * 60),
            answer(swept_long, start=SINCE - timedelta(hours=2), ring=125 * 60),
            answer(swept_before, start=SINCE - timedelta(hours=2), ring=60),
            initiate(swept_unanswered, start=SINCE - timedelta(hours=1)),
        ],
    )
    tracker.sweep(timedelta(hours=1), now=NOW)
    hour = timedelta(hours=1)
    load(
        tracker,
        [
            answer(new_call_id(), start=SINCE - timedelta(days=3), ring=5),
            between(SINCE - hour, SINCE + timedelta(minutes=15)),
            between(SINCE - timedelta(minutes=30), SINCE + timedelta(minutes=30)),
            between(SINCE - timedelta(minutes=50), SINCE + timedelta(minutes=5)),
            between(SINCE - 3 * hour, SINCE + timedelta(minutes=20)),
            between(SINCE - hour - MICROSECOND, SINCE + MICROSECOND),
            # Down before or at `since`.
            between(SINCE - hour, SINCE - MICROSECOND),
            between(SINCE - 5 * hour, SINCE - MICROSECOND),
            between(SINCE - hour, SINCE),
            between(SINCE - 2 * hour, SINCE),
            between(SINCE - 3 * hour, SINCE),
            # Up from `until`, after the window.
            *(between(UNTIL, UNTIL + k * hour) for k in (1, 2, 3)),
            # In the window, when all but the live call are down: two up at once.
            between(SINCE + timedelta(minutes=40), SINCE + timedelta(minutes=50)),
        ],
    )


def test_peak_counts_exactly_the_calls_up_across_the_windows_edges(tracker: Tracker) -> None:
    load(tracker, history(seed=24, calls=300))
    load_the_edges(tracker)

    (row,) = tracker.stats(since=SINCE, until=UNTIL, now=NOW)

    # The eight up at `since`: not the calls ended at or before it, nor those started at `until`.
    assert (row.attempts, row.peak_concurrent_calls) == (1, 8)
    snapshots = tracker.calls()
    for by in (None, "hour", "day", "account"):
        found = tracker.stats(by=by, since=SINCE, until=UNTIL, now=NOW)
        assert_figures(found, expected(snapshots, by, SINCE, UNTIL), by)


def test_the_window_before_counts_the_calls_ended_at_since_but_not_those_started_there(
    tracker: Tracker,
) -> None:
    load(tracker, history(seed=25, calls=50))
    load_the_edges(tracker)

    (before,) = tracker.stats(since=SINCE - timedelta(hours=1), until=SINCE, now=NOW)
    (after,) = tracker.stats(since=UNTIL, until=UNTIL + timedelta(hours=1), now=NOW)

    # At since - 10 min: the eight up at `since` and the five down at it or just before it.
    assert before.peak_concurrent_calls == 13
    # At until: the live call and the three that start there.
    assert (after.attempts, after.peak_concurrent_calls) == (3, 4)
    snapshots = tracker.calls()
    for since, until in ((SINCE - timedelta(hours=1), SINCE), (UNTIL, UNTIL + timedelta(hours=1))):
        found = tracker.stats(since=since, until=until, now=NOW)
        assert_figures(found, expected(snapshots, None, since, until), None)


@pytest.mark.parametrize("account_id", [ACCOUNT, None], ids=["one-account", "all-accounts"])
def test_days_of_history_before_the_window_change_none_of_its_figures(
    tracker: Tracker, account_id: str | None
) -> None:
    load_the_edges(tracker)

    def figures() -> list[tuple[Any, ...]]:
        return [
            (row.start, row.attempts, row.live, row.peak_concurrent_calls)
            for by in (None, "hour")
            for row in tracker.stats(
                by=by, since=SINCE, until=UNTIL, account_id=account_id, now=NOW
            )
        ]

    alone = figures()
    load(tracker, history(seed=26, calls=200))

    assert figures() == alone
    assert alone[0] == (SINCE, 1, 0, 8)


def test_revision_0011_adds_the_index_by_end_and_takes_it_away_again(database_url: str) -> None:
    with Tracker(database_url) as tracker:
        with tracker.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0010")
        assert "ix_tracker_calls_end_time_answer_time" not in indexes(tracker)
        tracker.upgrade()
        assert "ix_tracker_calls_end_time_answer_time" in indexes(tracker)
        load_the_edges(tracker)
        with tracker.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0010")
        assert "ix_tracker_calls_end_time_answer_time" not in indexes(tracker)
        tracker.upgrade()
        assert tracker.stats(since=SINCE, until=UNTIL, now=NOW)[0].peak_concurrent_calls == 8


def indexes(tracker: Tracker) -> set[str]:
    with tracker.engine.connect() as connection:
        return {index["name"] or "" for index in inspect(connection).get_indexes("tracker_calls")}


def test_the_history_benchmark_grows_history_before_one_day_and_keeps_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--history-days", "2,0", "--calls-per-day", "300", "--live", "5"]
    code = stats_bench.main([*arguments, "--repeat", "1", "--json", "--sqlite-dir", str(tmp_path)])

    report = json.loads(capsys.readouterr().out)
    assert (code, report["same_figures"]) == (0, True)
    day = report["calls_per_day"]
    assert [(row["history_days"], row["calls"]) for row in report["rows"]] == [
        (0, day + 5),
        (2, 3 * day + 5),
    ]
    assert all(row["peak_concurrent_calls"] >= 5 for row in report["rows"])
    assert list(tmp_path.iterdir()) == []
