"""Revision 0010 fills `end_source` for the calls already stored, from what ended them: a call
the sweep ended `sweep`, every other ended call `callback`, a live one nothing. Checked by
taking a database back to 0009 (the column dropped) and up again, on every backend."""

from __future__ import annotations

from datetime import timedelta

from alembic import command

from tracker import Tracker
from tracker.schema import alembic_config
from tracker.testing import BASE_TIME, disconnect, initiate, new_call_id


def test_the_upgrade_to_0010_says_where_each_stored_end_came_from(database_url: str) -> None:
    ended, swept, live = new_call_id(), new_call_id(), new_call_id()
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        tracker.apply_many(
            [
                initiate(ended, start=BASE_TIME),
                disconnect(ended, start=BASE_TIME, direction="inbound"),
                initiate(swept, start=BASE_TIME),
            ]
        )
        tracker.sweep(timedelta(hours=1), now=BASE_TIME + timedelta(days=1))
        tracker.apply(initiate(live, start=BASE_TIME + timedelta(days=1)))
        before = {c: tracker.get_call(c) for c in (ended, swept, live)}
        with tracker.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0009")

    with Tracker(database_url) as tracker:
        assert tracker.upgrade().from_revision == "0009"
        after = {c: tracker.get_call(c) for c in (ended, swept, live)}
    assert {c: call.end_source for c, call in after.items() if call} == {
        ended: "callback",
        swept: "sweep",
        live: None,
    }
    assert after == before
