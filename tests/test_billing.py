"""Billing increments: every backend bills what integer arithmetic on the stored microseconds
says, in the export's `billable_seconds` and in the sums of `stats`."""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import BillingPolicy, Tracker
from tracker.cli import cli
from tracker.exporting import columns
from tracker.testing import answer, call_url, disconnect_between, new_call_id

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RING = timedelta(seconds=4)
SECOND = 1_000_000

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_accounts = itertools.count(4_000_000)


def reference(policy: tuple[int, int], talk: int | None) -> int:
    """The rule as docs/reporting.md states it, on whole microseconds (None: no talk time)."""
    first, increment = policy
    if talk is None or talk <= 0:
        return 0
    if talk <= first * SECOND:
        return first
    return first + -(-(talk - first * SECOND) // (increment * SECOND)) * increment


@dataclass(frozen=True)
class Planned:
    """One call of an example: `talk` microseconds; None with `answered` is a call talking now."""

    answered: bool
    talk: int | None


def text(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body_of(
    planned: Planned, account: str, start: datetime, to: str = "+15553334444"
) -> dict[str, Any]:
    call_id = new_call_id()
    identity: dict[str, Any] = {
        "accountId": account,
        "callUrl": call_url(call_id, account),
        "to": to,
    }
    answered_at = start + RING
    if not planned.answered:
        return disconnect_between(start, start + timedelta(seconds=20), call_id, **identity)
    if planned.talk is None:
        return answer(call_id, start=start, ring=RING.total_seconds(), **identity)
    end = answered_at + timedelta(microseconds=planned.talk)
    body = disconnect_between(start, end, call_id, answered=answered_at, **identity)
    body.update(answerTime=text(answered_at), endTime=text(end), eventTime=text(end))
    return body


@st.composite
def examples(draw: st.DrawFn) -> tuple[tuple[int, int], list[Planned]]:
    first = draw(st.sampled_from([60, 30, 6, 1]) | st.integers(1, 120))
    increment = draw(st.sampled_from([60, 6, 1]) | st.integers(1, 90))
    edges = [
        first * SECOND,
        first * SECOND + 1,
        first * SECOND - 1,
        SECOND - 1,
        1,
        0,
        (first + increment) * SECOND,
        (first + increment) * SECOND + 1,
        (first + 2 * increment) * SECOND - 1,
    ]
    talk = st.sampled_from(edges) | st.integers(0, 2 * 3600 * SECOND)
    call = st.one_of(
        talk.map(lambda microseconds: Planned(True, microseconds)),
        st.just(Planned(False, None)),
        st.just(Planned(True, None)),
    )
    return (first, increment), draw(st.lists(call, min_size=1, max_size=6))


def load(tracker: Tracker, account: str, planned: list[Planned]) -> None:
    bodies = [
        body_of(call, account, START + timedelta(minutes=index))
        for index, call in enumerate(planned)
    ]
    results = tracker.apply_many(bodies)
    assert all(result.outcome == "applied" for result in results), results


@SETTINGS
@given(example=examples())
def test_export_and_stats_bill_what_integer_arithmetic_says(
    tracker: Tracker, example: tuple[tuple[int, int], list[Planned]]
) -> None:
    """Talk of exactly FIRST, FIRST + 1 µs, below a second; unanswered calls; calls talking now."""
    policy, planned = example
    account = str(next(_accounts))
    load(tracker, account, planned)
    billing = f"{policy[0]}/{policy[1]}"

    rows = list(tracker.export(account_id=account, billing=billing))
    expected = [reference(policy, call.talk if call.answered else None) for call in planned]
    assert [row["billable_seconds"] for row in rows] == expected

    (figures,) = tracker.stats(account_id=account, billing=BillingPolicy(*policy), now=START)
    talked = [call for call in planned if call.answered and call.talk is not None]
    assert figures.billable_seconds == sum(expected)
    assert figures.answered_without_end == sum(
        1 for call in planned if call.answered and call.talk is None
    )
    if talked:
        assert figures.mean_billable_seconds == sum(expected) / len(talked)
    else:
        assert figures.mean_billable_seconds is None


def test_a_worked_example_of_30_6(tracker: Tracker) -> None:
    """30/6: 10 s bills 30, 30 s bills 30, 30.000001 s bills 36, 61 s bills 66."""
    account = str(next(_accounts))
    talks = [10 * SECOND, 30 * SECOND, 30 * SECOND + 1, 61 * SECOND]
    load(tracker, account, [Planned(True, talk) for talk in talks])
    rows = list(tracker.export(account_id=account, billing="30/6"))
    assert [row["billable_seconds"] for row in rows] == [30, 30, 36, 66]
    (figures,) = tracker.stats(account_id=account, billing="30/6")
    assert (figures.billable_seconds, figures.mean_billable_seconds) == (162, 40.5)


def test_without_a_policy_nothing_changes(tracker: Tracker) -> None:
    account = str(next(_accounts))
    load(tracker, account, [Planned(True, 5 * SECOND)])
    (row,) = tracker.export(account_id=account)
    assert "billable_seconds" not in row
    assert columns("leg")[-1].name != "billable_seconds"
    assert columns("conversation", billing="6/6")[-1].name == "billable_seconds"
    (figures,) = tracker.stats(account_id=account)
    assert figures.billable_seconds is None
    assert figures.mean_billable_seconds is None
    assert figures.answered_without_end is None


def test_conversations_bill_the_original_calls_own_talk(tracker: Tracker) -> None:
    account = str(next(_accounts))
    load(tracker, account, [Planned(True, 7 * SECOND)])
    (row,) = tracker.export(per="conversation", account_id=account, billing="6/6")
    assert list(row)[-1] == "billable_seconds"
    assert row["billable_seconds"] == 12


MALFORMED = ["", "60", "60/", "/6", "0/6", "60/0", "-6/6", "6.5/6", "6/6/6", "a/b", "86401/1"]


@pytest.mark.parametrize("policy", MALFORMED)
def test_a_malformed_policy_is_a_value_error_naming_the_form(tracker: Tracker, policy: str) -> None:
    with pytest.raises(ValueError, match="FIRST/NEXT"):
        tracker.stats(billing=policy)
    with pytest.raises(ValueError, match="FIRST/NEXT"):
        tracker.export(billing=policy)


@pytest.mark.parametrize(("first", "increment"), [(0, 6), (6, 0), (1.5, 6), (True, 6)])
def test_a_policy_of_other_than_whole_seconds_above_0_is_refused(
    first: object, increment: object
) -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        BillingPolicy(first, increment)  # type: ignore[arg-type]


def test_parse_reads_the_text_form() -> None:
    assert BillingPolicy.parse("30/6") == BillingPolicy(first=30, next=6)
    assert str(BillingPolicy(60, 60)) == "60/60"


# --- the command line ---------------------------------------------------------------------------


def run(*arguments: str) -> CliResult:
    return CliRunner().invoke(cli, list(arguments))


def url_of(tracker: Tracker) -> str:
    return tracker.engine.url.render_as_string(hide_password=False)


@pytest.mark.parametrize("command", ["stats", "export"])
@pytest.mark.parametrize("policy", ["60", "0/6", "6/x"])
def test_cli_refuses_a_malformed_policy_with_exit_2(
    tracker: Tracker, command: str, policy: str
) -> None:
    result = run("--db", url_of(tracker), command, "--billing", policy)
    assert result.exit_code == 2, result.output
    assert "FIRST/NEXT" in result.output


def test_cli_export_writes_the_billable_seconds_last(tracker: Tracker) -> None:
    account = str(next(_accounts))
    load(tracker, account, [Planned(True, 61 * SECOND), Planned(False, None)])
    result = run("--db", url_of(tracker), "export", "--account", account, "--billing", "60/60")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0][-1] == "billable_seconds"
    assert [row[-1] for row in rows[1:]] == ["120", "0"]


def test_cli_stats_json_gives_the_sum_and_the_mean(tracker: Tracker) -> None:
    account = str(next(_accounts))
    load(tracker, account, [Planned(True, 61 * SECOND), Planned(True, None)])
    arguments = ("--db", url_of(tracker), "stats", "--account", account, "--billing", "60/60")
    result = run(*arguments, "--json")
    assert result.exit_code == 0, result.output
    (figures,) = json.loads(result.output)
    assert figures["billable_seconds"] == 120
    assert figures["mean_billable_seconds"] == 120.0
    assert figures["answered_without_end"] == 1
    table = run(*arguments)
    assert table.exit_code == 0, table.output
    assert "no end yet" in table.output
