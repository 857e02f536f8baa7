"""The public test kit, `tracker.testing`: its bodies are read as the facts it says they carry."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tracker.testing as kit
from tracker import Outcome, Tracker
from tracker.testing import (
    ACCOUNT,
    BASE_TIME,
    RELAY_CHANGES,
    Conversation,
    answer,
    call_trees,
    conversation,
    disconnect,
    encode,
    initiate,
    machine_detection_complete,
    new_call_id,
    realistic_bodies,
    relayed,
    relayed_variants,
    shuffled,
    sqlite_tracker,
    stamp,
    terminal_bodies,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
    untracked,
    with_retries,
)

# One of each shape a host's test may want; `ended=False` stops at the live moment.
SHAPES: list[dict[str, Any]] = [
    {"direction": "inbound"},
    {"direction": "inbound", "answered": False},
    {"direction": "inbound", "answered": False, "ended": False},
    {"direction": "outbound", "machine_detection": "answering-machine"},
    {"direction": "outbound", "answered": False, "cause": "busy"},
    {"direction": "outbound", "ended": False, "machine_detection": "human"},
    {"direction": "inbound", "legs": 3, "answering_leg": 1},
    {"direction": "inbound", "legs": 2, "answering_leg": None},
    {"direction": "outbound", "legs": 2, "ended": False},
    {"direction": "inbound", "legs": 1, "ended": False},
]


def conversations() -> list[Conversation]:
    return [conversation(**shape) for shape in SHAPES]


def differences(tracker: Tracker, talk: Conversation) -> dict[str, Any]:
    found = {
        call_id: expected.compare(tracker.get_call(call_id))
        for call_id, expected in talk.expected.items()
    }
    return {call_id: difference for call_id, difference in found.items() if difference}


def snapshot(tracker: Tracker, call_ids: set[str]) -> dict[str, Any]:
    """Every call's record, without the ids of the events that taught its history."""
    records: dict[str, Any] = {}
    for call_id in sorted(call_ids):
        call = tracker.get_call(call_id)
        assert call is not None
        record = asdict(call)
        record["history"] = [
            {key: value for key, value in step.items() if key != "event_id"}
            for step in record["history"]
        ]
        records[call_id] = record
    return records


# --- single bodies ----------------------------------------------------------------------------


def test_each_tracked_body_is_read_as_the_facts_it_carries(tracker: Tracker) -> None:
    """One builder per tracked type, applied on every backend, each teaching what it says."""
    inbound, outbound, parent, leg = (new_call_id() for _ in range(4))
    bodies = [
        initiate(inbound),
        answer(outbound, ring=4.0),
        machine_detection_complete(outbound, result="answering-machine"),
        transfer_answer(parent, leg),
        transfer_complete(parent, cause="busy"),
        transfer_disconnect(parent, leg),
        disconnect(parent),
    ]
    assert [result.outcome for result in tracker.apply_many(bodies)] == [Outcome.APPLIED] * 7

    ringing = tracker.get_call(inbound)
    assert ringing is not None
    assert (ringing.state, ringing.direction, ringing.start_time) == (
        "initiated",
        "inbound",
        BASE_TIME,
    )
    assert (ringing.attestation, ringing.caller_display_name) == ("A", "ALICE EXAMPLE")
    talking = tracker.get_call(outbound)
    assert talking is not None
    assert (talking.state, talking.answer_time) == ("answered", BASE_TIME + timedelta(seconds=4))
    assert talking.machine_detection == "answering-machine"
    ended = tracker.get_call(parent)
    assert ended is not None
    assert (ended.state, ended.disposition, ended.legs) == ("disconnected", "completed", (leg,))
    assert [(attempt.cause, attempt.disposition) for attempt in ended.transfers] == [
        ("busy", "busy")
    ]
    assert ended.transfers[0].error_message == "Callee is busy"
    transferred = tracker.get_call(leg)
    assert transferred is not None
    assert (transferred.parent_call_id, transferred.account_id) == (parent, ACCOUNT)
    assert (transferred.state, transferred.answer_time) == (
        "disconnected",
        BASE_TIME + timedelta(seconds=12),
    )


def test_an_untracked_body_is_ignored(tracker: Tracker) -> None:
    result = tracker.apply(untracked(new_call_id()))
    assert (result.outcome, result.reason) == (Outcome.IGNORED, "untracked_event_type")


def test_a_key_given_as_ellipsis_is_removed() -> None:
    assert "endTime" not in disconnect(endTime=...)
    assert disconnect(cause="busy", ring=None)["cause"] == "busy"


def test_stamp_spells_an_instant_as_bandwidth_does() -> None:
    assert stamp(BASE_TIME + timedelta(microseconds=123_456)) == "2026-06-10T19:15:00.123Z"


# --- conversations ----------------------------------------------------------------------------


def test_every_conversation_gives_the_facts_it_expects(tracker: Tracker) -> None:
    """Inbound and outbound, answered or not, ended or live, transfers answered or not."""
    for talk in conversations():
        outcomes = {result.outcome for result in tracker.apply_many(talk.encoded())}
        assert outcomes == {Outcome.APPLIED}, talk
        assert differences(tracker, talk) == {}


def test_a_conversation_tells_its_ids_and_times() -> None:
    talk = conversation("inbound", legs=3, answering_leg=2)
    assert talk.answering_leg_id == talk.leg_ids[2]
    assert set(talk.expected) == {talk.call_id, *talk.leg_ids}
    assert talk.expected[talk.call_id].legs == tuple(sorted(talk.leg_ids))
    assert talk.answer_time == talk.start_time + timedelta(seconds=3)
    assert talk.end_time is not None and talk.end_time > talk.answer_time
    event_types = [body["eventType"] for body in talk.bodies]
    assert event_types[0] == "initiate"
    assert event_types[-1] == "disconnect"
    assert event_types.count("transferAnswer") == 1
    assert event_types.count("transferDisconnect") == 3
    assert event_types.count("transferComplete") == 1
    live = conversation("inbound", legs=3, answering_leg=2, ended=False)
    assert live.end_time is None
    assert live.expected[live.answering_leg_id or ""].state == "answered"


@pytest.mark.parametrize(
    ("shape", "fix"),
    [
        ({"answered": False, "legs": 1}, "answered=True"),
        ({"legs": 2, "answering_leg": 2}, "answering_leg 2"),
        ({"direction": "inbound", "machine_detection": "human"}, "outbound"),
        ({"direction": "outbound", "answered": False, "ended": False}, "ended=True"),
        ({"legs": 2, "leg_ids": ["c-1"]}, "one id per leg"),
    ],
)
def test_a_conversation_that_cannot_happen_is_refused_with_the_fix(
    shape: dict[str, Any], fix: str
) -> None:
    with pytest.raises(ValueError, match=fix):
        conversation(**shape)


def test_shuffled_conversations_give_the_records_of_the_ordered_ones(
    two_trackers: tuple[Tracker, Tracker],
) -> None:
    in_order, mixed = two_trackers
    talks = conversations()
    for talk in talks:
        in_order.apply_many(talk.encoded())
    every = [body for talk in talks for body in talk.encoded()]
    outcomes = {result.outcome for result in mixed.apply_many(shuffled(every, seed=7))}

    assert outcomes == {Outcome.APPLIED}
    ids = {call_id for talk in talks for call_id in talk.expected}
    assert snapshot(mixed, ids) == snapshot(in_order, ids)
    assert all(differences(mixed, talk) == {} for talk in talks)


def test_shuffled_keeps_every_delivery_and_is_seeded() -> None:
    bodies = list(range(50))
    assert sorted(shuffled(bodies, seed=3)) == bodies
    assert shuffled(bodies, seed=3) == shuffled(bodies, seed=3) != bodies


# --- duplicates and relays --------------------------------------------------------------------


def test_every_relayed_spelling_of_every_body_is_a_duplicate(tracker: Tracker) -> None:
    """Key order at every depth, whitespace, explicit nulls, instants at another offset."""
    talks = [
        conversation("inbound", legs=2),
        conversation("outbound", machine_detection="human", ended=False),
    ]
    for talk in talks:
        tracker.apply_many(talk.encoded())
        for body in talk.bodies:
            variants = relayed_variants(body)
            assert set(variants) == {*RELAY_CHANGES, "all"}
            assert len({encode(body), *variants.values()}) == len(variants) + 1
            outcomes = {change: tracker.apply(again).outcome for change, again in variants.items()}
            assert outcomes == dict.fromkeys(variants, Outcome.DUPLICATE), body["eventType"]


def test_drawn_relay_spellings_are_duplicates(sqlite_tracker: Tracker) -> None:
    """With a seed, key order, spacing, nulls at every depth and instants are drawn."""
    body = initiate(new_call_id(), diversion={"reason": "unconditional", "privacy": None})
    sqlite_tracker.apply(body)
    spellings = {relayed(body, seed=seed) for seed in range(20)}
    assert len(spellings) == 20
    assert relayed(body, seed=4) == relayed(body, seed=4)
    outcomes = {sqlite_tracker.apply(again).outcome for again in spellings}
    assert outcomes == {Outcome.DUPLICATE}


def test_relayed_changes_what_it_says() -> None:
    body = initiate(new_call_id())
    spelled = relayed(body)
    assert spelled.startswith(b" {") and b" : " in spelled
    document = json.loads(spelled)
    assert list(document) == list(reversed([*body, "tag", "enqueuedTime"]))
    assert document["stirShaken"]["originatingId"] is None
    assert list(document["stirShaken"])[-1] == "verstat"
    assert document["startTime"] == "2026-06-10T14:15:00.000000-05:00"
    assert relayed(body, "key_order") == encode(dict(reversed(list(body.items())))).replace(
        b'"stirShaken":{"verstat":"TN-Validation-Passed","attestationIndicator":"A"}',
        b'"stirShaken":{"attestationIndicator":"A","verstat":"TN-Validation-Passed"}',
    )
    with pytest.raises(ValueError, match="key_order"):
        relayed(body, "uppercase")


def test_with_retries_repeats_deliveries_byte_for_byte_as_duplicates(
    sqlite_tracker: Tracker,
) -> None:
    bodies = conversation("inbound", legs=2).encoded()
    delivered = with_retries(bodies, share=0.5, seed=2)
    assert len(delivered) > len(bodies)
    assert set(delivered) == set(bodies)
    outcomes = [result.outcome for result in sqlite_tracker.apply_many(delivered)]
    assert outcomes.count(Outcome.APPLIED) == len(bodies)
    assert outcomes.count(Outcome.DUPLICATE) == len(delivered) - len(bodies)


# --- realistic traffic ------------------------------------------------------------------------


def test_the_streams_are_seeded_and_applied_in_full(sqlite_tracker: Tracker) -> None:
    assert realistic_bodies(200, seed=5) == realistic_bodies(200, seed=5)
    assert realistic_bodies(200, seed=5) != realistic_bodies(200, seed=6)
    terminal = list(terminal_bodies(100, seed=5))
    trees = list(call_trees(100, seed=5))
    assert {json.loads(body)["eventType"] for body in terminal} == {
        "disconnect",
        "transferDisconnect",
    }
    for bodies in (terminal, trees):
        outcomes = {result.outcome for result in sqlite_tracker.apply_many(bodies)}
        assert outcomes == {Outcome.APPLIED}


# --- a tracker for a host's test --------------------------------------------------------------


def test_the_sqlite_tracker_fixture_is_migrated_empty_and_on_sqlite(
    sqlite_tracker: Tracker, tmp_path: Path
) -> None:
    assert sqlite_tracker.engine.dialect.name == "sqlite"
    assert sqlite_tracker.engine.url.database == str(tmp_path / "tracker.db")
    assert sqlite_tracker.events() == []
    assert sqlite_tracker.apply(disconnect()).outcome == Outcome.APPLIED


def test_sqlite_tracker_opens_a_migrated_database_in_a_directory(tmp_path: Path) -> None:
    with sqlite_tracker(tmp_path, "host.db") as opened:
        assert opened.apply(disconnect()).outcome == Outcome.APPLIED
    assert (tmp_path / "host.db").exists()


def test_a_host_suite_gets_the_fixture_by_enabling_the_plugin(tmp_path: Path) -> None:
    """As a host's suite does it: a conftest naming the module in `pytest_plugins`."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tracker.testing"]\n')
    (tmp_path / "test_host.py").write_text(
        textwrap.dedent(
            """
            from tracker.testing import conversation


            def test_a_host_call(sqlite_tracker):
                talk = conversation("outbound", legs=2)
                sqlite_tracker.apply_many(talk.encoded())
                call = sqlite_tracker.get_call(talk.call_id)
                assert talk.expected[talk.call_id].compare(call) == {}
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_importing_the_kit_does_not_import_pytest() -> None:
    """pytest is a test dependency only: a host imports the builders without it."""
    code = "import sys, tracker.testing; print('pytest' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_every_public_name_is_documented() -> None:
    """The API reference is generated from these docstrings."""
    assert kit.__doc__
    assert sorted(kit.__all__) == sorted(set(kit.__all__))
    for name in kit.__all__:
        value = getattr(kit, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), name
