"""The growth measurement runs end to end on SQLite and prints its figures (a smoke test of
`python -m benchmarks.growth`, not a measurement)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import growth
from tracker import storage

SMALL = ["--calls", "150", "--backends", "sqlite", "--repeated", "0.1", "--sample", "20"]


def test_growth_prints_positive_sizes_for_every_table_and_index_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    growth.main([*SMALL, "--sqlite-dir", str(tmp_path), "--json"])

    report = json.loads(capsys.readouterr().out)
    (sqlite,) = report["backends"]
    assert sqlite["backend"] == "sqlite" and sqlite["version"]
    assert sqlite["rows"]["tracker_calls"] == 150
    assert sqlite["rows"]["tracker_transfers"] > 0  # so that bytes per attempt are measured
    assert sqlite["outcomes"]["duplicate"] > 0  # the repeated deliveries were logged too
    for figure in ("per_call", "per_delivery", "per_transfer", "body_bytes", "history_bytes"):
        assert sqlite[figure] > 0, figure
    measured = {(relation["table"], relation["name"]) for relation in sqlite["relations"]}
    declared = {
        (table.name, str(index.name))
        for table in storage.Base.metadata.tables.values()
        for index in table.indexes
    }
    assert declared <= measured
    assert ("tracker_events", "uq_tracker_events_call_id_dedup_key") in measured
    for relation in sqlite["relations"]:
        assert relation["written"] > 0 and relation["packed"] > 0, relation
        assert 0 <= relation["entries"] <= sqlite["rows"][relation["table"]], relation
    assert all(size > 0 for size in sqlite["per_day"]["bytes"].values())
    writes = report["index_writes"]
    assert writes["deliveries"] == 20
    assert writes["with_every_index"] > 0
    assert set(writes["without"]) == {name for _table, name in declared}
    assert all(pages > 0 for pages in writes["without"].values())
    assert list(tmp_path.iterdir()) == []  # every database it made is gone


def test_growth_prints_its_tables_as_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    growth.main([*SMALL, "--no-index-writes", "--sqlite-dir", str(tmp_path)])

    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| sqlite 3."))
    numbers = [float(cell.replace(",", "")) for cell in re.findall(r"\| ([\d,.]+) ", row)]
    assert len(numbers) == 5 and all(number > 0 for number in numbers)
    assert "| uq_tracker_events_call_id_dedup_key |" in out
    assert "WAL pages" not in out
