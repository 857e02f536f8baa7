"""Reconcile compares Bandwidth's list of a window with the tracker's calls, call by call, and
with `apply=True` applies Bandwidth's facts to the missing and live_here calls only."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import Result as ClickResult

from tracker import (
    ProviderCall,
    ProviderError,
    ReconcilePage,
    ReconcileStatus,
    Tracker,
)
from tracker._fake_bandwidth import FakeBandwidth, call_state, call_state_from
from tracker.bandwidth import BandwidthClient, BandwidthSettings
from tracker.cli import cli
from tracker.provider import read_call_state
from tracker.reconciling import call_state_document
from tracker.testing import (
    ACCOUNT,
    BASE_TIME,
    disconnect,
    initiate,
    new_call_id,
    stamp,
)

SINCE = BASE_TIME - timedelta(hours=1)
UNTIL = BASE_TIME + timedelta(hours=1)
NOW = BASE_TIME + timedelta(days=1)
ANSWERED = BASE_TIME + timedelta(seconds=3)
ENDED = BASE_TIME + timedelta(seconds=63)


class Listed:
    """Bandwidth's list of calls, `page_size` a page: what `Tracker.reconcile` asks of a
    `CallLister`, with the windows it was asked for."""

    def __init__(self, calls: Sequence[ProviderCall], page_size: int = 1000) -> None:
        self.calls = list(calls)
        self.page_size = page_size
        self.asked: list[tuple[str, datetime, datetime]] = []

    def list_calls(
        self, account_id: str, since: datetime, until: datetime
    ) -> Iterator[list[ProviderCall]]:
        self.asked.append((account_id, since, until))
        for start in range(0, len(self.calls), self.page_size):
            yield self.calls[start : start + self.page_size]


def there(
    call_id: str,
    *,
    state: str = "disconnected",
    start: datetime = BASE_TIME,
    answered: datetime | None = ANSWERED,
    ended: datetime | None = ENDED,
    cause: str | None = "hangup",
) -> ProviderCall:
    """Bandwidth's record of a call that ran as `disconnect(call_id)` says, unless told."""
    if state != "disconnected":
        ended = cause = None
    return ProviderCall(
        call_id=call_id,
        state=state,
        account_id=ACCOUNT,
        direction="outbound",
        from_number="+15551112222",
        to_number="+15553334444",
        start_time=start,
        answer_time=answered,
        end_time=ended,
        last_update=ended or answered or start,
        cause=cause,
    )


def reconciled(
    tracker: Tracker, listed: Listed, **options: Any
) -> tuple[Any, dict[str, ReconcileStatus], list[ReconcilePage]]:
    """The report, the status of each call that does not agree, and the pages handed out."""
    pages: list[ReconcilePage] = []
    options.setdefault("now", NOW)
    report = tracker.reconcile(
        SINCE, UNTIL, account_id=ACCOUNT, client=listed, on_page=pages.append, **options
    )
    statuses = {call.call_id: call.status for page in pages for call in page.calls}
    return report, statuses, pages


def counts(**nonzero: int) -> dict[str, int]:
    return {status.value: nonzero.get(status.value, 0) for status in ReconcileStatus}


def test_every_status_is_told_apart(tracker: Tracker) -> None:
    """One call of each kind gets its own status; agreeing calls are counted, not handed out."""
    ended, live, missing, live_here, differs, unknown = (new_call_id() for _ in range(6))
    tracker.apply_many(
        [
            disconnect(ended),
            initiate(live),
            initiate(live_here),
            disconnect(differs),
            disconnect(unknown),
        ]
    )
    listed = Listed(
        [
            there(ended),
            there(live, state="active", answered=None),
            there(missing),
            there(live_here),
            there(differs, cause="busy"),
        ]
    )
    report, statuses, pages = reconciled(tracker, listed)
    assert statuses == {
        missing: ReconcileStatus.MISSING,
        live_here: ReconcileStatus.LIVE_HERE,
        differs: ReconcileStatus.DIFFERS,
        unknown: ReconcileStatus.UNKNOWN_THERE,
    }
    assert report.counts == counts(agrees=2, missing=1, live_here=1, differs=1, unknown_there=1)
    assert listed.asked == [(ACCOUNT, SINCE, UNTIL)]
    (found,) = (call for page in pages for call in page.calls if call.call_id == differs)
    assert found.differing == ("cause",)
    assert found.here is not None and found.here.cause == "hangup"
    assert found.there is not None and found.there.cause == "busy"
    assert (report.pages, report.applying, report.applied) == (1, False, 0)
    assert asdict(report)["counts"] == report.counts


def test_instants_are_compared_to_the_millisecond(tracker: Tracker) -> None:
    """Bandwidth writes milliseconds: microseconds beyond them are precision, not a
    difference; another millisecond is one, of the end time or the answer time."""
    same, end_later, answer_later = (new_call_id() for _ in range(3))
    precise_end = ENDED.replace(microsecond=456_789)
    for call_id in (same, end_later, answer_later):
        tracker.apply(disconnect(call_id, endTime=precise_end.isoformat()))
    at_millisecond = precise_end.replace(microsecond=456_000)
    listed = Listed(
        [
            there(same, ended=at_millisecond),
            there(end_later, ended=at_millisecond + timedelta(milliseconds=1)),
            there(
                answer_later,
                ended=at_millisecond,
                answered=ANSWERED + timedelta(milliseconds=1),
            ),
        ]
    )
    report, _, pages = reconciled(tracker, listed)
    differing = {call.call_id: call.differing for page in pages for call in page.calls}
    assert differing == {end_later: ("end_time",), answer_later: ("answer_time",)}
    assert report.counts == counts(agrees=1, differs=2)


def test_a_call_bandwidth_ended_without_a_cause_agrees_once_applied(tracker: Tracker) -> None:
    """Bandwidth's record may lack `disconnectCause`: applied, the call ends with cause
    `unknown`, and the next run finds it agreeing, not differing."""
    call_id = new_call_id()
    tracker.apply(initiate(call_id))
    listed = Listed([there(call_id, cause=None)])
    report, _, _ = reconciled(tracker, listed, apply=True)
    assert (report.counts, report.applied) == (counts(live_here=1), 1)
    again, _, _ = reconciled(tracker, listed, apply=True)
    assert again.counts == counts(agrees=1)


def test_a_call_active_there_and_ended_here_differs_unless_it_ended_after_the_page(
    tracker: Tracker,
) -> None:
    """Active there, ended here before Bandwidth's page was asked for: one side is wrong.
    Ended here after it: the call ended while the page was on its way, so both are right."""
    ended_before, ended_after = new_call_id(), new_call_id()
    tracker.apply(disconnect(ended_before))
    late_end = NOW + timedelta(seconds=5)
    tracker.apply(disconnect(ended_after, endTime=stamp(late_end)))
    listed = Listed([there(call_id, state="active") for call_id in (ended_before, ended_after)])
    report, statuses, pages = reconciled(tracker, listed)
    assert statuses == {ended_before: ReconcileStatus.DIFFERS}
    assert [call.differing for page in pages for call in page.calls] == [("state",)]
    assert report.counts == counts(agrees=1, differs=1)


def test_a_swept_call_bandwidth_saw_end_is_live_here(tracker: Tracker) -> None:
    """The sweep only guessed that the call ended: Bandwidth knows how, and its facts apply."""
    call_id = new_call_id()
    tracker.apply(initiate(call_id))
    assert tracker.sweep(timedelta(hours=4), now=NOW).expired == (call_id,)
    _, statuses, _ = reconciled(tracker, Listed([there(call_id)]))
    assert statuses == {call_id: ReconcileStatus.LIVE_HERE}


def test_a_call_active_there_and_missing_here_is_missing_with_no_end_to_apply(
    sqlite_tracker: Tracker,
) -> None:
    """A call the tracker never heard of is missing whether or not it has ended there; while
    it is still going there, `apply` has no end to give it, and writes nothing."""
    call_id = new_call_id()
    listed = Listed([there(call_id, state="active", answered=None)])
    report, statuses, pages = reconciled(sqlite_tracker, listed, apply=True)
    assert statuses == {call_id: ReconcileStatus.MISSING}
    assert [call.result for page in pages for call in page.calls] == [None]
    assert report.applied == 0
    assert sqlite_tracker.get_call(call_id) is None
    assert sqlite_tracker.events() == []


def test_more_calls_than_one_page_are_each_compared_once(tracker: Tracker) -> None:
    """Every page of Bandwidth's list is compared, a call repeated on a later page counts
    once, and the tracker's calls are looked for a page at a time too."""
    agreeing = [new_call_id() for _ in range(5)]
    missing = [new_call_id() for _ in range(3)]
    unknown = [new_call_id() for _ in range(5)]
    tracker.apply_many([disconnect(call_id) for call_id in agreeing + unknown])
    listed_calls = [there(call_id) for call_id in agreeing + missing]
    listed = Listed([*listed_calls, listed_calls[0], listed_calls[-1]], page_size=3)
    report, statuses, pages = reconciled(tracker, listed, batch_size=2)
    assert statuses == {
        **dict.fromkeys(missing, ReconcileStatus.MISSING),
        **dict.fromkeys(unknown, ReconcileStatus.UNKNOWN_THERE),
    }
    assert report.counts == counts(agrees=5, missing=3, unknown_there=5)
    assert report.pages == 4
    bandwidth_pages = [page.compared for page in pages if page.source == "bandwidth"]
    assert bandwidth_pages == [3, 3, 2, 0]
    tracker_pages = [page.compared for page in pages if page.source == "tracker"]
    assert tracker_pages == [2, 2, 2, 2, 2]


class Logged(Listed):
    """Bandwidth's list, noting when each page is asked for."""

    def __init__(self, calls: Sequence[ProviderCall], page_size: int, log: list[str]) -> None:
        super().__init__(calls, page_size)
        self.log = log

    def list_calls(
        self, account_id: str, since: datetime, until: datetime
    ) -> Iterator[list[ProviderCall]]:
        for number, page in enumerate(super().list_calls(account_id, since, until), 1):
            self.log.append(f"asked page {number}")
            yield page


def test_each_page_is_handed_out_before_the_next_is_asked_for_and_the_scratch_file_goes(
    sqlite_tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page by page: the caller sees a page's calls before Bandwidth is asked for the next, so
    nothing holds the whole window; the scratch file of listed ids is gone afterwards."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    log: list[str] = []
    listed = Logged([there(new_call_id()) for _ in range(3)], page_size=1, log=log)
    sqlite_tracker.reconcile(
        SINCE,
        UNTIL,
        account_id=ACCOUNT,
        client=listed,
        now=NOW,
        on_page=lambda page: log.append(f"{page.source} page of {len(page.calls)}"),
    )
    assert log == [
        "asked page 1",
        "bandwidth page of 1",
        "asked page 2",
        "bandwidth page of 1",
        "asked page 3",
        "bandwidth page of 1",
    ]
    assert list(scratch.iterdir()) == []


def test_without_apply_nothing_is_written(tracker: Tracker) -> None:
    """A run that finds calls to apply writes nothing unless asked to."""
    live_here = new_call_id()
    tracker.apply(initiate(live_here))
    before = tracker.events()
    _, statuses, _ = reconciled(tracker, Listed([there(live_here), there(new_call_id())]))
    assert set(statuses.values()) == {ReconcileStatus.MISSING, ReconcileStatus.LIVE_HERE}
    assert tracker.events() == before
    call = tracker.get_call(live_here)
    assert call is not None and call.live


def test_apply_ends_missing_and_live_here_calls_and_a_second_run_finds_nothing_to_apply(
    tracker: Tracker,
) -> None:
    """Applied with Bandwidth's facts, the missing and live_here calls then agree; a differs
    call is left as it is; and the log replays to the same records (rebuild finds nothing)."""
    missing, live_here, swept, differs = (new_call_id() for _ in range(4))
    tracker.apply_many([initiate(swept), disconnect(differs)])
    assert tracker.sweep(timedelta(hours=4), now=NOW).expired == (swept,)
    tracker.apply(initiate(live_here))
    listed = Listed(
        [there(missing, cause="busy"), there(live_here), there(swept), there(differs, cause="busy")]
    )
    report, statuses, pages = reconciled(tracker, listed, apply=True)
    assert statuses == {
        missing: ReconcileStatus.MISSING,
        live_here: ReconcileStatus.LIVE_HERE,
        swept: ReconcileStatus.LIVE_HERE,
        differs: ReconcileStatus.DIFFERS,
    }
    results = {call.call_id: call.result for page in pages for call in page.calls}
    assert results[differs] is None
    assert {call_id: result.outcome.value for call_id, result in results.items() if result} == {
        missing: "applied",
        live_here: "applied",
        swept: "applied",
    }
    assert (report.applying, report.applied) == (True, 3)
    for call_id, cause in ((missing, "busy"), (live_here, "hangup"), (swept, "hangup")):
        call = tracker.get_call(call_id)
        assert call is not None
        assert (call.state, call.cause, call.end_time) == ("disconnected", cause, ENDED)
        assert (call.end_source, call.swept) == ("provider", False)
    unchanged = tracker.get_call(differs)
    assert unchanged is not None and unchanged.cause == "hangup"

    again, statuses, _ = reconciled(tracker, listed, apply=True)
    assert statuses == {differs: ReconcileStatus.DIFFERS}
    assert again.applied == 0
    assert again.counts == counts(agrees=3, differs=1)
    assert tracker.rebuild().differences == ()


def test_a_window_reaching_past_what_bandwidth_keeps_says_so(tracker: Tracker) -> None:
    """Bandwidth keeps calls 7 days: an older call of the tracker is counted as not compared,
    not reported unknown there, and the report says the window reaches past what is kept."""
    old, recent = new_call_id(), new_call_id()
    tracker.apply_many([disconnect(old), disconnect(recent, start=BASE_TIME + timedelta(days=8))])
    pages: list[ReconcilePage] = []
    report = tracker.reconcile(
        SINCE,
        BASE_TIME + timedelta(days=9),
        account_id=ACCOUNT,
        client=Listed([]),
        on_page=pages.append,
        now=BASE_TIME + timedelta(days=10),
    )
    assert [call.call_id for page in pages for call in page.calls] == [recent]
    assert report.reaches_past_kept
    assert report.not_compared == 1
    assert report.kept_from == BASE_TIME + timedelta(days=3, hours=1)
    within, _, _ = reconciled(tracker, Listed([there(old), there(recent)]))
    assert not within.reaches_past_kept
    assert within.not_compared == 0


def test_only_the_account_s_calls_are_looked_for_there(tracker: Tracker) -> None:
    """Bandwidth lists one account's calls: another account's call here is not unknown there."""
    tracker.apply(disconnect(new_call_id(), accountId="99999999"))
    report, statuses, _ = reconciled(tracker, Listed([]))
    assert statuses == {}
    assert report.counts == counts()


def test_a_missing_account_is_refused_naming_the_variable(
    sqlite_tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing needs an account: none given and none in the environment is a clear error."""
    monkeypatch.delenv("BANDWIDTH_ACCOUNT_ID", raising=False)
    with pytest.raises(ValueError, match="BANDWIDTH_ACCOUNT_ID"):
        sqlite_tracker.reconcile(SINCE, UNTIL, client=Listed([]), now=NOW)
    monkeypatch.setenv("BANDWIDTH_ACCOUNT_ID", ACCOUNT)
    listed = Listed([])
    sqlite_tracker.reconcile(SINCE, UNTIL, client=listed, now=NOW)
    assert listed.asked == [(ACCOUNT, SINCE, UNTIL)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"since": datetime(2026, 6, 10)}, "since=.* has no time zone"),
        ({"since": BASE_TIME, "until": SINCE}, "must be after since"),
        ({"since": BASE_TIME, "batch_size": 0}, "batch_size must be a positive int"),
        ({"since": BASE_TIME, "account_id": 5}, "account_id must be a str"),
    ],
)
def test_bad_arguments_are_refused_before_bandwidth_is_asked(
    sqlite_tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    listed = Listed([])
    arguments.setdefault("account_id", ACCOUNT)
    with pytest.raises(ValueError, match=message):
        sqlite_tracker.reconcile(**arguments, client=listed, now=NOW)
    assert listed.asked == []


class FailingAfter(Listed):
    """Bandwidth's list failing after its first page."""

    def list_calls(
        self, account_id: str, since: datetime, until: datetime
    ) -> Iterator[list[ProviderCall]]:
        pages = super().list_calls(account_id, since, until)
        yield next(pages)
        raise ProviderError("Bandwidth answered 503 three times")


def test_a_provider_failure_part_way_ends_the_run_keeping_what_was_applied(
    tracker: Tracker,
) -> None:
    """The first page's calls were applied in a transaction of their own: they stay."""
    first, second = new_call_id(), new_call_id()
    listed = FailingAfter([there(first), there(second)], page_size=1)
    with pytest.raises(ProviderError, match="503"):
        tracker.reconcile(SINCE, UNTIL, account_id=ACCOUNT, client=listed, apply=True, now=NOW)
    applied = tracker.get_call(first)
    assert applied is not None and applied.state == "disconnected"
    assert tracker.get_call(second) is None


def test_a_call_state_document_reads_back_as_the_same_call() -> None:
    """What `apply=True` hands the tracker is Bandwidth's own spelling of the call."""
    call = replace(there(new_call_id()), parent_call_id=new_call_id(), error_id="e-1")
    document = call_state_document(call)
    assert document["disconnectCause"] == "hangup"
    assert document["endTime"] == stamp(ENDED)
    assert read_call_state(document) == call


# --- through the real SDK, against the fake of Bandwidth's API --------------------------------

RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def recent_window() -> tuple[str, str]:
    """A window Bandwidth still keeps, as the command line takes it."""
    return stamp(RECENT - timedelta(hours=1)), stamp(RECENT + timedelta(hours=1))


def run(database_url: str, *args: str) -> ClickResult:
    isolated = {"COLUMNS": None, "FORCE_TERMINAL": None, "TTY_COMPATIBLE": None}
    return CliRunner().invoke(cli, ["--db", database_url, "reconcile", *args], env=isolated)


def test_pages_of_the_real_api_are_compared_and_applied_once(
    tracker: Tracker, bandwidth_api: FakeBandwidth
) -> None:
    """Through `bandwidth-sdk` against the fake, following its `Link` pages: the lost ends are
    applied, and a second run finds every call agreeing."""
    agreeing = [disconnect(start=RECENT) for _ in range(3)]
    lost = [disconnect(start=RECENT) for _ in range(3)]
    tracker.apply_many([*agreeing, *(initiate(body["callId"], start=RECENT) for body in lost)])
    bandwidth_api.put_many(call_state_from(body) for body in agreeing + lost)
    since, until = RECENT - timedelta(hours=1), RECENT + timedelta(hours=1)
    client = BandwidthClient(BandwidthSettings.from_environment(), page_size=2)
    with client:
        report = tracker.reconcile(since, until, client=client, apply=True)
        assert report.counts == counts(agrees=3, live_here=3)
        assert (report.pages, report.applied, report.reaches_past_kept) == (3, 3, False)
        again = tracker.reconcile(since, until, client=client, apply=True)
    assert again.counts == counts(agrees=6)
    assert again.applied == 0
    for body in lost:
        call = tracker.get_call(body["callId"])
        assert call is not None and call.end_source == "provider"
        assert call.end_time is not None and stamp(call.end_time) == body["endTime"]


def test_the_command_prints_one_json_object_per_call_then_a_summary(
    database_url: str, tracker: Tracker, bandwidth_api: FakeBandwidth
) -> None:
    agreeing, lost, unknown = (disconnect(start=RECENT) for _ in range(3))
    missing = call_state(start=RECENT, state="disconnected", cause="busy")
    tracker.apply_many([agreeing, initiate(lost["callId"], start=RECENT), unknown])
    bandwidth_api.put_many([call_state_from(agreeing), call_state_from(lost), missing])
    result = run(database_url, "--since", *_window_options(), "--json")
    assert result.exit_code == 0, result.output
    *calls, summary = (json.loads(line) for line in result.stdout.splitlines())
    assert {call["call_id"]: call["status"] for call in calls} == {
        lost["callId"]: "live_here",
        missing["callId"]: "missing",
        unknown["callId"]: "unknown_there",
    }
    for call in calls:
        assert set(call) == {"call_id", "status", "differing", "here", "there", "result"}
        assert call["result"] is None
    by_id = {call["call_id"]: call for call in calls}
    assert by_id[missing["callId"]]["here"] is None
    assert by_id[missing["callId"]]["there"]["cause"] == "busy"
    assert by_id[unknown["callId"]]["there"] is None
    assert by_id[lost["callId"]]["here"]["state"] == "initiated"
    ended_there = datetime.fromisoformat(by_id[lost["callId"]]["there"]["end_time"])
    assert ended_there == datetime.fromisoformat(lost["endTime"])
    found = summary["summary"]
    window = [datetime.fromisoformat(found.pop(name)) for name in ("since", "until", "kept_from")]
    assert window[:2] == [RECENT - timedelta(hours=1), RECENT + timedelta(hours=1)]
    assert window[2] < window[0]
    assert found == {
        **counts(agrees=1, missing=1, live_here=1, unknown_there=1),
        "account_id": ACCOUNT,
        "pages": 1,
        "applying": False,
        "applied": 0,
        "reaches_past_kept": False,
        "not_compared": 0,
    }
    assert tracker.get_call(missing["callId"]) is None  # without --apply, nothing written


def _url(tracker: Tracker) -> str:
    return tracker.engine.url.render_as_string(hide_password=False)


def _window_options() -> list[str]:
    since, until = recent_window()
    return [since, "--until", until]


def test_the_command_applies_then_finds_nothing_left_to_apply(
    database_url: str, tracker: Tracker, bandwidth_api: FakeBandwidth
) -> None:
    lost = disconnect(start=RECENT)
    tracker.apply(initiate(lost["callId"], start=RECENT))
    bandwidth_api.put(call_state_from(lost))
    first = run(database_url, "--since", *_window_options(), "--apply")
    assert first.exit_code == 0, first.output
    assert lost["callId"] in first.stdout and "live_here" in first.stdout
    assert "Applied Bandwidth's facts to 1 call." in first.stdout
    second = run(database_url, "--since", *_window_options(), "--apply")
    assert second.exit_code == 0, second.output
    assert lost["callId"] not in second.stdout
    assert "1 agrees, 0 missing, 0 live_here" in second.stdout
    assert "Applied Bandwidth's facts to 0 calls." in second.stdout


def test_missing_credentials_exit_2_naming_the_variables_and_write_nothing(
    sqlite_tracker: Tracker,
    bandwidth_api: FakeBandwidth,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bandwidth_api.put(call_state(start=RECENT))
    monkeypatch.delenv("BANDWIDTH_PASSWORD")
    result = run(_url(sqlite_tracker), "--since", *_window_options(), "--apply")
    assert result.exit_code == 2
    for variable in ("BANDWIDTH_PASSWORD", "BANDWIDTH_CLIENT_ID", "TRACKER_BANDWIDTH_API_URL"):
        assert variable in result.stderr
    assert sqlite_tracker.events() == []
    assert bandwidth_api.requests == []


def test_refused_credentials_exit_2_and_write_nothing(
    sqlite_tracker: Tracker,
    bandwidth_api: FakeBandwidth,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bandwidth_api.put(call_state(start=RECENT))
    monkeypatch.setenv("BANDWIDTH_PASSWORD", "not-the-password")
    result = run(_url(sqlite_tracker), "--since", *_window_options(), "--apply")
    assert result.exit_code == 2, result.output
    assert "BANDWIDTH_USERNAME" in result.stderr
    assert sqlite_tracker.events() == []


def test_bandwidth_down_ends_the_command_with_exit_4(
    sqlite_tracker: Tracker, bandwidth_api: FakeBandwidth
) -> None:
    bandwidth_api.down(status=503)
    result = run(_url(sqlite_tracker), "--since", *_window_options())
    assert result.exit_code == 4, result.output
    assert "503" in result.stderr and "reconciling again is safe" in result.stderr


def test_the_command_warns_when_the_window_reaches_past_what_bandwidth_keeps(
    sqlite_tracker: Tracker, bandwidth_api: FakeBandwidth
) -> None:
    sqlite_tracker.apply(disconnect(start=RECENT - timedelta(days=30)))
    result = run(_url(sqlite_tracker), "--since", stamp(RECENT - timedelta(days=31)))
    assert result.exit_code == 0, result.output
    assert "Warning: the window starts before" in result.stderr
    assert "so 1 call here that started before it was not compared" in result.stderr
    assert "0 unknown_there" in result.stdout
