"""Hours and days in a time zone (`stats(tz=...)`, `export(tz=...)`): local buckets, DST
included, the same on every backend, counted here with `zoneinfo` and whole microseconds."""

from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stats_support import MICROSECOND, NOW, load, mean_seconds, peak
from tests.test_stats_any_calls import Drawn
from tracker import Tracker
from tracker.cli import cli
from tracker.testing import call_url, disconnect_between, new_call_id

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata")
# The DST changes of 2026: New York springs forward on 03-08 and falls back on 11-01, Berlin
# on 03-29 and 10-25. Kolkata (+05:30, no DST) has local hours that are no UTC hours.
CHANGES = (
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
)
BERLIN = ZoneInfo("Europe/Berlin")


# --- the reference: zoneinfo and integer arithmetic --------------------------------------------


def local_bucket(instant: datetime, by: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the local hour or day holding `instant`."""
    local = instant.astimezone(zone)
    if by == "hour":
        # Each zone's offset is whole minutes and stays put within an hour.
        start = instant - timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
        return start, start + timedelta(hours=1)
    day = local.date()
    return midnight(day, zone), midnight(day + timedelta(days=1), zone)


def _utc(instant: datetime | None) -> datetime:
    assert instant is not None
    return instant.astimezone(UTC)


def midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def figures_of(
    drawn: list[Drawn],
    by: str,
    zone: ZoneInfo,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
) -> dict[tuple[datetime, datetime], tuple[int, int, int, float | None, float | None, int]]:
    """(start, end) in UTC -> (attempts, answered, live, acd, mean ring time, peak)."""
    buckets: dict[tuple[datetime, datetime], list[Drawn]] = {}
    for call in drawn:
        if (since is None or call.start >= since) and (until is None or call.start < until):
            buckets.setdefault(local_bucket(call.start, by, zone), []).append(call)
    spans = [span for call in drawn if (span := call.span(now, False)) is not None]
    figures = {}
    for (low, high), members in buckets.items():
        answered = [call for call in members if call.answered is not None]
        talks = [(c.end - c.answered) // MICROSECOND for c in answered if c.end and c.answered]
        rings = [(c.answered - c.start) // MICROSECOND for c in answered if c.answered]
        figures[low, high] = (
            len(members),
            len(answered),
            sum(1 for call in members if call.end is None),
            mean_seconds(talks),
            mean_seconds(rings),
            peak(
                spans,
                low if since is None else max(low, since),
                high if until is None else min(high, until),
            ),
        )
    return figures


# --- any calls around the DST changes ---------------------------------------------------------

_examples = itertools.count(1)


@st.composite
def drawn_calls(draw: st.DrawFn, near: datetime) -> Drawn:
    """A call around the change `near`: ended (answered or not), ringing or talking."""
    kind = draw(st.sampled_from(["answered", "unanswered", "ringing", "talking"]))
    count = {"unanswered": 2, "answered": 3, "ringing": 1, "talking": 2}[kind]
    offsets = draw(
        st.lists(
            # Anywhere, or on a half hour: every local hour's and midnight's first instant.
            st.integers(-26 * 3600, 26 * 3600) | st.integers(-52, 52).map(lambda k: k * 1800),
            min_size=count,
            max_size=count,
        )
    )
    micro = draw(st.sampled_from([0, 1, 123_456, 999_999]))
    times = sorted(near + timedelta(seconds=o, microseconds=micro) for o in offsets)
    answered = times[1] if kind in ("answered", "talking") else None
    end = times[-1] if kind in ("answered", "unanswered") else None
    return Drawn(kind, times[0], answered, end)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, list[Drawn], datetime | None, datetime | None]:
    near = draw(st.sampled_from(CHANGES))
    zone = draw(st.sampled_from(ZONES))
    drawn = draw(st.lists(drawn_calls(near), min_size=1, max_size=8))
    bound = st.none() | st.builds(
        lambda seconds: near + timedelta(seconds=seconds),
        st.integers(-26 * 3600, 26 * 3600) | st.integers(-52, 52).map(lambda k: k * 1800),
    )
    since, until = draw(bound), draw(bound)
    if since is not None and until is not None and since >= until:
        since, until = until, (since if since > until else None)
    return zone, drawn, since, until


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
def test_local_buckets_of_any_calls_around_a_dst_change_are_those_counted_with_zoneinfo(
    tracker: Tracker, scenario: tuple[str, list[Drawn], datetime | None, datetime | None]
) -> None:
    """Calls across a DST change and local midnights, microsecond times, any window: every
    backend gives exactly the local buckets and figures counted here, each bucket's start and
    end in the zone with its own offset."""
    name, drawn, since, until = scenario
    zone = ZoneInfo(name)
    account = f"{8_000_000 + next(_examples)}"  # examples share the database, not an account
    load(tracker, [call.body(new_call_id(), account) for call in drawn])
    now = max(CHANGES) + timedelta(days=3)
    for by in ("hour", "day"):
        rows = tracker.stats(by=by, since=since, until=until, account_id=account, now=now, tz=name)
        for row in rows:
            assert row.start is not None and row.end is not None
            assert row.start.tzinfo is zone and row.end.tzinfo is zone
        found = {
            (_utc(row.start), _utc(row.end)): (
                row.attempts,
                row.answered,
                row.live,
                row.acd,
                row.mean_ring_time,
                row.peak_concurrent_calls,
            )
            for row in rows
        }
        assert list(found) == sorted(found)
        assert found == figures_of(drawn, by, zone, since, until, now), by


# --- what DST does to the buckets -------------------------------------------------------------


def one_call_every(tracker: Tracker, first: datetime, step: timedelta, count: int) -> None:
    """`count` answered calls of a minute, `step` apart from `first`."""
    bodies = []
    for index in range(count):
        start = first + step * index
        call_id = new_call_id()
        bodies.append(
            disconnect_between(
                start,
                start + timedelta(minutes=1),
                call_id,
                answered=start + timedelta(seconds=2),
                cause="hangup",
                accountId="1111111",
                callUrl=call_url(call_id, "1111111"),
            )
        )
    load(tracker, bodies)


def berlin_day(day: date) -> tuple[datetime, datetime]:
    return midnight(day, BERLIN), midnight(day + timedelta(days=1), BERLIN)


def test_a_spring_forward_day_has_23_hourly_buckets(tracker: Tracker) -> None:
    """2026-03-29 in Berlin skips 02:00-03:00: 23 hours, 02:00 never shows, 03:00 is +02:00."""
    since, until = berlin_day(date(2026, 3, 29))
    one_call_every(tracker, since + timedelta(minutes=10), timedelta(minutes=30), 46)
    rows = tracker.stats(by="hour", since=since, until=until, tz="Europe/Berlin", now=NOW)
    assert len(rows) == 23
    assert all(row.attempts == 2 for row in rows)
    assert [row.start.hour for row in rows if row.start] == [0, 1, *range(3, 24)]
    assert rows[2].start is not None and rows[2].start.isoformat() == "2026-03-29T03:00:00+02:00"
    (day,) = tracker.stats(by="day", since=since, until=until, tz="Europe/Berlin", now=NOW)
    assert day.attempts == 46 and day.start is not None and day.end is not None
    assert day.end - day.start == timedelta(hours=24)  # on the wall clock
    assert day.end.astimezone(UTC) - day.start.astimezone(UTC) == timedelta(hours=23)


def test_a_fall_back_day_has_25_hourly_buckets_the_repeated_hour_twice(tracker: Tracker) -> None:
    """2026-10-25 in Berlin lives 02:00-03:00 twice: two buckets, +02:00 then +01:00."""
    since, until = berlin_day(date(2026, 10, 25))
    one_call_every(tracker, since + timedelta(minutes=10), timedelta(minutes=30), 50)
    rows = tracker.stats(by="hour", since=since, until=until, tz="Europe/Berlin", now=NOW)
    assert len(rows) == 25
    assert all(row.attempts == 2 for row in rows)
    twice = [row for row in rows if row.start is not None and row.start.hour == 2]
    assert [row.start.isoformat() for row in twice if row.start] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ]
    (day,) = tracker.stats(by="day", since=since, until=until, tz="Europe/Berlin", now=NOW)
    assert day.attempts == 50 and day.start is not None and day.end is not None
    assert day.end.astimezone(UTC) - day.start.astimezone(UTC) == timedelta(hours=25)


def test_a_call_before_local_midnight_counts_on_the_local_day(tracker: Tracker) -> None:
    """23:30 in New York is 03:30 UTC the next day: it counts on the New York day it began."""
    start = datetime(2026, 7, 2, 3, 30, tzinfo=UTC)  # 2026-07-01 23:30 -04:00
    one_call_every(tracker, start, timedelta(hours=1), 1)
    (row,) = tracker.stats(by="day", tz="America/New_York", now=NOW)
    assert row.start is not None and row.start.isoformat() == "2026-07-01T00:00:00-04:00"
    (utc,) = tracker.stats(by="day", now=NOW)
    assert utc.start == datetime(2026, 7, 2, tzinfo=UTC)


def test_without_tz_or_with_utc_the_buckets_are_utc_as_before(tracker: Tracker) -> None:
    since, _until = berlin_day(date(2026, 3, 29))
    one_call_every(tracker, since + timedelta(minutes=10), timedelta(minutes=30), 46)
    plain = tracker.stats(by="hour", now=NOW)
    assert plain == tracker.stats(by="hour", now=NOW, tz="UTC")
    assert [row.start for row in plain][:2] == [
        datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 0, tzinfo=UTC),
    ]
    assert all(row.start is not None and row.start.tzinfo is UTC for row in plain)


# --- bad input --------------------------------------------------------------------------------


def test_an_unknown_zone_is_a_value_error_naming_it(tracker: Tracker) -> None:
    for name in ("Mars/Olympus_Mons", "", "../etc/passwd", "Europe/"):
        with pytest.raises(ValueError, match="unknown time zone"):
            tracker.stats(by="hour", tz=name)
        with pytest.raises(ValueError, match="unknown time zone"):
            tracker.export(tz=name)


def test_an_unknown_zone_on_the_command_line_exits_2(database_url: str) -> None:
    with Tracker(database_url) as instance:
        instance.upgrade()
    for command in (["stats", "--by", "hour"], ["export"]):
        result = CliRunner().invoke(
            cli, ["--db", database_url, *command, "--tz", "Mars/Olympus_Mons"]
        )
        assert result.exit_code == 2, result.output
        assert "unknown time zone 'Mars/Olympus_Mons'" in result.output


# --- the command line and the export ----------------------------------------------------------


def test_stats_json_with_tz_writes_bucket_bounds_with_their_offsets(database_url: str) -> None:
    with Tracker(database_url) as instance:
        instance.upgrade()
        one_call_every(instance, datetime(2026, 3, 29, 0, 30, tzinfo=UTC), timedelta(hours=1), 2)
    result = CliRunner().invoke(
        cli,
        [
            "--db",
            database_url,
            "stats",
            "--by",
            "hour",
            "--tz",
            "Europe/Berlin",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    assert [(row["start"], row["end"]) for row in rows] == [
        ("2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00"),
        ("2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"),
    ]


def test_export_with_tz_writes_every_instant_with_the_zones_offset(tracker: Tracker) -> None:
    """Before and after Berlin's fall-back: +02:00, then +01:00; without tz, UTC as before."""
    one_call_every(tracker, datetime(2026, 10, 25, 0, 30, tzinfo=UTC), timedelta(hours=1), 2)
    local = list(tracker.export(tz="Europe/Berlin"))
    plain = list(tracker.export())
    assert [row["start_time"] for row in local] == [
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN),
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN),
    ]
    assert [row["start_time"].utcoffset() for row in local] == [
        timedelta(hours=2),
        timedelta(hours=1),
    ]
    # (Compared in UTC: Python calls an ambiguous local time unequal to any other zone's.)
    assert [row["start_time"].astimezone(UTC) for row in local] == [
        row["start_time"] for row in plain
    ]
    assert all(row["start_time"].tzinfo is UTC for row in plain)


def test_export_cli_with_tz_writes_offsets_in_csv_jsonl_and_parquet(
    database_url: str, tmp_path: Path
) -> None:
    """The same instants in every format: +02:00 before Berlin's fall-back, +01:00 after; the
    Parquet timestamps carry the zone; without --tz, `Z` as before."""
    with Tracker(database_url) as instance:
        instance.upgrade()
        one_call_every(instance, datetime(2026, 10, 25, 0, 30, tzinfo=UTC), timedelta(hours=1), 2)

    def export(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--db", database_url, "export", *args])
        assert result.exit_code == 0, result.output
        return result.output

    csv_rows = list(csv.DictReader(io.StringIO(export("--tz", "Europe/Berlin"))))
    assert [row["start_time"] for row in csv_rows] == [
        "2026-10-25T02:30:00.000000+02:00",
        "2026-10-25T02:30:00.000000+01:00",
    ]
    assert csv_rows[0]["end_time"] == "2026-10-25T02:31:00.000000+02:00"
    lines = export("--tz", "America/New_York", "--format", "jsonl").splitlines()
    assert [json.loads(line)["start_time"] for line in lines] == [
        "2026-10-24T20:30:00.000000-04:00",
        "2026-10-24T21:30:00.000000-04:00",
    ]
    plain = list(csv.DictReader(io.StringIO(export())))
    assert [row["start_time"] for row in plain] == [
        "2026-10-25T00:30:00.000000Z",
        "2026-10-25T01:30:00.000000Z",
    ]
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    output = tmp_path / "local.parquet"
    export("--tz", "Europe/Berlin", "--format", "parquet", "-o", str(output))
    table = pyarrow_parquet.read_table(output)
    assert str(table.schema.field("start_time").type) == "timestamp[us, tz=Europe/Berlin]"
    assert [value.astimezone(UTC) for value in table.column("start_time").to_pylist()] == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    ]


def test_plot_with_tz_names_the_zone_and_draws_the_repeated_hour_twice(
    database_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    with Tracker(database_url) as instance:
        instance.upgrade()
        one_call_every(instance, datetime(2026, 10, 24, 23, 30, tzinfo=UTC), timedelta(hours=1), 4)
    output = tmp_path / "local.svg"
    result = CliRunner().invoke(
        cli, ["--db", database_url, "stats", "--tz", "Europe/Berlin", "--plot", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert "2026-10-25 02:00+0200" in result.output and "2026-10-25 02:00+0100" in result.output
    drawing = output.read_text()
    assert "Europe/Berlin" in drawing
