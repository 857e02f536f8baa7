"""The benchmark runs end to end on SQLite and prints its figures (a smoke test, not a timing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import BaseModel

from benchmarks import bench
from tracker.parsing import Disconnect, TransferDisconnect


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
        (bench.PlainDisconnect, Disconnect),
        (bench.PlainTransferDisconnect, TransferDisconnect),
    ],
)
def test_plain_parse_baseline_reads_the_same_fields_as_the_tracker(
    plain: type[BaseModel], tracker_model: type[BaseModel]
) -> None:
    """The parse ratio compares like with like only while both models read the same keys."""
    assert aliases(plain) == aliases(tracker_model)


@pytest.mark.slow
def test_benchmark_over_http_drives_tracker_serve_with_1_and_32_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--deliveries", "60", "--repeat", "1", "--batch", "25", "--no-parse", "--http"]
    bench.main([*arguments, "--sqlite-dir", str(tmp_path), "--json"])

    report = json.loads(capsys.readouterr().out)
    apply = next(run for run in report["runs"] if (run["mode"], run["workers"]) == ("apply", 1))
    http = {run["clients"]: run for run in report["http"]}
    assert set(http) == {1, 32}
    for run in http.values():
        assert run["backend"] == "sqlite"
        assert run["outcomes"] == {"applied": 60}  # every body answered 204, outcome applied
        assert run["median"] > 0
        assert run["ratio_to_apply"] == pytest.approx(run["median"] / apply["median"])
        assert 0 < run["p50_ms"][0] <= run["p99_ms"][0]
        assert 0 < run["client_cpu_share"][0] < math.inf
        assert run["server_peak_rss_mb"] > 0
    # One client waits for each answer before it sends again: every commit holds one delivery.
    assert http[1]["deliveries_per_commit"] == [1.0]
    assert http[32]["deliveries_per_commit"][0] >= 1
    assert http[1]["target"] is None
    assert http[32]["target"] == bench.HTTP_TARGETS[("sqlite", 32)]
    assert isinstance(http[32]["passed"], bool)
    assert list(tmp_path.iterdir()) == []  # every database and server log it made is gone


def test_http_figures_are_compared_with_apply_in_the_same_repetition() -> None:
    apply = bench.Figure("sqlite", 1, "apply", rates=[1000.0, 500.0, 2000.0])
    served = bench.HttpFigure(
        "sqlite",
        32,
        rates=[3500.0, 1000.0, 5000.0],  # 3.5, 2.0 and 2.5 times apply in its repetition
        p50_ms=[8.0, 9.0, 10.0],
        p99_ms=[20.0, 30.0, 40.0],
        client_cpu=[0.07, 0.08, 0.09],
        per_commit=[15.0, 16.0, 17.0],
    )
    report = bench.Report(
        machine={},
        deliveries=2000,
        repeat=3,
        batch=500,
        figures=[apply],
        parse=None,
        per_event_type={},
        wal_frames=None,
        peak_rss_mb=80.0,
        worker_peak_rss_mb=None,
        http=[served],
    )

    assert report.http_ratio(served) == 2.5  # not 3,500 / 1,000: the medians of other runs
    assert "| sqlite | 32 | 3,500 (1,000-5,000) | 9.0 | 30.0 | 2.50 | >= 3.00 | MISS |" in (
        report.as_text()
    )
    assert report.as_json()["http"][0]["passed"] is False
