"""The benchmark runs end to end on SQLite and prints its figures (a smoke test, not a timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracker import bench


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
    assert report["peak_rss_mb"] > 0
    assert list(tmp_path.iterdir()) == []  # every database it created is gone
