"""The provider benchmark runs end to end on SQLite and prints its figures (a smoke test, not a
timing): the sweep with the Bandwidth resolver against the fake in another process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import provider

CALLS = 50


def test_provider_benchmark_sweeps_every_call_as_bandwidth_says_at_each_concurrency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--calls", str(CALLS), "--concurrency", "3", "--sqlite-dir", str(tmp_path)]
    provider.main([*arguments, "--json"])

    report = json.loads(capsys.readouterr().out)
    says = report["bandwidth_says"]
    assert sum(says.values()) == report["calls"] == CALLS
    runs = {run["concurrency"]: run for run in report["runs"]}
    assert set(runs) == {3, 0}  # 0: no resolver
    for concurrency, run in runs.items():
        assert run["checked"] == CALLS and run["failed"] == 0
        assert run["seconds"] > 0 and run["cpu_seconds"] > 0
        assert 0 < run["rss_before_mb"] <= run["peak_rss_mb"]
        if concurrency == 0:
            assert (run["expired"], run["lookups"], run["fake_statuses"]) == (CALLS, 0, {})
            continue
        assert (run["resolved"], run["kept"], run["expired"]) == (
            says["disconnected"],
            says["active"],
            says["unknown"],
        )
        assert run["requests"] == {"ok": CALLS - says["unknown"], "not_found": says["unknown"]}
        assert run["fake_statuses"] == {"200": CALLS - says["unknown"], "404": says["unknown"]}
        assert run["lookups"] == CALLS and run["lookups_per_second"] > 0
        assert 1 <= run["fake_max_in_flight"] <= concurrency
    assert list(tmp_path.iterdir()) == []  # every database it made is gone

    text = provider.as_text(report)
    table = [line for line in text.splitlines() if line.startswith("| sqlite |")]
    assert [line.split("|")[2].strip() for line in table] == ["3", "no resolver"]
    assert f"{CALLS} live calls" in text and "VmHWM" in text
