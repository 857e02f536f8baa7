"""`stats --by number`: one row per called (or calling) number, with the figures of that
number's calls, most attempts first, on every backend."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from tracker import CallStatistics, Tracker
from tracker.cli import cli
from tracker.testing import answer, call_url, disconnect_between, new_call_id

START = datetime(2026, 4, 6, 8, 0, tzinfo=UTC)
NOW = START + timedelta(hours=3)

# Each called number is the only number of one account, so its row must equal the stats of
# that account: (number, account, calling number, calls as (minutes after START, talk minutes,
# answered, ended)).
PLAN: list[tuple[str, str, str, list[tuple[int, int, bool, bool]]]] = [
    (
        "+15550000002",
        "5000002",
        "+19990000001",
        [(0, 10, True, True), (2, 5, True, True), (3, 0, False, True), (4, 0, True, False)],
    ),
    ("+15550000004", "5000004", "+19990000002", [(1, 3, True, True), (30, 1, False, True)]),
    ("+15550000001", "5000001", "+19990000001", [(5, 2, True, True), (6, 2, True, True)]),
    ("+15550000003", "5000003", "+19990000002", [(7, 1, True, True)]),
]
# Called only before the window of `test_a_number_without_calls_in_the_window_is_absent`.
EARLY = ("+15550000009", "5000009", "+19990000009", [(-60, 1, True, True)])


def bodies_of(number: str, account: str, caller: str, planned: list[Any]) -> list[dict[str, Any]]:
    bodies = []
    for minutes, talk, answered, ended in planned:
        call_id = new_call_id()
        identity: dict[str, Any] = {
            "accountId": account,
            "callUrl": call_url(call_id, account),
            "to": number,
            "from": caller,
        }
        start = START + timedelta(minutes=minutes)
        if not ended:
            bodies.append(answer(call_id, start=start, ring=3.0, **identity))
            continue
        answered_at = start + timedelta(seconds=3) if answered else None
        end = (answered_at or start) + timedelta(minutes=talk, seconds=20)
        bodies.append(disconnect_between(start, end, call_id, answered=answered_at, **identity))
    return bodies


@pytest.fixture
def loaded(tracker: Tracker) -> Tracker:
    bodies = [body for plan in (*PLAN, EARLY) for body in bodies_of(*plan)]
    results = tracker.apply_many(bodies)
    assert all(result.outcome == "applied" for result in results), results
    return tracker


def without_bucket(row: CallStatistics) -> CallStatistics:
    return replace(row, number=None, account_id=None)


def test_rows_are_ordered_by_attempts_then_number(loaded: Tracker) -> None:
    rows = loaded.stats(by="number", since=START, now=NOW)
    assert [(row.number, row.attempts) for row in rows] == [
        ("+15550000002", 4),
        ("+15550000001", 2),
        ("+15550000004", 2),
        ("+15550000003", 1),
    ]


def test_each_rows_figures_equal_the_stats_of_that_numbers_calls_alone(loaded: Tracker) -> None:
    """Peak concurrency included: each number counts only its own calls up."""
    rows = loaded.stats(by="number", since=START, now=NOW, billing="30/6")
    # +15550000002: at 08:04, the calls of 08:00 and 08:02 and the one answered at 08:04 are up.
    assert rows[0].peak_concurrent_calls == 3
    for row in rows:
        account = next(plan[1] for plan in PLAN if plan[0] == row.number)
        (alone,) = loaded.stats(account_id=account, since=START, now=NOW, billing="30/6")
        assert without_bucket(row) == without_bucket(alone)


def test_top_keeps_the_first_rows(loaded: Tracker) -> None:
    every = loaded.stats(by="number", since=START, now=NOW)
    for top in (1, 2, 3, 10):
        assert loaded.stats(by="number", since=START, now=NOW, top=top) == every[:top]


def test_the_from_side_counts_the_calling_numbers(loaded: Tracker) -> None:
    rows = loaded.stats(by="number", number_side="from", since=START, now=NOW)
    assert [(row.number, row.attempts) for row in rows] == [
        ("+19990000001", 6),
        ("+19990000002", 3),
    ]
    (every,) = loaded.stats(since=START, now=NOW)
    assert sum(row.answered for row in rows) == every.answered


def test_a_number_without_calls_in_the_window_is_absent(loaded: Tracker) -> None:
    numbers = {row.number for row in loaded.stats(by="number", since=START, now=NOW)}
    assert EARLY[0] not in numbers
    assert EARLY[0] in {row.number for row in loaded.stats(by="number", now=NOW)}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"by": "number", "number_side": "cc"}, "number_side"),
        ({"by": "number", "top": 0}, "top"),
        ({"by": "hour", "top": 3}, "top"),
    ],
)
def test_bad_arguments_are_value_errors(
    tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tracker.stats(**arguments)


def test_cli_prints_one_row_per_number(loaded: Tracker) -> None:
    url = loaded.engine.url.render_as_string(hide_password=False)
    base = ["--db", url, "stats", "--by", "number", "--since", START.isoformat()]
    result = CliRunner().invoke(cli, [*base, "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["number"] for row in json.loads(result.output)] == [
        "+15550000002",
        "+15550000001",
    ]
    table = CliRunner().invoke(cli, [*base, "--number-side", "from"])
    assert table.exit_code == 0, table.output
    assert "+19990000001" in table.output
    refused = CliRunner().invoke(cli, ["--db", url, "stats", "--top", "2"])
    assert refused.exit_code == 2
    assert "--by number" in refused.output
