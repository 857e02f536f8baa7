"""Statistics: every figure the database counts equals the figure
counted here in plain Python from the `Call` snapshots, on every backend."""

from __future__ import annotations

import itertools
import json
import random
import struct
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import Call, CallStatistics, Outcome, Tracker
from tracker.cli import cli
from tracker.plotting import DPI, SIZE
from tracker.testing import (
    answer,
    call_url,
    disconnect_between,
    initiate,
    new_call_id,
    realistic_bodies,
    transfer_disconnect,
    transfer_disconnect_between,
)

T0 = datetime(2026, 3, 27, 22, 0, tzinfo=UTC)  # two hours before a day ends
NOW = T0 + timedelta(days=4)
ACCOUNTS = ("1111111", "2222222", "3333333")
CAUSES = ("hangup", "hangup", "hangup", "busy", "timeout", "cancel", "rejected", "callback-error")
UNANSWERED = frozenset({"busy", "timeout", "cancel", "rejected"})
MICROSECOND = timedelta(microseconds=1)


# --- a generated workload -------------------------------------------------------------------


def generated_bodies(seed: int, calls: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Callbacks for `calls` calls over about two and a half days, crossing hours and a day:
    answered and not, talks from a second to three hours, legs, some calls of no known account,
    starts on the hour, calls still ringing or talking, and parents known only through a leg.
    Also the ids of the live calls that started early, for a sweep to expire."""
    draw = random.Random(seed)
    bodies: list[dict[str, Any]] = []
    stale: list[str] = []
    for _ in range(calls):
        start = T0 + timedelta(seconds=draw.uniform(0, 60 * 3600))
        if draw.random() < 0.1:  # exactly on the hour
            start = start.replace(minute=0, second=0, microsecond=0)
        start = start.replace(microsecond=start.microsecond // 1000 * 1000)
        account = draw.choice((*ACCOUNTS, None))
        call_id = new_call_id()
        identity: dict[str, Any] = {"accountId": ..., "callUrl": ..., "applicationId": ...}
        if account is not None:
            identity = {"accountId": account, "callUrl": call_url(call_id, account)}
        kind = draw.random()
        if kind < 0.06:  # ringing now: its terminal event has not come (or was lost)
            bodies.append(initiate(call_id, start=start, **identity))
            stale += [call_id] if start < T0 + timedelta(hours=19) else []
            continue
        if kind < 0.12:  # talking now
            bodies.append(answer(call_id, start=start, ring=draw.uniform(0.5, 9), **identity))
            stale += [call_id] if start < T0 + timedelta(hours=19) else []
            continue
        cause = draw.choice(CAUSES)
        answered = None if cause in UNANSWERED or draw.random() < 0.1 else draw.uniform(0.3, 20)
        length = draw.choice(
            (draw.uniform(1, 120), draw.uniform(60, 1800), draw.uniform(1, 3 * 3600))
        )
        answered_at = None if answered is None else start + timedelta(seconds=answered)
        end = (answered_at or start) + timedelta(seconds=length)
        if draw.random() < 0.95:  # else only its legs report: a parent without a start
            bodies.append(
                disconnect_between(
                    start, end, call_id, answered=answered_at, cause=cause, **identity
                )
            )
        if answered_at is not None and draw.random() < 0.3:
            for _leg in range(draw.randint(1, 3)):
                leg_id = new_call_id()
                leg_start = answered_at + timedelta(seconds=draw.uniform(1, 60))
                leg_answer = leg_start + timedelta(seconds=draw.uniform(1, 10))
                leg_end = leg_answer + timedelta(seconds=draw.uniform(1, 600))
                taken = draw.random() < 0.5
                where = {"accountId": ..., "callUrl": ...}
                if account is not None:
                    where = {"accountId": account, "callUrl": call_url(leg_id, account)}
                bodies.append(
                    transfer_disconnect_between(
                        call_id,
                        leg_start,
                        leg_end,
                        leg_id,
                        answered=leg_answer if taken else None,
                        cause="hangup" if taken else draw.choice(("timeout", "busy")),
                        **where,
                    )
                )
    return bodies, stale


def load(tracker: Tracker, bodies: Iterable[dict[str, Any]]) -> list[Call]:
    results = tracker.apply_many(bodies)
    assert {result.outcome for result in results} == {Outcome.APPLIED}, [
        result for result in results if result.outcome is not Outcome.APPLIED
    ][:3]
    return tracker.calls()


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


# --- the same figures, counted in Python ----------------------------------------------------


@dataclass(frozen=True)
class Expected:
    attempts: int
    answered: int
    live: int
    acd: float | None
    mean_ring_time: float | None
    dispositions: dict[str, int]
    causes: dict[str, int]
    peak_concurrent_calls: int


def expected(
    calls: list[Call],
    by: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    account_id: str | None = None,
) -> dict[Any, Expected]:
    """Bucket key -> figures, by docs/statistics.md's definitions, with no SQL in sight."""
    attempts = [
        call
        for call in calls
        if call.start_time is not None
        and (since is None or call.start_time >= since)
        and (until is None or call.start_time < until)
        and (account_id is None or call.account_id == account_id)
    ]
    buckets: dict[Any, list[Call]] = {}
    for call in attempts:
        buckets.setdefault(bucket_of(call, by), []).append(call)
    if by is None and not buckets:
        buckets[None] = []
    spans = [
        (call, span)
        for call in calls
        if (span := up_and_down(call)) is not None
        and (account_id is None or call.account_id == account_id)
    ]
    result = {}
    for key, members in buckets.items():
        answered = [call for call in members if call.answer_time is not None]
        talks = [c.talk_duration // MICROSECOND for c in answered if c.talk_duration is not None]
        rings = [c.ring_duration // MICROSECOND for c in answered if c.ring_duration is not None]
        low, high = bounds(key, by, since, until)
        in_scope = [span for call, span in spans if by != "account" or call.account_id == key]
        result[key] = Expected(
            attempts=len(members),
            answered=len(answered),
            live=sum(1 for call in members if call.disposition is None),
            acd=mean_seconds(talks),
            mean_ring_time=mean_seconds(rings),
            dispositions=dict(Counter(c.disposition for c in members if c.disposition)),
            causes=dict(Counter(c.cause for c in members if c.cause is not None)),
            peak_concurrent_calls=peak(in_scope, low, high),
        )
    return result


def mean_seconds(microseconds: list[int]) -> float | None:
    """The mean of whole microseconds, in seconds: summed exactly, divided once, so the one
    float every backend must give to the last bit."""
    return sum(microseconds) / (len(microseconds) * 1_000_000) if microseconds else None


def bucket_of(call: Call, by: str | None) -> Any:
    assert call.start_time is not None
    if by == "hour":
        return call.start_time.replace(minute=0, second=0, microsecond=0)
    if by == "day":
        return call.start_time.replace(hour=0, minute=0, second=0, microsecond=0)
    if by == "account":
        return call.account_id
    return None


def up_and_down(call: Call) -> tuple[datetime, datetime] | None:
    """When the call was up: to its end; live, to NOW; expired, to its last known time."""
    if call.start_time is None:
        return None
    if call.end_time is not None:
        down = call.end_time
    elif call.live:
        down = NOW
    else:
        down = call.answer_time or call.start_time
    return (call.start_time, down) if down > call.start_time else None


def bounds(
    key: Any, by: str | None, since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The instants a bucket's peak is looked for in: its hour or day within the window."""
    low, high = since, until
    if by in ("hour", "day"):
        length = timedelta(hours=1) if by == "hour" else timedelta(days=1)
        low = key if since is None else max(key, since)
        high = key + length if until is None else min(key + length, until)
    return low, high


def peak(
    spans: list[tuple[datetime, datetime]], low: datetime | None, high: datetime | None
) -> int:
    """The most spans holding one instant of [low, high): the count only rises at a start, so
    the instants to try are `low` and every start inside."""
    candidates = {up for up, _down in spans}
    if low is not None:
        candidates = {t for t in candidates if t > low} | {low}
    if high is not None:
        candidates = {t for t in candidates if t < high}
    return max(
        (sum(1 for up, down in spans if up <= t < down) for t in candidates),
        default=0,
    )


def assert_figures(
    found: list[CallStatistics], wanted: dict[Any, Expected], by: str | None
) -> None:
    keys = [key_of(row, by) for row in found]
    assert keys == sorted(wanted, key=lambda key: (key is None, key))
    for row in found:
        want = wanted[key_of(row, by)]
        label = f"bucket {key_of(row, by)}"
        assert (row.attempts, row.answered, row.live) == (
            want.attempts,
            want.answered,
            want.live,
        ), label
        assert row.dispositions == want.dispositions, label
        assert row.causes == want.causes, label
        assert row.peak_concurrent_calls == want.peak_concurrent_calls, label
        assert row.acd == want.acd, label
        assert row.mean_ring_time == want.mean_ring_time, label
        assert row.asr == (want.answered / want.attempts if want.attempts else None)


def key_of(row: CallStatistics, by: str | None) -> Any:
    if by in ("hour", "day"):
        return row.start
    if by == "account":
        return row.account_id
    return None


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
        ({"by": "week"}, "by must be one of 'account', 'hour', 'day' or None; got 'week'"),
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


# --- the command line ------------------------------------------------------------------------


def run(*args: str) -> CliResult:
    isolated = {"COLUMNS": None, "FORCE_TERMINAL": None, "TTY_COMPATIBLE": None}
    return CliRunner().invoke(cli, list(args), env=isolated)


@pytest.fixture
def db(sqlite_tracker: Tracker) -> str:
    bodies, _stale = generated_bodies(seed=4, calls=80)
    load(sqlite_tracker, bodies)
    return sqlite_tracker.engine.url.render_as_string(hide_password=False)


def test_json_has_every_figure_of_the_api(sqlite_tracker: Tracker, db: str) -> None:
    since = T0 + timedelta(hours=3)
    result = run("--db", db, "stats", "--by", "hour", "--since", "2026-03-28T01:00", "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    api = sqlite_tracker.stats(by="hour", since=since)
    assert [row["start"] for row in rows] == [
        row.start.isoformat().replace("+00:00", "Z") for row in api if row.start
    ]
    for shown, row in zip(rows, api, strict=True):
        # Live calls count up to the moment each ran; everything else is the same.
        assert {key: shown[key] for key in ("attempts", "answered", "live", "acd")} == {
            "attempts": row.attempts,
            "answered": row.answered,
            "live": row.live,
            "acd": row.acd,
        }
        assert (shown["asr"], shown["dispositions"], shown["causes"]) == (
            row.asr,
            row.dispositions,
            row.causes,
        )
        assert shown["end"] == (row.end.isoformat().replace("+00:00", "Z") if row.end else None)


def test_the_table_has_a_row_per_account(sqlite_tracker: Tracker, db: str) -> None:
    result = run("--db", db, "stats", "--by", "account")

    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    accounts = [row.split("│")[1].strip() for row in rows]
    assert accounts == [*sorted(ACCOUNTS), "(no account)"]
    attempts = [int(row.split("│")[2].strip().replace(",", "")) for row in rows]
    assert attempts == [row.attempts for row in sqlite_tracker.stats(by="account")]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png_of_the_documented_size(db: str, tmp_path: Path) -> None:
    target = tmp_path / "calls.png"
    result = run("--db", db, "stats", "--by", "day", "--plot", str(target))

    assert result.exit_code == 0, result.output
    assert png_size(target) == (round(SIZE[0] * DPI), round(SIZE[1] * DPI))


def test_plot_writes_an_svg_and_defaults_to_hours(db: str, tmp_path: Path) -> None:
    target = tmp_path / "calls.SVG"
    result = run("--db", db, "stats", "--plot", str(target), "--json")

    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) > 24  # hours, not one row
    root = ElementTree.parse(target).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == (f"{SIZE[0] * 72:g}pt", f"{SIZE[1] * 72:g}pt")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--plot", "calls.jpg"], "name the file *.png or *.svg"),
        (["--plot", "calls"], "name the file *.png or *.svg"),
        (["--plot", "calls.png", "--by", "account"], "use --by hour or --by day"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "must be after since"),
    ],
)
def test_bad_options_are_usage_errors(
    db: str, tmp_path: Path, arguments: list[str], message: str
) -> None:
    plots = tmp_path / "plots"
    arguments = [str(plots / a) if a.startswith("calls") else a for a in arguments]
    plots.mkdir()
    result = run("--db", db, "stats", *arguments)

    assert result.exit_code == 2
    assert message in result.stderr
    assert list(plots.iterdir()) == []


def test_plot_without_matplotlib_names_the_extra_to_install(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import` meets when absent

    result = run("--db", db, "stats", "--plot", str(tmp_path / "calls.png"))

    assert result.exit_code == 2
    assert "pip install 'tracker[plot]'" in result.stderr


# --- edges: bucket starts, `since`, fractions of a second, exact means --------------------------


def micro_stamp(at: datetime) -> str:
    """An instant to the microsecond, as a callback may carry it (the factories stamp
    milliseconds)."""
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def with_micro_times(
    body: dict[str, Any], start: datetime, answered: datetime | None, end: datetime | None
) -> dict[str, Any]:
    body["startTime"] = micro_stamp(start)
    if answered is not None:
        body["answerTime"] = micro_stamp(answered)
    if end is not None:
        body["endTime"] = micro_stamp(end)
    return body


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


# --- any calls, any window: the figures counted from what the callbacks said -------------------

_examples = itertools.count(1)
# Instants over four hours from T0, crossing midnight, crowded onto hour starts and a few
# seconds, with fractions that a rounding strftime or a float sum would get wrong.
INSTANTS = st.builds(
    lambda hours, minutes, seconds, micro: (
        T0 + timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)
    ),
    st.integers(0, 3),
    st.sampled_from([0, 0, 1, 30, 59]),
    st.sampled_from([0, 0, 1, 59]),
    st.sampled_from([0, 0, 1, 123_456, 500_000, 999_500, 999_999]),
)
# How a call is known: ended unanswered (start, end), ended answered (start, answer, end),
# ringing (start), talking (start, answer).
INSTANTS_OF = {"unanswered": 2, "answered": 3, "ringing": 1, "talking": 2}


@dataclass(frozen=True)
class Drawn:
    """A call as its callbacks tell it, and what the figures make of it."""

    kind: str
    start: datetime
    answered: datetime | None
    end: datetime | None

    def body(self, call_id: str, account: str) -> dict[str, Any]:
        where = {"accountId": account, "callUrl": call_url(call_id, account)}
        if self.kind == "ringing":
            body = initiate(call_id, start=self.start, **where)
        elif self.kind == "talking":
            assert self.answered is not None
            ring = (self.answered - self.start).total_seconds()
            body = answer(call_id, start=self.start, ring=ring, **where)
        else:
            assert self.end is not None
            cause = "hangup" if self.answered else "timeout"
            body = disconnect_between(
                self.start, self.end, call_id, answered=self.answered, cause=cause, **where
            )
        return with_micro_times(body, self.start, self.answered, self.end)

    def span(self, now: datetime, swept: bool) -> tuple[datetime, datetime] | None:
        """[start, end) of the call being up: live until `now`; expired, until its last known
        time."""
        if self.end is not None:
            down = self.end
        elif swept:
            down = self.answered or self.start
        else:
            down = now
        return (self.start, down) if down > self.start else None


@st.composite
def drawn_calls(draw: st.DrawFn) -> Drawn:
    kind = draw(st.sampled_from(sorted(INSTANTS_OF)))
    times = sorted(draw(st.lists(INSTANTS, min_size=INSTANTS_OF[kind], max_size=INSTANTS_OF[kind])))
    answered = times[1] if kind in ("answered", "talking") else None
    end = times[-1] if kind in ("answered", "unanswered") else None
    return Drawn(kind, times[0], answered, end)


def figures_of(
    drawn: list[Drawn],
    by: str | None,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    swept: bool,
    account: str,
) -> dict[Any, tuple[int, int, int, float | None, float | None, int]]:
    """Bucket -> (attempts, answered, live, acd, mean ring time, peak), from the drawn times."""
    attempts = [
        call
        for call in drawn
        if (since is None or call.start >= since) and (until is None or call.start < until)
    ]
    buckets: dict[Any, list[Drawn]] = {}
    for call in attempts:
        if by == "hour":
            key: Any = call.start.replace(minute=0, second=0, microsecond=0)
        elif by == "day":
            key = call.start.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            key = account if by == "account" else None
        buckets.setdefault(key, []).append(call)
    if by is None and not buckets:
        buckets[None] = []
    spans = [span for call in drawn if (span := call.span(now, swept)) is not None]
    figures = {}
    for key, members in buckets.items():
        answered = [call for call in members if call.answered is not None]
        talks = [(c.end - c.answered) // MICROSECOND for c in answered if c.end and c.answered]
        rings = [(c.answered - c.start) // MICROSECOND for c in answered if c.answered]
        figures[key] = (
            len(members),
            len(answered),
            0 if swept else sum(1 for call in members if call.end is None),
            mean_seconds(talks),
            mean_seconds(rings),
            peak(spans, *bounds(key, by, since, until)),
        )
    return figures


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    drawn=st.lists(drawn_calls(), min_size=1, max_size=8),
    since=st.none() | INSTANTS,
    until=st.none() | INSTANTS,
    now=INSTANTS,
    swept=st.booleans(),
)
def test_the_figures_of_any_calls_are_those_counted_from_their_callbacks(
    tracker: Tracker,
    drawn: list[Drawn],
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    swept: bool,
) -> None:
    """Ends on bucket starts and on `since`, fractions of .9995 s and more, sums a float would
    round: every backend gives exactly (==) the figures counted here from the drawn times."""
    if since is not None and until is not None and since >= until:
        since, until = until, (since if since > until else None)
    account = f"{9_000_000 + next(_examples)}"  # examples share the database, not an account
    load(tracker, [call.body(new_call_id(), account) for call in drawn])
    if swept:  # every live call, of every account so far, ends expired
        tracker.sweep(timedelta(hours=1), now=NOW)
    for by in ("hour", "day", "account", None):
        rows = tracker.stats(by=by, since=since, until=until, account_id=account, now=now)
        found = {
            key_of(row, by): (
                row.attempts,
                row.answered,
                row.live,
                row.acd,
                row.mean_ring_time,
                row.peak_concurrent_calls,
            )
            for row in rows
        }
        assert [key_of(row, by) for row in rows] == sorted(
            found, key=lambda key: (key is None, key)
        )
        assert found == figures_of(drawn, by, since, until, now, swept, account), by
