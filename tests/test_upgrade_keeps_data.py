"""Upgrading keeps what is stored: a database filled under revision 0002, when
only terminal events were applied, reaches head with every call, history entry and logged body
unchanged (the history entries moved into their calls' rows at revision 0005), and live events
then apply to its calls."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import MetaData, create_engine, select, text

from tests.conftest import fresh_database
from tests.test_concurrency import transfer_tree_bodies
from tests.workers import snapshot
from tracker import Outcome, Tracker
from tracker.schema import alembic_config
from tracker.storage import create_engine as tracker_engine
from tracker.testing import answer

# Revision 0002's tables, in foreign-key order; the history moved into the calls' rows at 0005.
TABLES = ("tracker_events", "tracker_calls", "tracker_transitions")
KEPT_TABLES = ("tracker_events", "tracker_calls")


def rows_of(url: str, tables: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """Every row of `tables`, by primary key order."""
    engine = create_engine(url)
    metadata = MetaData()
    metadata.reflect(engine, only=tables)
    with engine.connect() as connection:
        found = {
            name: [
                dict(row._mapping)
                for row in connection.execute(
                    select(metadata.tables[name]).order_by(
                        *metadata.tables[name].primary_key.columns
                    )
                )
            ]
            for name in tables
        }
    engine.dispose()
    return found


def transition_rows(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows revision 0002 kept in `tracker_transitions` for the histories of `calls`."""
    return [
        {
            "call_id": call["call_id"],
            "seq": seq,
            "source": source,
            "target": target,
            "at": datetime.fromisoformat(at).astimezone(UTC).replace(tzinfo=None),
            "event": event,
            "event_id": event_id,
        }
        for call in calls
        for seq, (source, target, at, event, event_id) in enumerate(
            json.loads(call["history"] or "[]")
        )
    ]


def test_a_database_filled_under_0002_keeps_every_record_at_head(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    bodies = [
        body
        for body in transfer_tree_bodies(random.Random(6), trees=25)
        if '"eventType": "disconnect"' in body or '"eventType": "transferDisconnect"' in body
    ]
    # What revision-0002 code wrote for these bodies: the same columns a head tracker writes
    # for terminal events, copied into a database migrated only to 0002.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    for reference_url in fresh_database(backend, reference_dir):
        with Tracker(reference_url) as reference:
            reference.upgrade()
            assert {reference.apply(body).outcome for body in bodies} == {Outcome.APPLIED}
            expected = snapshot(reference, set())
        written = rows_of(reference_url, KEPT_TABLES)
        written["tracker_transitions"] = transition_rows(written["tracker_calls"])
    old = tracker_engine(database_url)
    with old.begin() as connection:
        command.upgrade(alembic_config(connection), "0002")
    metadata = MetaData()
    metadata.reflect(old, only=TABLES)
    with old.begin() as connection:
        for name in TABLES:
            columns = set(metadata.tables[name].columns.keys())
            rows = [{k: v for k, v in row.items() if k in columns} for row in written[name]]
            connection.execute(metadata.tables[name].insert(), rows)
        if backend == "postgresql":  # rows copied with their ids leave the sequences behind
            for name in ("tracker_events", "tracker_transitions"):
                sequence = f"pg_get_serial_sequence('{name}', 'id')"
                connection.execute(text(f"SELECT setval({sequence}, max(id)) FROM {name}"))
    old.dispose()
    stored = rows_of(database_url, TABLES)

    with Tracker(database_url) as upgraded:
        assert upgraded.upgrade().from_revision == "0002"
        columns_0002 = {name: set(rows[0]) for name, rows in stored.items()}
        assert {
            name: [{k: v for k, v in row.items() if k in columns_0002[name]} for row in rows]
            for name, rows in rows_of(database_url, KEPT_TABLES).items()
        } == {name: stored[name] for name in KEPT_TABLES}
        # Each history step, moved into its call's row, kept its instant and its delivery.
        assert transition_rows(rows_of(database_url, KEPT_TABLES)["tracker_calls"]) == [
            {k: v for k, v in row.items() if k != "id"} for row in stored["tracker_transitions"]
        ]
        assert snapshot(upgraded, set()) == expected

        # And the migrated calls take live events: a late answer names the answered step.
        answered = next(
            call for call in upgraded.calls() if call.answered and call.parent_call_id is None
        )
        assert answered.start_time is not None and answered.answer_time is not None
        late = answer(
            answered.call_id,
            start=answered.start_time,
            ring=(answered.answer_time - answered.start_time).total_seconds(),
            direction=answered.direction,
            **{"from": answered.from_number, "to": answered.to_number},
        )
        assert upgraded.apply(late).outcome is Outcome.APPLIED
        call = upgraded.get_call(answered.call_id)
        assert call is not None and call.state == "disconnected"
        assert [step.event for step in call.history] == ["answer", "disconnect"]
