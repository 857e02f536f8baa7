"""`tracker sweep --resolve bandwidth` through the real SDK against the fake Bandwidth API: the
outcomes in its JSON, and configuration that is missing or refused (exit 2, nothing ended)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from tracker import Tracker
from tracker.cli import cli
from tracker.testing import FakeBandwidth, call_state_from, disconnect, initiate, new_call_id

# Bandwidth keeps calls 7 days: the calls here started yesterday, so the resolver asks.
START = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)


def live_calls(tracker: Tracker, count: int) -> list[str]:
    call_ids = [new_call_id() for _ in range(count)]
    tracker.apply_many([initiate(call_id, start=START) for call_id in call_ids])
    return call_ids


def sweep(url: str, *options: str) -> tuple[int, str]:
    done = CliRunner().invoke(
        cli, ["--db", url, "sweep", "--older-than", "4h", "--resolve", "bandwidth", *options]
    )
    return done.exit_code, done.output


def test_the_sweep_asks_bandwidth_and_says_what_became_of_each_call(
    tracker: Tracker, database_url: str, bandwidth_api: FakeBandwidth
) -> None:
    ended, going, unknown = live_calls(tracker, 3)
    bandwidth_api.put(call_state_from(disconnect(ended, start=START, cause="busy", ring=None)))
    bandwidth_api.put(call_state_from(initiate(going, start=START)))

    code, output = sweep(database_url, "--json")

    assert code == 0, output
    report = json.loads(output)
    assert (report["resolved"], report["kept"], report["expired"], report["failed"]) == (
        [ended],
        [going],
        [unknown],
        [],
    )
    call = tracker.get_call(ended)
    assert call is not None and (call.end_source, call.cause) == ("provider", "busy")


def test_a_failed_look_up_is_reported_and_the_call_left_live(
    tracker: Tracker, database_url: str, bandwidth_api: FakeBandwidth
) -> None:
    (call_id,) = live_calls(tracker, 1)
    bandwidth_api.down()

    code, output = sweep(database_url)

    assert code == 0, output
    assert f"failed: {call_id}" in output and "could not answer for 1" in output
    call = tracker.get_call(call_id)
    assert call is not None and call.live


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        (
            ("BANDWIDTH_USERNAME", "BANDWIDTH_PASSWORD"),
            ("BANDWIDTH_USERNAME", "BANDWIDTH_PASSWORD", "BANDWIDTH_CLIENT_ID"),
        ),
        (("BANDWIDTH_PASSWORD",), ("BANDWIDTH_USERNAME", "BANDWIDTH_PASSWORD")),
    ],
)
def test_missing_credentials_exit_2_naming_the_variables_and_end_nothing(
    sqlite_tracker: Tracker,
    bandwidth_api: FakeBandwidth,
    monkeypatch: pytest.MonkeyPatch,
    unset: tuple[str, ...],
    named: tuple[str, ...],
) -> None:
    (call_id,) = live_calls(sqlite_tracker, 1)
    for variable in unset:
        monkeypatch.delenv(variable)

    code, output = sweep(str(sqlite_tracker.engine.url))

    assert code == 2, output
    for variable in named:
        assert variable in output
    assert bandwidth_api.requests == []
    call = sqlite_tracker.get_call(call_id)
    assert call is not None and call.live


def test_refused_credentials_exit_2_end_nothing_and_show_no_secret(
    sqlite_tracker: Tracker, bandwidth_api: FakeBandwidth, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_ids = live_calls(sqlite_tracker, 3)
    monkeypatch.setenv("BANDWIDTH_PASSWORD", "not-the-password-4711")

    code, output = sweep(str(sqlite_tracker.engine.url))

    assert code == 2, output
    assert "BANDWIDTH_PASSWORD" in output and "not-the-password-4711" not in output
    assert all(sqlite_tracker.get_call(c).live for c in call_ids)  # type: ignore[union-attr]
