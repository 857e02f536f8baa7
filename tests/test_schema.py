"""The schema comes only from the migrations, ships in the wheel, and is checked before use."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from tests.conftest import fresh_database
from tracker import Outcome, SchemaError, Tracker
from tracker.schema import alembic_config, head_revision
from tracker.storage import VERSION_TABLE
from tracker.testing import disconnect

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"tracker_calls", "tracker_events", "tracker_transfers", "tracker_leases"}


def tracker_tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {name for name in inspect(engine).get_table_names() if name.startswith("tracker_")}
    finally:
        engine.dispose()


def test_models_and_migrations_do_not_drift(tracker: Tracker) -> None:
    with tracker.engine.connect() as connection:
        command.check(alembic_config(connection))  # raises when autogenerate finds a difference


def test_every_migration_downgrades_and_upgrades_again(database_url: str) -> None:
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        with tracker.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert tracker_tables(database_url) == {VERSION_TABLE}
        tracker.upgrade()
        assert tracker_tables(database_url) == TABLES | {VERSION_TABLE}
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


def test_library_keeps_its_own_version_table_beside_the_hosts(database_url: str) -> None:
    host = create_engine(database_url)
    with host.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('host_rev_42')"))
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
    with host.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("host_rev_42",)
        ]
        assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
            (head_revision(),)
        ]
    host.dispose()


def test_unmigrated_database_is_refused_with_the_command_that_fixes_it(database_url: str) -> None:
    with Tracker(database_url) as tracker, pytest.raises(SchemaError) as refusal:
        tracker.apply(disconnect())
    assert "tracker" in str(refusal.value) and "upgrade" in str(refusal.value)
    assert "no tracker schema" in str(refusal.value)


def test_database_behind_is_refused_until_upgraded(database_url: str) -> None:
    with Tracker(database_url) as tracker:
        with tracker.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
        with pytest.raises(SchemaError, match=r"behind .*upgrade"):
            tracker.get_call("c-1")
        tracker.upgrade()
        assert tracker.get_call("c-1") is None


def test_database_from_a_newer_tracker_is_refused(database_url: str) -> None:
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        with tracker.engine.begin() as connection:
            connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff'"))
    with Tracker(database_url) as tracker, pytest.raises(SchemaError, match="newer tracker"):
        tracker.events()


def test_upgrade_at_head_changes_nothing(tracker: Tracker) -> None:
    tracker.apply(disconnect())
    before = tracker.events()
    tracker.upgrade()
    assert tracker.events() == before


def test_alembic_command_line_reads_tracker_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    environment = dict(os.environ, TRACKER_DATABASE_URL=url)
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=environment,
        check=True,
        capture_output=True,
    )
    checked = subprocess.run(
        [sys.executable, "-m", "alembic", "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    with Tracker(url) as tracker:
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


def test_sqlite_is_durable_by_default(tmp_path: Path) -> None:
    for durable, synchronous in ((True, 2), (False, 1)):
        url = f"sqlite:///{tmp_path / f'{durable}.db'}"
        with Tracker(url, durable=durable) as tracker, tracker.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous


def test_postgresql_schema_keeps_the_trackers_tables_apart(tmp_path: Path) -> None:
    for url in fresh_database("postgresql", tmp_path):
        with Tracker(url, schema="call_tracking") as tracker:
            tracker.upgrade()
            tracker.upgrade()
            body = disconnect()
            assert tracker.apply(body).outcome is Outcome.APPLIED
            assert tracker.get_call(body["callId"]) is not None
        engine = create_engine(url)
        inspector = inspect(engine)
        assert set(inspector.get_table_names(schema="call_tracking")) == TABLES | {VERSION_TABLE}
        assert not set(inspector.get_table_names(schema="public")) & TABLES
        engine.dispose()


@pytest.mark.slow
def test_built_wheel_carries_its_migrations(tmp_path: Path) -> None:
    """Install the built wheel in a fresh environment and migrate from another directory."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("tracker-*.whl")
    environment = tmp_path / "env"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    (site_packages,) = environment.glob("lib/python*/site-packages")
    # The dependencies come from the running environment (without its .pth files, so an
    # editable install of the checkout stays invisible); the tracker only from the wheel.
    (site_packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site_packages),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import json, tracker, pathlib\n"
        "from tracker import Tracker\n"
        "from tracker.schema import migrations_dir\n"
        "assert pathlib.Path(tracker.__file__).is_relative_to(pathlib.Path.cwd().parent / 'env')\n"
        "assert migrations_dir() == pathlib.Path(tracker.__file__).parent / 'migrations'\n"
        "t = Tracker('sqlite:///wheel.db'); t.upgrade()\n"
        "print(t.apply(json.dumps({'eventType': 'disconnect', 'callId': 'c-1',\n"
        "  'startTime': '2026-01-01T00:00:00Z', 'endTime': '2026-01-01T00:01:00Z',\n"
        "  'cause': 'hangup'})).outcome)\n"
    )
    ran = subprocess.run(
        [str(python), "-c", script],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "applied"
