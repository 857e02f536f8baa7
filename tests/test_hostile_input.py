"""Hostile bodies get the same answer on every backend, are logged, and never raise (SPEC 1).

Each case was once an exception, a `StorageError`, or a body missing from the log on at least
one backend: values read from a body reached the log's columns unchecked (a NUL PostgreSQL
refuses, an id longer than its column, an event type longer than MariaDB's TEXT), or a body
larger than MariaDB's packet limit. Every case runs on SQLite, PostgreSQL and MariaDB with one
expectation, so the outcomes are the same everywhere by construction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.factories import BASE_TIME, call_url, disconnect, new_call_id, stamp
from tests.test_cli import jsonl
from tests.test_cli import run as run_cli
from tracker import InvalidReason, Outcome, Tracker
from tracker.parsing import MAX_BODY_BYTES, TOO_LARGE_PREFIX
from tracker.records import MAX_DETAIL_LENGTH


def deeply_nested_mapping(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {"eventType": "disconnect"}
    inner = root
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return root


@dataclass(frozen=True)
class Case:
    body: Callable[[], object]
    outcome: Outcome
    reason: str | None
    logged_call_id: str | None = None


NUL = "\x00"
LONG_ID = "c-" + "x" * 300
CASES: dict[str, Case] = {
    "an unknown key holding a NUL is legal": Case(
        lambda: dict(disconnect("c-unknown-nul"), x=f"a{NUL}b"),
        Outcome.APPLIED,
        None,
        "c-unknown-nul",
    ),
    "100,000-deep JSON": Case(
        lambda: b'{"eventType":"x","a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        Outcome.INVALID,
        InvalidReason.TOO_DEEPLY_NESTED,
    ),
    "100,000-deep mapping": Case(
        lambda: deeply_nested_mapping(100_000), Outcome.INVALID, InvalidReason.NOT_JSON
    ),
    "a mapping holding a 5,000-digit integer": Case(
        lambda: {"eventType": "disconnect", "callId": "c-big", "n": 10**5000},
        Outcome.INVALID,
        InvalidReason.NOT_JSON,
    ),
    "a body holding a 5,000-digit integer": Case(
        lambda: json.dumps(disconnect("c-big-bytes"))[:-1].encode() + b',"n":' + b"9" * 5000 + b"}",
        Outcome.INVALID,
        InvalidReason.NOT_JSON,
    ),
    "an ignored body with a 300-character callId": Case(
        lambda: {"eventType": "dtmf", "callId": LONG_ID}, Outcome.IGNORED, "untracked_event_type"
    ),
    "an invalid body with a 300-character callId": Case(
        lambda: disconnect(LONG_ID, endTime=...), Outcome.INVALID, InvalidReason.MISSING_FIELD
    ),
    "a tracked body with a 300-character callId": Case(
        lambda: disconnect(LONG_ID, callUrl=...), Outcome.INVALID, InvalidReason.INVALID_FIELD
    ),
    "an ignored body with a NUL in callId": Case(
        lambda: {"eventType": "dtmf", "callId": f"c-{NUL}"},
        Outcome.IGNORED,
        "untracked_event_type",
    ),
    "an invalid body with a NUL in callId": Case(
        lambda: dict(disconnect(f"c-{NUL}", callUrl=...), startTime=7),
        Outcome.INVALID,
        InvalidReason.INVALID_FIELD,
    ),
    "a NUL in eventType": Case(
        lambda: {"eventType": f"answer{NUL}", "callId": "c-nul-type"},
        Outcome.IGNORED,
        "untracked_event_type",
        "c-nul-type",
    ),
    "a 70,000-character eventType": Case(
        lambda: {"eventType": "é" * 70_000, "callId": "c-long-type"},
        Outcome.IGNORED,
        "untracked_event_type",
        "c-long-type",
    ),
    "a 70,000-character eventType on a body missing fields": Case(
        lambda: {"eventType": 7, "callId": "c-long", "x": "é" * 70_000},
        Outcome.INVALID,
        InvalidReason.INVALID_FIELD,
        "c-long",
    ),
    "a callUrl naming account %00": Case(
        lambda: disconnect(
            "c-url-nul", accountId=..., callUrl=call_url("c-url-nul", account="%00")
        ),
        Outcome.INVALID,
        InvalidReason.INVALID_FIELD,
        "c-url-nul",
    ),
    "a callUrl naming a 300-character account": Case(
        lambda: disconnect(
            "c-url-long", accountId=..., callUrl=call_url("c-url-long", account="9" * 300)
        ),
        Outcome.INVALID,
        InvalidReason.INVALID_FIELD,
        "c-url-long",
    ),
    "a body just over the size limit": Case(
        lambda: json.dumps(dict(disconnect("c-large"), x="y" * MAX_BODY_BYTES)).encode(),
        Outcome.INVALID,
        InvalidReason.TOO_LARGE,
    ),
    "a 20 MB body, over MariaDB's default packet limit": Case(
        lambda: b'{"eventType":"x","pad":"' + b"z" * 20_000_000 + b'"}',
        Outcome.INVALID,
        InvalidReason.TOO_LARGE,
    ),
}


def logged_bytes(body: object) -> bytes | None:
    """The bytes the log must hold: the body as received (a mapping as its JSON), or None when
    the body is not JSON-writable and only a bounded description is kept."""
    if isinstance(body, bytes):
        return body
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        return None


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_body_is_answered_the_same_on_every_backend_and_logged(
    tracker: Tracker, name: str
) -> None:
    case = CASES[name]
    body = case.body()
    before = len(tracker.events())

    result = tracker.apply(body)

    assert (result.outcome, result.reason) == (case.outcome, case.reason), result.detail
    assert result.call_id == case.logged_call_id
    assert 0 < len(result.detail) <= MAX_DETAIL_LENGTH
    log = tracker.events()
    assert len(log) == before + 1
    entry = log[-1]
    assert (entry.outcome, entry.reason, entry.call_id) == (
        case.outcome,
        case.reason,
        case.logged_call_id,
    )
    assert entry.detail == result.detail
    expected = logged_bytes(body)
    if case.reason == InvalidReason.TOO_LARGE:
        assert expected is not None
        assert entry.body == expected[:TOO_LARGE_PREFIX]
        assert f"{len(expected):,} bytes" in entry.detail
        assert hashlib.sha256(expected).hexdigest() in entry.detail
    elif expected is not None:
        assert entry.body == expected
    else:
        assert 0 < len(entry.body) <= TOO_LARGE_PREFIX


def test_ids_differing_only_by_trailing_spaces_are_different_calls(tracker: Tracker) -> None:
    padded = ["c-pad", "c-pad ", "c-pad  "]
    outcomes = [tracker.apply(disconnect(call_id, callUrl=...)).outcome for call_id in padded]
    assert outcomes == [Outcome.APPLIED] * 3
    assert sorted(call.call_id for call in tracker.calls()) == sorted(padded)
    for call_id in padded:
        call = tracker.get_call(call_id)
        assert call is not None and call.call_id == call_id
        assert [event.call_id for event in tracker.events(call_id=call_id)] == [call_id]


def test_a_batch_of_large_bodies_is_written_whatever_the_packet_limit(tracker: Tracker) -> None:
    """Twenty bodies just under the limit are over 16 MiB together: written in several
    statements, each under MariaDB's default packet limit."""
    bodies = [
        json.dumps(dict(disconnect(), padding="p" * (MAX_BODY_BYTES - 1000))).encode()
        for _ in range(20)
    ]
    results = tracker.apply_many(bodies)
    assert [result.outcome for result in results] == [Outcome.APPLIED] * 20
    assert [event.body for event in tracker.events()] == bodies


def test_ingest_logs_poisoned_lines_and_applies_the_rest(database_url: str) -> None:
    tracker = Tracker(database_url)
    tracker.upgrade()
    good = [disconnect(new_call_id(), start=BASE_TIME) for _ in range(6)]
    poisoned: list[dict[str, Any]] = [
        {"eventType": "dtmf", "callId": LONG_ID},
        {"eventType": f"x{NUL}", "callId": f"c-{NUL}"},
        disconnect("c-ingest-url", accountId=..., callUrl=call_url("c-ingest-url", "%00")),
        dict(disconnect("c-ingest-nul"), extra=NUL, startTime=stamp(BASE_TIME)),
    ]
    stream = jsonl([good[0], *poisoned[:2], *good[1:4], *poisoned[2:], *good[4:]])

    result = run_cli("--db", database_url, "ingest", "--json", "-", input=stream)

    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)["outcomes"]
    # The NUL in an unknown key is legal: that body is applied.
    assert outcomes == {
        "applied": len(good) + 1,
        "duplicate": 0,
        "rejected": 0,
        "invalid": 1,
        "ignored": 2,
    }
    assert len(tracker.events()) == len(good) + len(poisoned)
    for body in good:
        assert tracker.get_call(body["callId"]) is not None
    tracker.close()
