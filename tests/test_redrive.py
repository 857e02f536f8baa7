"""Re-drive (SPEC section 9): logged deliveries applied again, each new outcome a new entry.

With the lifecycle's rules as they are, a delivery refused by the data it met is refused again
by the same data (the records do not depend on the order deliveries arrive in), so the case
where a re-drive changes the outcome is the one the SPEC names first: a release that accepts
more. The tests play that release by relaxing one rule in this process.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from tests.workers import Crew, apply_many_rounds, print_figures, record_figure
from tracker import (
    Event,
    InvalidReason,
    Outcome,
    Reason,
    RedriveReport,
    Tracker,
    housekeeping,
    lifecycle,
)
from tracker.cli import cli
from tracker.parsing import MAX_BODY_BYTES
from tracker.testing import ACCOUNT, answer, call_url, disconnect, new_call_id, realistic_bodies

OTHER_ACCOUNT = "9900112"


def sub_account_disconnect(call_id: str | None = None) -> dict[str, Any]:
    """A `disconnect` whose callUrl names another account than its accountId: rejected
    (`call_url_account_mismatch`) until a release accepts it."""
    call_id = call_id or new_call_id()
    return disconnect(call_id, callUrl=call_url(call_id, OTHER_ACCOUNT))


def conflicting_ends(tracker: Tracker) -> tuple[str, dict[str, Any]]:
    """A call that ended, and a second terminal event of it that disagrees: rejected for good."""
    first = disconnect(cause="hangup")
    tracker.apply(first)
    return first["callId"], dict(first, cause="busy", eventTime="2030-01-01T00:00:00Z")


def accept_sub_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Play the release after an upgrade: a callUrl naming another account is no longer
    refused."""
    monkeypatch.setattr(lifecycle, "check_call_url", lambda _event, _url: None)


def entries(tracker: Tracker, outcome: str | None = None) -> list[Event]:
    return tracker.events(outcome=outcome)


# --- what a re-drive does ------------------------------------------------------------------------


def test_a_rejection_a_new_release_accepts_is_applied_and_the_old_entry_stays(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = sub_account_disconnect()
    refused = tracker.apply(body)
    assert refused.reason == Reason.CALL_URL_ACCOUNT_MISMATCH
    (original,) = entries(tracker)
    assert tracker.get_call(body["callId"]) is None

    accept_sub_accounts(monkeypatch)
    report = tracker.redrive("rejected")

    assert report == RedriveReport(
        redriven=1, outcomes={(Outcome.APPLIED, None): 1}, repeats=0, too_large=0
    )
    assert report.applied == 1
    kept, new = entries(tracker)
    assert kept == original
    assert (new.outcome, new.reason, new.body, new.call_id) == (
        Outcome.APPLIED,
        None,
        original.body,
        body["callId"],
    )
    assert new.id > original.id and new.received_at >= original.received_at
    call = tracker.get_call(body["callId"])
    assert call is not None
    assert (call.state, call.account_id) == ("disconnected", ACCOUNT)
    assert [step.event_id for step in call.history] == [new.id, new.id]


def test_a_delivery_still_refused_gets_a_new_rejected_entry(tracker: Tracker) -> None:
    call_id, second = conflicting_ends(tracker)
    tracker.apply(second)
    before = entries(tracker)
    call_before = tracker.get_call(call_id)

    report = tracker.redrive("rejected")

    assert report.redriven == 1
    assert report.outcomes == {(Outcome.REJECTED, Reason.CONFLICTING_TERMINAL_EVENT.value): 1}
    after = entries(tracker)
    assert after[:-1] == before
    assert (after[-1].outcome, after[-1].reason, after[-1].body) == (
        Outcome.REJECTED,
        Reason.CONFLICTING_TERMINAL_EVENT,
        before[-1].body,
    )
    assert tracker.get_call(call_id) == call_before


def test_a_second_run_applies_each_body_once_more_however_many_entries_hold_it(
    tracker: Tracker,
) -> None:
    """The first run logs a new rejected entry beside the original; the second finds both with
    the same body and applies it once, so each run adds one entry per body still refused,
    never twice as many as the run before."""
    _call_id, second = conflicting_ends(tracker)
    tracker.apply(second)
    tracker.apply(second)  # Bandwidth's retry of the same delivery
    assert len(entries(tracker, "rejected")) == 2

    first = tracker.redrive("rejected")
    again = tracker.redrive("rejected")
    third = tracker.redrive("rejected")

    assert (first.redriven, first.repeats) == (1, 1)
    assert (again.redriven, again.repeats) == (1, 2)
    assert (third.redriven, third.repeats) == (1, 3)
    assert len(entries(tracker, "rejected")) == 5


@pytest.mark.parametrize(("memory", "redriven", "repeats"), [(3, 3, 1), (2, 4, 0)])
def test_the_bodies_a_run_remembers_are_bounded_and_every_entry_is_still_redriven(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch, memory: int, redriven: int, repeats: int
) -> None:
    """A log A, B, C, A (the last a retry): remembering three bodies, the retry is a repeat;
    remembering two, A was forgotten when C came, so it is applied again and refused again.
    Either way every entry is read, a page at a time, and none is lost."""
    refused = []
    for _ in range(3):
        _call_id, second = conflicting_ends(tracker)
        tracker.apply(second)
        refused.append(second)
    tracker.apply(refused[0])
    monkeypatch.setattr(housekeeping, "REDRIVE_MEMORY", memory)

    report = tracker.redrive("rejected", batch_size=1)

    assert (report.redriven, report.repeats) == (redriven, repeats)
    assert report.outcomes == {(Outcome.REJECTED, Reason.CONFLICTING_TERMINAL_EVENT): redriven}
    new_entries = entries(tracker, "rejected")[4:]
    expected = [refused[0], refused[1], refused[2], refused[0]][:redriven]
    assert [json.loads(entry.body) for entry in new_entries] == expected


def test_entries_logged_while_it_runs_are_left_for_the_next_run(tracker: Tracker) -> None:
    """Pages are read after one another; the new entries of the first page are not in the
    second, so a page size of one still re-drives each entry once."""
    for _ in range(3):
        _call_id, second = conflicting_ends(tracker)
        tracker.apply(second)

    report = tracker.redrive("rejected", batch_size=1)

    assert (report.redriven, report.repeats) == (3, 0)
    assert len(entries(tracker, "rejected")) == 6


def test_reason_and_call_choose_the_entries(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    conflicting_call, second = conflicting_ends(tracker)
    tracker.apply(second)
    sub_accounts = [sub_account_disconnect() for _ in range(2)]
    tracker.apply_many(sub_accounts)
    accept_sub_accounts(monkeypatch)

    by_call = tracker.redrive("rejected", call_id=sub_accounts[0]["callId"])
    assert by_call.outcomes == {(Outcome.APPLIED, None): 1}
    assert tracker.get_call(sub_accounts[1]["callId"]) is None

    by_reason = tracker.redrive("rejected", reason=Reason.CALL_URL_ACCOUNT_MISMATCH)
    # Both sub-account entries match; the one applied already comes back a duplicate.
    assert by_reason.outcomes == {(Outcome.APPLIED, None): 1, (Outcome.DUPLICATE, None): 1}
    assert tracker.get_call(sub_accounts[1]["callId"]) is not None
    assert [e.call_id for e in entries(tracker, "rejected")].count(conflicting_call) == 1

    nothing = tracker.redrive("rejected", reason="no_such_reason")
    assert nothing == RedriveReport(redriven=0, outcomes={}, repeats=0, too_large=0)


def test_invalid_bodies_stay_invalid_and_too_large_ones_are_skipped(tracker: Tracker) -> None:
    too_large = json.dumps(disconnect(tag="x" * MAX_BODY_BYTES)).encode()
    bodies: list[bytes | str] = [
        b"\xff not utf-8",
        "{not json",
        json.dumps({"eventType": "disconnect"}),
    ]
    tracker.apply_many([*bodies, too_large])
    before = entries(tracker)
    assert [entry.reason for entry in before] == [
        InvalidReason.NOT_UTF8,
        InvalidReason.NOT_JSON,
        InvalidReason.MISSING_FIELD,
        InvalidReason.TOO_LARGE,
    ]

    report = tracker.redrive("invalid")

    assert (report.redriven, report.too_large, report.repeats) == (3, 1, 0)
    assert report.outcomes == {
        (Outcome.INVALID, reason.value): 1
        for reason in (InvalidReason.NOT_UTF8, InvalidReason.NOT_JSON, InvalidReason.MISSING_FIELD)
    }
    after = entries(tracker)
    assert after[:4] == before
    assert [(e.body, e.reason) for e in after[4:]] == [(e.body, e.reason) for e in before[:3]]

    only_too_large = tracker.redrive("invalid", reason=InvalidReason.TOO_LARGE)
    assert only_too_large == RedriveReport(redriven=0, outcomes={}, repeats=0, too_large=1)
    assert len(entries(tracker)) == 7


@pytest.mark.parametrize("outcome", ["applied", "duplicate", "ignored", "rejectd"])
def test_only_rejected_and_invalid_deliveries_can_be_redriven(
    sqlite_tracker: Tracker, outcome: str
) -> None:
    with pytest.raises(ValueError, match="'rejected' or 'invalid'"):
        sqlite_tracker.redrive(outcome)


def test_a_batch_size_below_one_is_refused(sqlite_tracker: Tracker) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        sqlite_tracker.redrive("rejected", batch_size=0)


# --- the command line ---------------------------------------------------------------------------


def run(*args: str) -> Any:
    return CliRunner().invoke(
        cli, list(args), env={"COLUMNS": None, "FORCE_TERMINAL": None, "TTY_COMPATIBLE": None}
    )


def test_the_command_prints_the_new_outcomes(sqlite_tracker: Tracker) -> None:
    db = sqlite_tracker.engine.url.render_as_string(hide_password=False)
    call_id, second = conflicting_ends(sqlite_tracker)
    sqlite_tracker.apply_many([second, second, b"{oops"])

    shown = run("--db", db, "redrive", "--outcome", "rejected", "--call", call_id, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {
        "redriven": 1,
        "outcomes": [{"outcome": "rejected", "reason": "conflicting_terminal_event", "count": 1}],
        "repeats": 1,
        "too_large": 0,
    }

    table = run("--db", db, "redrive", "--outcome", "invalid", "--reason", "not_json")
    assert table.exit_code == 0, table.output
    assert "invalid" in table.output and "not_json" in table.output
    assert "1 re-driven" in table.output

    refused = run("--db", db, "redrive", "--outcome", "applied")
    assert refused.exit_code == 2
    assert "'applied' is not one of 'rejected', 'invalid'" in refused.output


# --- while other processes apply ---------------------------------------------------------------

WORKERS = 2
REFUSED_CALLS = 120
WORKER_BODIES = 500
WORKER_BATCH = 10


@pytest.mark.slow
def test_a_redrive_while_other_processes_apply_loses_nothing(
    backend: str, tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers run the old release and apply a realistic stream plus an `answer` of each
    refused call, racing the re-drive (the new release, in this process) for the same rows."""
    url = tracker.engine.url.render_as_string(hide_password=False)
    refused = [sub_account_disconnect() for _ in range(REFUSED_CALLS)]
    tracker.apply_many(refused)
    originals = entries(tracker)
    assert {entry.reason for entry in originals} == {Reason.CALL_URL_ACCOUNT_MISMATCH}

    answers = [json.dumps(answer(body["callId"])) for body in refused]
    stream = [body.decode() for body in realistic_bodies(WORKER_BODIES, seed=7)]
    work = answers + stream
    random.Random(3).shuffle(work)
    shares = [work[worker::WORKERS] for worker in range(WORKERS)]
    jobs = [(url, [_batches(share, WORKER_BATCH)]) for share in shares]

    accept_sub_accounts(monkeypatch)
    with Crew(apply_many_rounds, jobs) as crew:
        crew.wait_for_start()
        started = time.perf_counter()
        report = tracker.redrive("rejected", batch_size=5)
        reported = crew.collect()
        seconds = time.perf_counter() - started
    print_figures(
        f"{backend} redrive of {REFUSED_CALLS} beside {WORKERS} workers",
        workers=WORKERS + 1,
        deliveries=len(work) + REFUSED_CALLS,
        seconds=seconds,
    )

    outcomes = [outcome for worker in reported for outcome in worker[0]]
    assert [outcome for outcome in outcomes if outcome.startswith("raised")] == []
    assert report == RedriveReport(
        redriven=REFUSED_CALLS,
        outcomes={(Outcome.APPLIED, None): REFUSED_CALLS},
        repeats=0,
        too_large=0,
    )
    logged = entries(tracker)
    assert len(logged) == len(originals) + len(work) + REFUSED_CALLS
    assert logged[: len(originals)] == originals
    refused_bodies = {entry.body for entry in originals}
    redriven = [i for i, e in enumerate(logged) if i >= len(originals) and e.body in refused_bodies]
    interleaved = redriven[-1] - redriven[0] + 1 - len(redriven)
    record_figure(f"[{backend} redrive] worker deliveries logged between its own: {interleaved}")
    if backend != "sqlite":
        # SQLite's busy handler is not a queue: a writer that keeps writing may starve the
        # others, so there the pages may all come before or after the workers'.
        assert interleaved > 0, "the workers' deliveries should have come between the re-drive's"
    for body in refused:
        call = tracker.get_call(body["callId"])
        assert call is not None
        assert (call.state, call.answered, call.account_id) == ("disconnected", True, ACCOUNT)


def _batches(bodies: Sequence[str], size: int) -> list[list[str]]:
    return [list(bodies[start : start + size]) for start in range(0, len(bodies), size)]
