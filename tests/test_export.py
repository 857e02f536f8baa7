"""Call detail records out (the export): every row agrees with the `Call` snapshots,
conversations fold in their whole transfer tree, filters and pages change nothing but what they
promise, and the command line writes CSV, JSON Lines and Parquet."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import event, text

from tracker import Call, StorageError, Tracker
from tracker.cli import cli
from tracker.exporting import CONVERSATION_COLUMNS, LEG_COLUMNS, Kind, columns, write_parquet
from tracker.testing import (
    ACCOUNTS,
    BASE_TIME,
    disconnect,
    initiate,
    new_call_id,
    realistic_bodies,
    transfer_complete,
    transfer_disconnect,
)

EXPORT_PAGE = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()
OTHER_ACCOUNT = "7700001"


# --- the data: realistic traffic, and the shapes it seldom has -----------------------------


def _seconds(duration: timedelta | None) -> float | None:
    return None if duration is None else duration / timedelta(seconds=1)


def expected_leg_row(call: Call) -> dict[str, Any]:
    """What docs/export.md's columns table says a leg's row holds, from the call's snapshot."""
    return {
        "call_id": call.call_id,
        "parent_call_id": call.parent_call_id,
        "account_id": call.account_id,
        "application_id": call.application_id,
        "direction": call.direction,
        "from": call.from_number,
        "to": call.to_number,
        "caller_display_name": call.caller_display_name,
        "state": call.state,
        "disposition": call.disposition,
        "cause": call.cause,
        "start_time": call.start_time,
        "answer_time": call.answer_time,
        "end_time": call.end_time,
        "enqueued_time": call.enqueued_time,
        "duration": _seconds(call.duration),
        "talk_duration": _seconds(call.talk_duration),
        "ring_duration": _seconds(call.ring_duration),
        "answered": call.answered,
        "swept": call.swept,
        "end_source": call.end_source,
        "tag": call.tag,
        "error_message": call.error_message,
        "error_id": call.error_id,
        "machine_detection": call.machine_detection,
        "attestation": call.attestation,
        "verstat": call.verstat,
        "transfer_attempts": len(call.transfers),
        "legs": len(call.legs),
    }


def descendants(call: Call, by_id: dict[str, Call]) -> list[Call]:
    found: list[Call] = []
    waiting = list(call.legs)
    while waiting:
        leg = by_id[waiting.pop()]
        found.append(leg)
        waiting.extend(leg.legs)
    return found


def expected_conversation_row(call: Call, by_id: dict[str, Call]) -> dict[str, Any]:
    legs = descendants(call, by_id)
    answered = sorted(
        (leg for leg in legs if leg.answer_time is not None),
        key=lambda leg: (leg.answer_time, leg.call_id),
    )
    talks = [leg.talk_duration for leg in legs if leg.talk_duration is not None]
    return {
        **expected_leg_row(call),
        "transfer_attempts": len(call.transfers) + sum(len(leg.transfers) for leg in legs),
        "legs": len(legs),
        "answered_leg_id": answered[0].call_id if answered else None,
        "answered_leg_to": answered[0].to_number if answered else None,
        "legs_talk_duration": _seconds(sum(talks, timedelta())) if talks else None,
    }


def expected_rows(
    tracker: Tracker,
    per: str,
    since: datetime | None = None,
    until: datetime | None = None,
    account_id: str | None = None,
) -> list[dict[str, Any]]:
    """The rows an export should give, in order, computed from `calls()` snapshots alone."""
    every = tracker.calls()  # by start time, then id; placeholders last
    by_id = {call.call_id: call for call in every}
    rows = []
    for call in every:
        if per == "conversation" and call.parent_call_id is not None:
            continue
        if (since is not None or until is not None) and call.start_time is None:
            continue
        if since is not None and call.start_time is not None and call.start_time < since:
            continue
        if until is not None and call.start_time is not None and call.start_time >= until:
            continue
        if account_id is not None and call.account_id != account_id:
            continue
        rows.append(
            expected_leg_row(call) if per == "leg" else expected_conversation_row(call, by_id)
        )
    return rows


class World:
    """Ids of the hand-built calls of `build_world`."""

    original = new_call_id()
    first_answered_leg = new_call_id()
    earlier_leg = new_call_id()
    unanswered_leg = new_call_id()
    leg_of_leg = new_call_id()
    orphan_leg = new_call_id()  # its parent never reports: a placeholder
    missing_parent = new_call_id()
    swept = new_call_id()
    tied = tuple(new_call_id() for _ in range(7))  # one start time for all


TREE_START = BASE_TIME - timedelta(days=1)
TIED_START = BASE_TIME - timedelta(hours=5)


def build_world(tracker: Tracker) -> None:
    """Realistic traffic, plus what it seldom holds: a transfer tree three levels deep whose
    first answered leg is not its first started, a placeholder parent, a swept call, and seven
    calls (two accounts) that started at the same instant."""
    results = tracker.apply_many(realistic_bodies(240, seed=7))
    assert all(result.outcome in ("applied", "duplicate") for result in results)
    start = TREE_START
    bodies = [
        disconnect(World.original, start=start, ring=2.0, talk=300.0),
        transfer_complete(World.original, start=start, at=start + timedelta(seconds=50)),
        transfer_complete(
            World.original, start=start, at=start + timedelta(seconds=60), cause="busy"
        ),
        # Starts first, answered second.
        transfer_disconnect(
            World.original,
            World.earlier_leg,
            start=start + timedelta(seconds=5),
            ring=10.0,
            talk=20.5,
            transferTo="+15550000001",
        ),
        # Starts later, answered first (at +13 s), sub-second precision kept.
        transfer_disconnect(
            World.original,
            World.first_answered_leg,
            start=start + timedelta(seconds=10),
            ring=3.0,
            talk=40.123,
            transferTo="+15550000002",
        ),
        transfer_disconnect(
            World.original,
            World.unanswered_leg,
            start=start + timedelta(seconds=10),
            ring=None,
            cause="timeout",
        ),
        transfer_complete(
            World.first_answered_leg,
            start=start + timedelta(seconds=10),
            at=start + timedelta(seconds=30),
        ),
        transfer_disconnect(
            World.first_answered_leg,
            World.leg_of_leg,
            start=start + timedelta(seconds=20),
            ring=1.0,
            talk=7.25,
        ),
        transfer_disconnect(World.missing_parent, World.orphan_leg, start=start),
        initiate(World.swept, start=start - timedelta(hours=2)),
    ]
    bodies += [
        disconnect(call_id, start=TIED_START, accountId=OTHER_ACCOUNT, callUrl=...)
        if index % 3 == 0
        else disconnect(call_id, start=TIED_START)
        for index, call_id in enumerate(World.tied)
    ]
    results = tracker.apply_many(bodies)
    assert {result.outcome for result in results} == {"applied"}, results
    # Ends the swept call, and every call the realistic stream left live.
    tracker.sweep(timedelta(hours=1), now=BASE_TIME + timedelta(days=2))


@pytest.fixture
def world(tracker: Tracker) -> Tracker:
    build_world(tracker)
    return tracker


# --- rows -------------------------------------------------------------------------------------


def test_leg_rows_equal_what_the_call_snapshots_say(world: Tracker) -> None:
    rows = list(world.export())
    assert rows == expected_rows(world, "leg")
    assert [list(row) for row in rows[:1]] == [[column.name for column in LEG_COLUMNS]]
    assert len(rows) == len(world.calls())
    by_id = {row["call_id"]: row for row in rows}
    # The shapes the comparison must have met.
    assert by_id[World.missing_parent]["start_time"] is None  # a placeholder, listed last
    assert rows[-1]["start_time"] is None
    assert by_id[World.swept]["swept"] is True
    assert by_id[World.swept]["disposition"] == "expired"
    assert by_id[World.original]["transfer_attempts"] == 2
    assert by_id[World.original]["legs"] == 3
    assert by_id[World.first_answered_leg]["talk_duration"] == 40.123
    # A leg's application is inherited from its parent, as `Call.application_id` is.
    assert by_id[World.leg_of_leg]["application_id"] == by_id[World.original]["application_id"]
    assert by_id[World.leg_of_leg]["application_id"] is not None


def test_conversation_rows_fold_in_every_leg_of_the_transfer_tree(world: Tracker) -> None:
    rows = list(world.export(per="conversation"))
    assert rows == expected_rows(world, "conversation")
    assert list(rows[0]) == [column.name for column in CONVERSATION_COLUMNS]
    assert all(row["parent_call_id"] is None for row in rows)
    tree = next(row for row in rows if row["call_id"] == World.original)
    assert tree["legs"] == 4  # three legs and a leg of a leg
    assert tree["transfer_attempts"] == 3  # two on the original, one on a leg
    assert tree["answered_leg_id"] == World.first_answered_leg  # by answer time, not start
    assert tree["answered_leg_to"] == "+15550000002"
    assert tree["legs_talk_duration"] == pytest.approx(20.5 + 40.123 + 7.25, abs=1e-9)
    assert tree["talk_duration"] == 300.0  # the original call's own
    ids = {row["call_id"] for row in rows}
    assert World.missing_parent in ids  # a placeholder original, with its one leg
    assert World.leg_of_leg not in ids and World.orphan_leg not in ids


@pytest.mark.parametrize("per", ["leg", "conversation"])
def test_window_and_account_filters_select_by_start_time_and_account(
    world: Tracker, per: str
) -> None:
    starts = sorted({call.start_time for call in world.calls() if call.start_time is not None})
    # Bounds that are calls' own start times: the window holds `since`, not `until`.
    since, until = starts[len(starts) // 4], starts[3 * len(starts) // 4]
    rows = list(world.export(per=per, since=since, until=until))
    assert rows == expected_rows(world, per, since=since, until=until)
    assert rows and rows[0]["start_time"] == since
    assert all(since <= row["start_time"] < until for row in rows)
    for account in (*ACCOUNTS, OTHER_ACCOUNT):
        selected = list(world.export(per=per, account_id=account))
        assert selected == expected_rows(world, per, account_id=account)
        assert selected
    both = list(world.export(per=per, account_id=ACCOUNTS[1], since=since))
    assert both == expected_rows(world, per, since=since, account_id=ACCOUNTS[1])
    tied = list(
        world.export(per=per, since=TIED_START, until=TIED_START + timedelta(microseconds=1))
    )
    assert sorted(row["call_id"] for row in tied) == sorted(World.tied)
    assert list(world.export(per=per, account_id="no-such-account")) == []


def test_a_window_leaves_out_placeholders_which_have_no_start_time(world: Tracker) -> None:
    placeholders = {call.call_id for call in world.calls() if call.start_time is None}
    assert World.missing_parent in placeholders
    everything = {row["call_id"] for row in world.export()}
    bounded = {row["call_id"] for row in world.export(since=datetime(2000, 1, 1, tzinfo=UTC))}
    assert everything - bounded == placeholders


@pytest.mark.parametrize("per", ["leg", "conversation"])
def test_pages_of_any_size_give_the_rows_of_one_big_page(world: Tracker, per: str) -> None:
    whole = list(world.export(per=per, batch_size=100_000))
    # 3 and 2 split the seven calls that share a start time across pages; 1 splits everything.
    for batch_size in (1, 2, 3, 7):
        assert list(world.export(per=per, batch_size=batch_size)) == whole
    since = TIED_START
    windowed = list(world.export(per=per, since=since, batch_size=100_000))
    assert list(world.export(per=per, since=since, batch_size=3)) == windowed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"since": datetime(2026, 3, 1)}, "since=2026-03-01T00:00:00 has no time zone"),
        ({"until": datetime(2026, 3, 1)}, "until=2026-03-01T00:00:00 has no time zone"),
        ({"since": "2026-03-01"}, "since must be a datetime"),
        (
            {
                "since": datetime(2026, 3, 2, tzinfo=UTC),
                "until": datetime(2026, 3, 1, tzinfo=UTC),
            },
            "must be after since",
        ),
        ({"per": "call"}, "per must be 'leg' or 'conversation'"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"account_id": 55555555}, "account_id must be a str or None"),
    ],
)
def test_bad_arguments_raise_value_error_before_anything_is_read(
    tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tracker.export(**arguments)


def test_the_export_reads_a_page_at_a_time_with_a_few_statements_each(
    sqlite_tracker: Tracker,
) -> None:
    """Memory stays bounded because nothing is read ahead of the page being handed out, and
    the work per page does not grow with the number of calls."""
    build_world(sqlite_tracker)
    statements: list[str] = []
    event.listen(
        sqlite_tracker.engine,
        "before_cursor_execute",
        lambda *arguments: statements.append(arguments[2]),
    )
    for per in ("leg", "conversation"):
        statements.clear()
        rows = sqlite_tracker.export(per=per, batch_size=10)
        first = [next(rows) for _ in range(10)]
        read_for_one_page = len(statements)
        assert 1 <= read_for_one_page <= 8, statements  # one page's worth, nothing ahead
        assert len(first) == 10
        remaining = sum(1 for _ in rows)
        pages = (10 + remaining) // 10 + 1
        assert len(statements) <= 8 * pages


def test_a_database_failure_mid_export_is_a_storage_error(sqlite_tracker: Tracker) -> None:
    build_world(sqlite_tracker)
    rows = sqlite_tracker.export(batch_size=5)
    next(rows)
    with sqlite_tracker.engine.begin() as connection:
        connection.execute(text("DROP TABLE tracker_transfers"))
    with pytest.raises(StorageError, match="the database failed"):
        list(rows)


def test_the_docs_document_every_column_in_order() -> None:
    table = re.findall(
        r"^\| `([a-z_]+)` \| (text|time|seconds|boolean|integer) \|", EXPORT_PAGE, re.M
    )
    assert table == [(column.name, column.kind.value) for column in CONVERSATION_COLUMNS]
    assert columns("leg") == CONVERSATION_COLUMNS[: len(LEG_COLUMNS)]


# --- the command line ---------------------------------------------------------------------------


def run(*arguments: str) -> Result:
    return CliRunner().invoke(cli, list(arguments))


def url_of(tracker: Tracker) -> str:
    return tracker.engine.url.render_as_string(hide_password=False)


def as_text(value: Any, kind: Kind) -> str:
    """A cell as docs/export.md says CSV writes it."""
    if value is None:
        return ""
    if kind is Kind.TIME:
        assert value.tzinfo is not None
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if kind is Kind.SECONDS:
        return f"{value:.6f}"
    if kind is Kind.BOOLEAN:
        return "true" if value else "false"
    return str(value)


def test_cli_writes_csv_to_stdout(world: Tracker) -> None:
    result = run("--db", url_of(world), "export", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = list(csv.reader(io.StringIO(result.stdout)))
    assert lines[0] == [column.name for column in LEG_COLUMNS]
    assert lines[1:] == [
        [as_text(row[column.name], column.kind) for column in LEG_COLUMNS]
        for row in expected_rows(world, "leg")
    ]
    assert result.stdout_bytes.endswith(b"\r\n")  # RFC 4180 (`stdout` reads it as "\n")


def test_cli_writes_json_lines_per_conversation_to_a_file(world: Tracker, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "conversations.jsonl"
    since = "2026-06-10T19:00:00Z"
    result = run(
        "--db", url_of(world), "export", "--format", "jsonl", "--per", "conversation",
        "--since", since, "--account", ACCOUNTS[0], "-o", str(output),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = expected_rows(
        world, "conversation", since=datetime.fromisoformat(since), account_id=ACCOUNTS[0]
    )
    assert f"Wrote {len(expected)} conversations to {output}." in result.stdout
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            name: as_text(value, Kind.TIME) if isinstance(value, datetime) else value
            for name, value in row.items()
        }
        for row in expected
    ]
    assert list(output.parent.iterdir()) == [output]  # no partial file left behind


def test_cli_writes_parquet_with_typed_columns(world: Tracker, tmp_path: Path) -> None:
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    output = tmp_path / "legs.parquet"
    result = run("--db", url_of(world), "export", "--format", "parquet", "-o", str(output))
    assert result.exit_code == 0, result.output
    table = pyarrow_parquet.read_table(output)
    assert table.column_names == [column.name for column in LEG_COLUMNS]
    assert str(table.schema.field("start_time").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("duration").type) == "double"
    assert table.to_pylist() == expected_rows(world, "leg")


def test_parquet_is_written_in_row_groups(world: Tracker, tmp_path: Path) -> None:
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    output = tmp_path / "conversations.parquet"
    rows = list(world.export(per="conversation"))
    written = write_parquet(iter(rows), CONVERSATION_COLUMNS, output, row_group_size=4)
    assert written == len(rows)
    assert pyarrow_parquet.ParquetFile(output).metadata.num_row_groups == -(-len(rows) // 4)
    assert pyarrow_parquet.read_table(output).to_pylist() == rows


def test_an_empty_export_still_writes_the_header(tracker: Tracker, tmp_path: Path) -> None:
    result = run("--db", url_of(tracker), "export")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == ",".join(column.name for column in LEG_COLUMNS).encode() + b"\r\n"
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    output = tmp_path / "none.parquet"
    result = run("--db", url_of(tracker), "export", "--format", "parquet", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert "Wrote 0 legs" in result.stdout
    assert pyarrow_parquet.read_table(output).num_rows == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "yesterday"], "'yesterday' is not an ISO 8601 date or datetime"),
        (["--until", "2026-13-01"], "is not an ISO 8601 date or datetime"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "must be after since"),
        (["--format", "parquet"], "--format parquet needs -o FILE"),
        (["--per", "call"], "'call' is not one of 'leg', 'conversation'"),
    ],
)
def test_cli_refuses_bad_options_with_a_usage_error(
    tracker: Tracker, arguments: list[str], message: str
) -> None:
    result = run("--db", url_of(tracker), "export", *arguments)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_parquet_without_pyarrow_names_the_extra_to_install(
    sqlite_tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` meets uninstalled
    output = tmp_path / "legs.parquet"
    result = run("--db", url_of(sqlite_tracker), "export", "--format", "parquet", "-o", str(output))
    assert result.exit_code == 2
    assert "pip install 'tracker[parquet]'" in result.stderr
    assert not output.exists()


def test_cli_export_of_an_unmigrated_database_exits_2_naming_upgrade(tmp_path: Path) -> None:
    result = run("--db", f"sqlite:///{tmp_path / 'empty.db'}", "export")
    assert result.exit_code == 2
    assert "upgrade" in result.stderr


# --- the benchmark ------------------------------------------------------------------------------


def test_benchmark_exports_every_loaded_leg_and_reports_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A smoke test of `python -m benchmarks.export`, not a timing."""
    from benchmarks import export as benchmark

    benchmark.main(["--legs", "60", "--sqlite-dir", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    runs = {(run["file_format"], run["per"]): run for run in report["runs"]}
    assert set(runs) == {("csv", "leg"), ("csv", "conversation")}
    assert runs["csv", "leg"]["rows"] == 60
    assert 0 < runs["csv", "conversation"]["rows"] < 60  # some calls were transferred
    assert all(run["rows_per_second"] > 0 and run["peak_rss_mb"] > 0 for run in runs.values())
    assert list(tmp_path.iterdir()) == []  # the database and the exports are gone
