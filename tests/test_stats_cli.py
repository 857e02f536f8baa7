"""`tracker stats` on the command line: JSON, the table, plots, and usage errors."""

from __future__ import annotations

import json
import struct
import sys
import xml.etree.ElementTree as ElementTree
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult

from tests.stats_support import (
    ACCOUNTS,
    T0,
    generated_bodies,
    load,
)
from tracker import Tracker
from tracker.cli import cli
from tracker.plotting import DPI, SIZE

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
