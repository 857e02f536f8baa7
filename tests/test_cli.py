"""The command line: what a person sees and what a script can rely on."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from tests.test_feed import start_follow
from tracker import Call, StorageError, Tracker
from tracker.cli import CHUNK_SIZE, cli
from tracker.testing import (
    BASE_TIME,
    answer,
    call_url,
    disconnect,
    initiate,
    machine_detection_complete,
    new_call_id,
    transfer_complete,
    transfer_disconnect,
)

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "callbacks.jsonl"

# What samples/callbacks.jsonl holds (see samples/README.md).
SAMPLE_OUTCOMES = {"applied": 18, "duplicate": 2, "rejected": 0, "invalid": 1, "ignored": 1}
SIM_RING_PARENT = "c-99e07ec9-658e8b3e-1136-4f5a-aa70-31b554d82886"
SIM_RING_LEGS = [
    "c-99e07ec9-11c030a3-8e86-400f-b96c-81be1a519687",
    "c-99e07ec9-4f630df0-62ad-416b-9c18-3a222720696c",
    "c-99e07ec9-c33cd17d-31af-4fbb-b688-9d75f7e61e5a",
]
BUSY_CALL = "c-d4cb05e3-18c9cd25-9d57-4610-bf9b-78f4e3849a8c"


def run(*args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    # A wide, plain page whatever the terminal running the tests says, so rich never folds ids.
    isolated = {"COLUMNS": None, "FORCE_TERMINAL": None, "TTY_COMPATIBLE": None, **(env or {})}
    return CliRunner().invoke(cli, list(args), input=input, env=isolated)


def jsonl(bodies: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(body).encode() + b"\n" for body in bodies)


@pytest.fixture
def db(sqlite_tracker: Tracker) -> str:
    """The URL of a migrated, empty SQLite database of this test's own."""
    return sqlite_tracker.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def sample_db(db: str) -> str:
    assert run("--db", db, "ingest", str(SAMPLE)).exit_code == 0
    return db


def ingest_json(db: str, *files: str, input: bytes | None = None) -> dict[str, Any]:
    result = run("--db", db, "ingest", "--json", *files, input=input)
    assert result.exit_code == 0, result.output
    counts: dict[str, Any] = json.loads(result.stdout)
    return counts


def table_rows(output: str) -> list[list[str]]:
    """The body cells of the rich table in `output`, row by row."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def ids_of(listing: Sequence[dict[str, Any]]) -> list[str]:
    return [call["call_id"] for call in listing]


# --- ingest -----------------------------------------------------------------------------------


def test_ingest_of_the_sample_counts_every_outcome(db: str) -> None:
    counts = ingest_json(db, str(SAMPLE))
    assert counts["outcomes"] == SAMPLE_OUTCOMES
    assert counts["reasons"] == {"missing_field": 1, "untracked_event_type": 1}
    assert (counts["lines"], counts["blank_lines"], counts["bodies"]) == (22, 0, 22)


def test_ingest_summary_table_shows_outcomes_and_reason_codes(db: str) -> None:
    result = run("--db", db, "ingest", str(SAMPLE))
    assert result.exit_code == 0
    assert table_rows(result.stdout) == [
        ["applied", "", "18"],
        ["duplicate", "", "2"],
        ["rejected", "", "0"],
        ["invalid", "", "1"],
        ["", "missing_field", "1"],
        ["ignored", "", "1"],
        ["", "untracked_event_type", "1"],
    ]


def test_ingest_json_prints_one_object_and_nothing_else(db: str) -> None:
    result = run("--db", db, "ingest", "--json", str(SAMPLE))
    assert isinstance(json.loads(result.stdout), dict)
    assert len(result.stdout.strip().splitlines()) == 1


def test_ingest_reads_stdin_given_a_dash(db: str) -> None:
    counts = ingest_json(db, "-", input=SAMPLE.read_bytes())
    assert counts["outcomes"] == SAMPLE_OUTCOMES


def test_ingest_skips_blank_and_whitespace_only_lines(db: str, sqlite_tracker: Tracker) -> None:
    stream = b"\n" + jsonl([disconnect()]) + b"   \t\r\n\r\n" + jsonl([disconnect()]) + b"\n"
    counts = ingest_json(db, "-", input=stream)
    assert counts["outcomes"]["applied"] == 2
    assert (counts["lines"], counts["blank_lines"]) == (6, 4)
    assert len(sqlite_tracker.events()) == 2


def test_ingest_hands_over_each_line_as_its_exact_bytes(db: str, sqlite_tracker: Tracker) -> None:
    body = b' { "eventType" : "dtmf" , "callId" : "c-1" }  '
    ingest_json(db, "-", input=body + b"\r\n" + body)
    assert [event.body for event in sqlite_tracker.events()] == [body, body]


def test_ingest_records_bad_bodies_and_still_exits_zero(db: str) -> None:
    ends_before_start = disconnect(endTime="2026-06-10T19:00:00Z")
    stream = jsonl([ends_before_start]) + b"not json\n" + b"[1, 2]\n"
    counts = ingest_json(db, "-", input=stream)
    assert counts["outcomes"] == {
        "applied": 0,
        "duplicate": 0,
        "rejected": 1,
        "invalid": 2,
        "ignored": 0,
    }
    assert counts["reasons"] == {"end_before_start": 1, "not_json": 1, "not_an_object": 1}


def test_ingest_applies_bodies_in_chunks(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk_sizes: list[int] = []
    apply_many = Tracker.apply_many

    def recording(self: Tracker, bodies: Iterable[bytes | str | object]) -> Any:
        chunk = list(bodies)
        chunk_sizes.append(len(chunk))
        return apply_many(self, chunk)

    monkeypatch.setattr(Tracker, "apply_many", recording)
    path = tmp_path / "untracked.jsonl"
    path.write_bytes(b'{"eventType":"dtmf"}\n' * (2 * CHUNK_SIZE + 7))
    counts = ingest_json(db, str(path))
    assert chunk_sizes == [CHUNK_SIZE, CHUNK_SIZE, 7]
    assert counts["outcomes"]["ignored"] == 2 * CHUNK_SIZE + 7


def test_ingest_reads_several_files_in_turn(db: str, tmp_path: Path) -> None:
    second = tmp_path / "more.jsonl"
    second.write_bytes(jsonl([disconnect()]))
    counts = ingest_json(db, str(SAMPLE), str(second))
    assert counts["outcomes"]["applied"] == SAMPLE_OUTCOMES["applied"] + 1


def test_ingest_of_a_missing_file_is_a_usage_error(db: str, tmp_path: Path) -> None:
    result = run("--db", db, "ingest", str(tmp_path / "nowhere.jsonl"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


# --- show -------------------------------------------------------------------------------------


def test_show_draws_legs_of_legs_as_a_tree(db: str, sqlite_tracker: Tracker) -> None:
    parent = disconnect(direction="inbound")
    leg = transfer_disconnect(parent["callId"])
    leg_of_leg = transfer_disconnect(leg["callId"], start=BASE_TIME + timedelta(seconds=20))
    sqlite_tracker.apply_many([parent, leg, leg_of_leg])
    result = run("--db", db, "show", parent["callId"])
    assert result.exit_code == 0
    tree = result.stdout.split("Legs\n")[1].split("\n\n")[0].splitlines()
    assert [line.index("c-") for line in tree] == [0, 4, 8]
    assert [line[line.index("c-") :].split()[0] for line in tree] == [
        parent["callId"],
        leg["callId"],
        leg_of_leg["callId"],
    ]
    assert tree[2].lstrip(" ").startswith("└── ")


def test_show_prints_facts_and_history(sample_db: str) -> None:
    result = run("--db", sample_db, "show", BUSY_CALL)
    assert result.exit_code == 0
    for fact in ("busy (cause busy)", "Callee is busy", "campaign=renewals-q1", "+18285550164"):
        assert fact in result.stdout
    assert "initiated -> disconnected" in result.stdout


def test_show_says_whose_leg_a_leg_is(sample_db: str) -> None:
    result = run("--db", sample_db, "show", SIM_RING_LEGS[1])
    assert f"A leg of {SIM_RING_PARENT}" in result.stdout


def test_show_json_contains_the_legs_and_their_tree(sample_db: str) -> None:
    result = run("--db", sample_db, "show", "--json", SIM_RING_PARENT)
    shown = json.loads(result.stdout)
    assert shown["legs"] == SIM_RING_LEGS
    tree = shown["leg_tree"]
    assert tree["call_id"] == SIM_RING_PARENT
    assert [(leg["call_id"], leg["disposition"]) for leg in tree["legs"]] == [
        (SIM_RING_LEGS[0], "completed"),
        (SIM_RING_LEGS[1], "cancelled"),
        (SIM_RING_LEGS[2], "cancelled"),
    ]
    assert all(leg["legs"] == [] for leg in tree["legs"])


def test_show_json_has_every_call_attribute_in_json_types(sample_db: str) -> None:
    shown = json.loads(run("--db", sample_db, "show", "--json", SIM_RING_PARENT).stdout)
    properties = {"answered", "duration", "talk_duration", "ring_duration"}
    assert set(shown) == {f.name for f in fields(Call)} | properties | {"leg_tree"}
    assert shown["answered"] is True
    assert datetime.fromisoformat(shown["start_time"]) == datetime(
        2026, 3, 17, 14, 21, 20, 204000, tzinfo=UTC
    )
    assert shown["ring_duration"] == pytest.approx(0.485)
    assert shown["history"][0] == {
        "source": "initiated",
        "target": "answered",
        "at": "2026-03-17T14:21:20.689000Z",
        "event": "disconnect",
        "event_id": shown["history"][0]["event_id"],
    }


def test_show_of_an_unknown_call_exits_1_on_stderr(db: str) -> None:
    result = run("--db", db, "show", "c-nobody")
    assert result.exit_code == 1
    assert "c-nobody" in result.stderr
    assert result.stdout == ""


# --- calls ------------------------------------------------------------------------------------


def calls_json(db: str, *options: str) -> list[dict[str, Any]]:
    result = run("--db", db, "calls", "--json", *options)
    assert result.exit_code == 0, result.output
    listing: list[dict[str, Any]] = json.loads(result.stdout)
    return listing


def test_calls_filters_by_state(db: str, sqlite_tracker: Tracker) -> None:
    leg = transfer_disconnect("c-parent-seen-only-through-its-leg")
    sqlite_tracker.apply(leg)
    assert ids_of(calls_json(db, "--state", "initiated")) == ["c-parent-seen-only-through-its-leg"]
    assert ids_of(calls_json(db, "--state", "disconnected")) == [leg["callId"]]


def test_calls_filters_by_disposition(sample_db: str) -> None:
    assert ids_of(calls_json(sample_db, "--disposition", "busy")) == [BUSY_CALL]
    failed = calls_json(sample_db, "--disposition", "failed")
    assert [call["cause"] for call in failed] == ["sip-503-service-unavailable"]


def test_calls_filters_by_account(db: str, sqlite_tracker: Tracker) -> None:
    other = new_call_id()
    sqlite_tracker.apply_many(
        [disconnect(), disconnect(other, accountId="777", callUrl=call_url(other, "777"))]
    )
    assert ids_of(calls_json(db, "--account", "777")) == [other]


def test_calls_filters_by_start_time_window(db: str, sqlite_tracker: Tracker) -> None:
    starts = [datetime(2026, 6, 10, hour, tzinfo=UTC) for hour in (10, 11, 12)]
    bodies = [disconnect(start=start) for start in starts]
    sqlite_tracker.apply_many(bodies)
    # --since is inclusive and --until exclusive; a datetime without a zone is UTC.
    window = calls_json(db, "--since", "2026-06-10T11:00:00", "--until", "2026-06-10T08:00-04:00")
    assert ids_of(window) == [bodies[1]["callId"]]


def test_calls_limit_cuts_the_list_and_says_so(db: str, sqlite_tracker: Tracker) -> None:
    bodies = [disconnect(start=BASE_TIME + timedelta(minutes=n)) for n in range(3)]
    sqlite_tracker.apply_many(bodies)
    assert ids_of(calls_json(db, "--limit", "2")) == [body["callId"] for body in bodies[:2]]
    assert "raise --limit" in run("--db", db, "calls", "--limit", "2").stdout


def test_calls_json_shows_each_call_as_show_does_without_the_tree(sample_db: str) -> None:
    listed = {call["call_id"]: call for call in calls_json(sample_db)}
    assert len(listed) == 16
    shown = json.loads(run("--db", sample_db, "show", "--json", SIM_RING_PARENT).stdout)
    del shown["leg_tree"]
    assert listed[SIM_RING_PARENT] == shown


def test_calls_table_lists_every_call(sample_db: str) -> None:
    result = run("--db", sample_db, "calls")
    assert result.exit_code == 0
    assert all(leg in result.stdout for leg in SIM_RING_LEGS)
    assert "3 legs" in result.stdout


def test_calls_refuses_a_time_that_is_not_iso_8601(db: str) -> None:
    result = run("--db", db, "calls", "--since", "yesterday")
    assert result.exit_code == 2
    assert "ISO 8601" in result.stderr


# --- events -----------------------------------------------------------------------------------


def test_events_lists_the_log_filtered_by_outcome(sample_db: str) -> None:
    result = run("--db", sample_db, "events", "--json", "--outcome", "invalid")
    [event] = json.loads(result.stdout)
    assert event["reason"] == "missing_field"
    assert "endTime" in event["detail"]
    assert event["body"] == SAMPLE.read_text().splitlines()[14]  # line 15 (samples/README.md)


def test_events_filters_by_call(sample_db: str) -> None:
    logged = json.loads(run("--db", sample_db, "events", "--json", "--call", BUSY_CALL).stdout)
    assert [event["outcome"] for event in logged] == ["applied", "duplicate"]


# --- database and errors ----------------------------------------------------------------------


def test_upgrade_migrates_then_has_nothing_to_do(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = run("--db", db, "upgrade")
    assert first.exit_code == 0
    assert "Upgraded" in first.stdout
    again = run("--db", db, "upgrade")
    assert "already at revision" in again.stdout


@pytest.mark.parametrize(
    "command", [["calls"], ["show", "c-1"], ["events"], ["ingest", str(SAMPLE)]]
)
def test_unmigrated_database_exits_2_naming_upgrade(tmp_path: Path, command: list[str]) -> None:
    result = run("--db", f"sqlite:///{tmp_path / 'empty.db'}", *command)
    assert result.exit_code == 2
    assert "upgrade" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_storage_error_exits_3_in_one_line(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(self: Tracker, bodies: object) -> Any:
        raise StorageError("the database failed and nothing of this delivery was written: boom")

    monkeypatch.setattr(Tracker, "apply_many", failing)
    result = run("--db", db, "ingest", str(SAMPLE))
    assert result.exit_code == 3
    [line] = result.stderr.strip().splitlines()
    assert "boom" in line
    assert "stopped at" in line
    assert f"{SAMPLE} line 1:" in line


def test_storage_error_names_the_line_ingest_stopped_at(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    apply_many = Tracker.apply_many

    def failing_second_time(self: Tracker, bodies: Iterable[bytes | str | object]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StorageError("boom")
        return apply_many(self, bodies)

    monkeypatch.setattr(Tracker, "apply_many", failing_second_time)
    untracked = b'{"eventType":"dtmf"}\n'
    result = run("--db", db, "ingest", "-", input=b"\n" + untracked * (CHUNK_SIZE + 3))
    assert result.exit_code == 3
    assert f"stopped at stdin line {CHUNK_SIZE + 2}:" in result.stderr


def test_unreachable_database_exits_3(tmp_path: Path) -> None:
    result = run("--db", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "calls")
    assert result.exit_code == 3
    assert "the database failed" in result.stderr


def test_db_defaults_to_tracker_database_url(sample_db: str) -> None:
    result = run("calls", "--json", env={"TRACKER_DATABASE_URL": sample_db})
    assert len(json.loads(result.stdout)) == 16


def test_unreadable_db_url_is_a_usage_error() -> None:
    result = run("--db", "not a url", "calls")
    assert result.exit_code == 2
    assert "--db" in result.stderr


# --- live calls ---------------------------------------------------------------------------------


def test_calls_live_lists_ringing_and_talking_calls_only(db: str) -> None:
    ringing, talking, ended = new_call_id(), new_call_id(), new_call_id()
    stream = jsonl([initiate(ringing), answer(talking), disconnect(ended)])
    ingest_json(db, "-", input=stream)
    listed = json.loads(run("--db", db, "calls", "--live", "--json").stdout)
    assert {(call["call_id"], call["state"]) for call in listed} == {
        (ringing, "initiated"),
        (talking, "answered"),
    }
    refused = run("--db", db, "calls", "--live", "--state", "answered")
    assert refused.exit_code == 2 and "--live" in refused.output


def test_show_prints_transfer_attempts_attestation_and_machine_detection(db: str) -> None:
    inbound, outbound = new_call_id(), new_call_id()
    stream = jsonl(
        [
            initiate(inbound),
            transfer_complete(inbound, cause="busy"),
            answer(outbound),
            machine_detection_complete(outbound, result="answering-machine"),
        ]
    )
    ingest_json(db, "-", input=stream)
    shown = run("--db", db, "show", inbound).stdout
    assert "Transfer attempts" in shown and "busy (cause busy)" in shown
    assert "+15556667777" in shown and "Callee is busy" in shown
    assert "A (verstat TN-Validation-Passed)" in shown
    assert "answering-machine" in run("--db", db, "show", outbound).stdout
    as_json = json.loads(run("--db", db, "show", "--json", inbound).stdout)
    assert as_json["attestation"] == "A"
    assert [(t["cause"], t["disposition"]) for t in as_json["transfers"]] == [("busy", "busy")]


def test_show_draws_a_tree_holding_a_cycle_without_recursing_for_ever(
    db: str, sqlite_tracker: Tracker
) -> None:
    """The tracker refuses cycles, but a database an older version wrote may hold one."""
    parent, leg = new_call_id(), new_call_id()
    sqlite_tracker.apply(transfer_disconnect(parent, leg))
    with sqlite_tracker.engine.begin() as connection:
        connection.execute(
            text("UPDATE tracker_calls SET parent_call_id = :leg WHERE call_id = :parent"),
            {"leg": leg, "parent": parent},
        )
    result = run("--db", db, "show", parent)
    assert result.exit_code == 0, result.output
    assert leg in result.stdout


def strict_json(text: str) -> Any:
    """`text` read as RFC 8259 JSON: NaN and Infinity refused."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} printed, which is not JSON: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_prints_a_stored_nan_or_infinity_as_null(
    tracker: Tracker, database_url: str
) -> None:
    """The tracker refuses NaN and Infinity in bodies, but a database an older release wrote may
    hold them in a diversion: `show --json`, `calls --json` and `follow` still print strict
    JSON, such a number as null and every other value as stored."""
    call_id = new_call_id()
    tracker.apply(initiate(call_id, diversion={"origTo": "+15551234567", "reason": "busy"}))
    with tracker.engine.begin() as connection:
        connection.execute(
            text("UPDATE tracker_calls SET diversion = :diversion WHERE call_id = :call_id"),
            {
                "diversion": '{"origTo":"+15551234567","x":NaN,"deep":[1.5,{"y":Infinity}],'
                '"z":-Infinity}',
                "call_id": call_id,
            },
        )
    printed = {"origTo": "+15551234567", "x": None, "deep": [1.5, {"y": None}], "z": None}

    shown = run("--db", database_url, "show", "--json", call_id)
    assert shown.exit_code == 0, shown.output
    assert strict_json(shown.stdout)["diversion"] == printed
    listed = run("--db", database_url, "calls", "--json")
    assert listed.exit_code == 0, listed.output
    assert [call["diversion"] for call in strict_json(listed.stdout)] == [printed]

    follower = start_follow(database_url)
    try:
        assert follower.stdout is not None
        line = follower.stdout.readline()
    finally:
        follower.send_signal(signal.SIGTERM)
        _out, errors = follower.communicate(timeout=60)
    assert follower.returncode == 0, errors
    assert strict_json(line)["call"]["diversion"] == printed
