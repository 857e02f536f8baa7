"""The benchmarks run end to end and print their figures (smoke tests, not timings): on SQLite,
and the curve of many processes on PostgreSQL."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from pydantic import BaseModel

from benchmarks import bench, curve, measures
from benchmarks import stats as stats_bench
from benchmarks.endpoint import HTTP_TARGET
from benchmarks.exactness import serial_replay
from tests.conftest import SERVERS, _require
from tracker.parsing import Disconnect, TransferDisconnect
from tracker.testing import ACCOUNTS, shuffled


def test_benchmark_prints_figures_for_every_run_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--deliveries", "60", "--repeat", "1", "--batch", "25"]
    bench.main([*arguments, "--sqlite-dir", str(tmp_path), "--json"])

    report = json.loads(capsys.readouterr().out)
    runs = {run["mode"]: run for run in report["runs"]}
    assert set(runs) == {"floor", "apply", "floor_batched", "apply_many"}
    assert all(run["median"] > 0 for run in runs.values())
    assert runs["apply"]["ratio_to_floor"] > 0
    assert runs["apply"]["outcomes"] == {"applied": 60}
    assert runs["apply_many"]["outcomes"] == {"applied": 60}
    assert all(run["client_cpu_us"] > 0 for run in runs.values())
    assert all(run["server_cpu_us"] is None for run in runs.values())  # SQLite: no server
    assert report["parse"]["tracker_us"] > 0
    frames = report["wal_frames_per_delivery"]
    assert frames["deliveries"] == 60
    assert 0 < frames["tracker"] < math.inf
    assert 0 < frames["floor"] < math.inf
    assert report["peak_rss_mb"] > 0
    assert list(tmp_path.iterdir()) == []  # every database it created is gone


def aliases(model: type[BaseModel]) -> dict[str, str | None]:
    return {name: field.alias for name, field in model.model_fields.items()}


@pytest.mark.parametrize(
    ("plain", "tracker_model"),
    [
        (measures.PlainDisconnect, Disconnect),
        (measures.PlainTransferDisconnect, TransferDisconnect),
    ],
)
def test_plain_parse_baseline_reads_the_same_fields_as_the_tracker(
    plain: type[BaseModel], tracker_model: type[BaseModel]
) -> None:
    """The parse ratio compares like with like only while both models read the same keys."""
    assert aliases(plain) == aliases(tracker_model)


def test_http_benchmark_drives_a_served_endpoint_with_1_and_32_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--http", "--deliveries", "64", "--repeat", "1"]
    bench.main([*arguments, "--sqlite-dir", str(tmp_path), "--json"])

    report = json.loads(capsys.readouterr().out)
    assert report["apply_deliveries_per_second"]["sqlite"][0] > 0
    runs = {run["clients"]: run for run in report["http"]}
    assert set(runs) == {1, 32}
    for run in runs.values():
        assert run["statuses"] == {"204": 64}
        assert run["outcomes"] == {"applied": 64}
        assert run["median"] > 0 and run["ratio_to_apply"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["client_cpu_us"] > 0 and run["server_cpu_us"] > 0
    # One client waits for each answer before it sends again: every commit holds one delivery.
    assert runs[1]["deliveries_per_commit"] == 1.0
    assert runs[32]["deliveries_per_commit"] >= 1.0
    assert runs[32]["target"] == HTTP_TARGET
    assert list(tmp_path.iterdir()) == []  # every database and server log it made is gone


def test_stats_benchmark_times_every_bucketing_and_reuses_a_kept_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--calls", "300", "--repeat", "1", "--batch", "100", "--json"]
    stats_bench.main([*arguments, "--sqlite-dir", str(tmp_path)])

    report = json.loads(capsys.readouterr().out)
    assert report["loaded"] and report["calls"] >= 300
    assert set(report["seconds"]) == {"day", "account", "hour", "None"}
    assert all(seconds > 0 for seconds in report["seconds"].values())
    assert report["buckets"]["account"] == len(ACCOUNTS)
    assert list(tmp_path.iterdir()) == []  # the temporary database is gone

    kept = f"sqlite:///{tmp_path / 'kept.db'}"
    stats_bench.main([*arguments, "--db", kept])
    first = json.loads(capsys.readouterr().out)
    stats_bench.main([*arguments, "--calls", "600", "--db", kept])
    again = json.loads(capsys.readouterr().out)
    assert (first["loaded"], again["loaded"]) == (True, False)
    assert again["calls"] == first["calls"]  # measured as it was, not loaded again

    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    stats_bench.main([*arguments, "--db", copy, "--copy-from", kept])
    copied = json.loads(capsys.readouterr().out)
    assert (copied["loaded_by"], copied["calls"]) == ("copy", first["calls"])
    assert copied["buckets"] == first["buckets"]


def test_shared_conversations_deal_one_call_and_a_repeated_body_to_several_processes() -> None:
    """The curve's contention: dealt round robin, legs of one call and a body's two deliveries
    reach different processes at about the same moment."""
    bodies = curve.shared_conversations(200, seed=1)
    assert len(bodies) == 200 + 200 // curve.DUPLICATE_EVERY
    repeated = [body for body, count in Counter(bodies).items() if count == 2]
    assert len(repeated) == 200 // curve.DUPLICATE_EVERY
    for body in repeated:
        first, second = (index for index, each in enumerate(bodies) if each == body)
        assert second - first in (1, curve.DUPLICATE_LATER)
    roots = [json.loads(body).get("parentCallId") or json.loads(body)["callId"] for body in bodies]
    shared = {root for index, root in enumerate(roots[:-1]) if roots[index + 1] == root}
    assert len(shared) > 20  # most conversations have callbacks side by side


def test_the_exactness_check_names_the_first_difference_and_ignores_the_order(
    tmp_path: Path,
) -> None:
    bodies = curve.shared_conversations(60, seed=3)
    reference = serial_replay(f"sqlite:///{tmp_path / 'reference.db'}", bodies)
    shuffled_replay = serial_replay(f"sqlite:///{tmp_path / 'shuffled.db'}", shuffled(bodies, 5))
    assert reference.first_difference(shuffled_replay) is None

    last = json.loads(bodies[-1])
    short = serial_replay(f"sqlite:///{tmp_path / 'short.db'}", bodies[:-1])
    difference = reference.first_difference(short)
    assert difference is not None and last["callId"] in difference


def test_the_curve_on_postgresql_has_a_row_per_run_and_every_run_is_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny curve end to end: real processes, the floor and the tracker, the check."""
    _require("postgresql")
    arguments = ["--database", SERVERS["postgresql"], "--processes", "1,2", "--batch", "10"]
    small = ["--deliveries", "50", "--publish-wait", "0", "--warmup", "2", "--json"]
    assert bench.main([*arguments, *small]) == 0

    report = json.loads(capsys.readouterr().out)
    rows = {(run["processes"], run["label"]) for run in report["runs"]}
    labels = ("floor, 1 commit per delivery", "tracker.apply", "floor, 1 commit per 10",
              "tracker.apply_many(10)")  # fmt: skip
    assert rows == {(processes, label) for processes in (1, 2) for label in labels}
    assert report["exact"] is True
    for run in report["runs"]:
        assert run["median"] > 0 and len(run["rollbacks_per_batch"]) == 1
        tracker = run["label"].startswith("tracker")
        assert run["exact"] is (True if tracker else None)
        if tracker:
            assert run["outcomes"] == {"applied": 50, "duplicate": 1}
            assert run["ratio_to_floor"] > 0
