"""Rules with one home each: how an instant is written as text and read without a zone, and
which states are live."""

from __future__ import annotations

from dataclasses import MISSING, fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tracker import LIVE_STATES, STATES, instants, lifecycle, records
from tracker.records import Call

TOKYO = timezone(timedelta(hours=9))


def test_an_instant_is_written_in_utc_with_z() -> None:
    at = datetime(2026, 3, 17, 23, 0, 0, 120_000, tzinfo=TOKYO)
    assert instants.text(at) == "2026-03-17T14:00:00.120000Z"
    assert instants.text(at, "milliseconds") == "2026-03-17T14:00:00.120Z"
    whole = datetime(2026, 3, 17, 14, tzinfo=UTC)
    assert instants.text(whole) == "2026-03-17T14:00:00Z"
    assert instants.text(whole, "microseconds") == "2026-03-17T14:00:00.000000Z"


def test_a_naive_datetime_is_never_written_as_an_instant() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        instants.text(datetime(2026, 3, 17, 14))


def test_a_time_without_a_zone_is_read_as_utc() -> None:
    assert instants.as_utc(datetime(2026, 3, 17, 14)) == datetime(2026, 3, 17, 14, tzinfo=UTC)
    converted = instants.as_utc(datetime(2026, 3, 17, 23, tzinfo=TOKYO))
    assert (converted, converted.tzinfo) == (datetime(2026, 3, 17, 14, tzinfo=UTC), UTC)


def _call(state: str) -> Call:
    required: dict[str, Any] = {
        field.name: None
        for field in fields(Call)
        if field.default is MISSING and field.default_factory is MISSING
    }
    return Call(**{**required, "call_id": "c-1", "legs": (), "state": state})


def test_live_has_one_definition() -> None:
    assert lifecycle.LIVE_STATES is records.LIVE_STATES is LIVE_STATES
    assert lifecycle.STATES is STATES
    for state in STATES:
        assert _call(state).live is (state in LIVE_STATES)
    # A state outside the lifecycle is no live one.
    assert not _call("unknown").live
