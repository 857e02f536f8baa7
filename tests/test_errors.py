"""Kinds of database errors are kept apart: only a lost race is retried (issue: every
IntegrityError was once retried for about 12 s, then reported as a lost race, its cause dropped).
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tracker import Outcome, StorageError, Tracker
from tracker.testing import disconnect

# A constraint the tracker's schema does not have, refusing calls whose cause is "boom": a
# stand-in for a constraint bug, which no retry can mend.
REFUSE_BOOM = {
    "sqlite": (
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON tracker_calls WHEN NEW.cause = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom is refused'); END"
    ),
    "postgresql": "ALTER TABLE tracker_calls ADD CONSTRAINT refuse_boom CHECK (cause <> 'boom')",
    "mariadb": "ALTER TABLE tracker_calls ADD CONSTRAINT refuse_boom CHECK (cause <> 'boom')",
}


def test_a_broken_constraint_that_is_no_race_fails_at_once_with_its_cause(
    tracker: Tracker, backend: str
) -> None:
    with tracker.engine.begin() as connection:
        connection.execute(text(REFUSE_BOOM[backend]))
    started = time.monotonic()

    with pytest.raises(StorageError) as raised:
        tracker.apply(disconnect(cause="boom"))

    assert time.monotonic() - started < 2.0
    assert isinstance(raised.value.__cause__, DBAPIError)
    assert "boom" in str(raised.value)
    assert tracker.events() == []
    assert tracker.calls() == []
    assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
