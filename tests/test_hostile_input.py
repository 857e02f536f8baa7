"""Hostile bodies get the same answer on every backend, are logged, and never raise.

Each case was once an exception, a `StorageError`, or a body missing from the log on at least
one backend: values read from a body reached the log's columns unchecked (a NUL PostgreSQL
refuses, an id longer than its column, an event type longer than MariaDB's TEXT), or a body
larger than MariaDB's packet limit. Every case runs on SQLite, PostgreSQL and MariaDB with one
expectation, so the outcomes are the same everywhere by construction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import BACKENDS, fresh_database
from tests.test_cli import jsonl
from tests.test_cli import run as run_cli
from tracker import InvalidReason, Outcome, Tracker
from tracker.parsing import MAX_BODY_BYTES, MAX_JSON_BYTES, MAX_TEXT_LENGTH, TOO_LARGE_PREFIX
from tracker.records import MAX_DETAIL_LENGTH, MAX_ID_LENGTH
from tracker.testing import (
    BASE_TIME,
    answer,
    call_url,
    disconnect,
    initiate,
    machine_detection_complete,
    new_call_id,
    stamp,
    transfer_complete,
    transfer_disconnect,
)


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
    "a 70 KB diversion, over MariaDB's TEXT": Case(
        lambda: initiate("c-diversion-70k", diversion={"origTo": "+1", "pad": "d" * 70_000}),
        Outcome.INVALID,
        InvalidReason.INVALID_FIELD,
        "c-diversion-70k",
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


# --- every stored field has one bound, checked in parsing --------------------------------------
# Each field a body brings to a column, nested ones included. Over its bound it makes the body
# `invalid`, logged and stored nowhere; at its bound, in the widest characters UTF-8 has, it is
# applied and read back equal on every backend: the bound fits the column everywhere (a JSON
# object past 65,535 bytes once made MariaDB refuse the whole delivery).

WIDE = "\U0001f600"  # four bytes in UTF-8


def json_object_of_size(size: int, char: str = WIDE) -> dict[str, Any]:
    """A nested object (null, array, multi-byte text) whose compact JSON is `size` bytes."""

    def shaped(text: str) -> dict[str, Any]:
        return {
            "origTo": "+15550001111",
            "nested": {"list": [1, None, {"text": text}], "gone": None},
        }

    def size_of(value: object) -> int:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())

    room = size - size_of(shaped(""))
    wide, narrow = divmod(room, len(char.encode()))
    value = shaped(char * wide + "a" * narrow)
    assert size_of(value) == size
    return value


@dataclass(frozen=True)
class StoredField:
    """`body(call_id, value)` holds `value` in the field; `read(tracker, call_id)` reads it back
    from what was stored (in `column`); `at_bound` is the largest value allowed, `over` one just
    past it; the detail of a refusal names `path` and `bound`."""

    path: str
    column: str
    body: Callable[[str, Any], dict[str, Any]]
    read: Callable[[Tracker, str], Any]
    at_bound: Callable[[], Any]
    over: Callable[[], Any]
    bound: str


def _text(path: str, body: Callable[[str, Any], dict[str, Any]], attribute: str) -> StoredField:
    table, _, column = attribute.rpartition(".")

    def read(tracker: Tracker, call_id: str) -> Any:
        call = tracker.get_call(call_id)
        assert call is not None
        if table:
            (attempt,) = call.transfers
            return getattr(attempt, column)
        return getattr(call, column)

    return StoredField(
        path,
        f"tracker_{table or 'calls'}.{column}",
        body,
        read,
        lambda: WIDE * MAX_TEXT_LENGTH,
        lambda: WIDE * (MAX_TEXT_LENGTH + 1),
        str(MAX_TEXT_LENGTH),
    )


def _id(path: str, body: Callable[[str, Any], dict[str, Any]], attribute: str) -> StoredField:
    def read(tracker: Tracker, call_id: str) -> Any:
        return getattr(tracker.get_call(call_id), attribute)

    return StoredField(
        path,
        f"tracker_calls.{attribute}",
        body,
        read,
        lambda: WIDE * (MAX_ID_LENGTH - 2) + "-x",
        lambda: WIDE * MAX_ID_LENGTH + "-x",
        str(MAX_ID_LENGTH),
    )


def _json(
    path: str, body: Callable[[str, Any], dict[str, Any]], over: Any, char: str
) -> StoredField:
    def read(tracker: Tracker, call_id: str) -> Any:
        if path == "sipHeaders":  # kept in the logged body only
            return json.loads(tracker.events(call_id=call_id)[-1].body)[path]
        call = tracker.get_call(call_id)
        assert call is not None
        return call.diversion

    return StoredField(
        path,
        "(the logged body)" if path == "sipHeaders" else "tracker_calls.diversion",
        body,
        read,
        lambda: json_object_of_size(MAX_JSON_BYTES, char),
        lambda: over,
        f"{MAX_JSON_BYTES:,}",
    )


def _leg(call_id: str, **fields: Any) -> dict[str, Any]:
    return transfer_disconnect(new_call_id(), call_id, **fields)


STORED_FIELDS: list[StoredField] = [
    _text("from", lambda c, v: disconnect(c, **{"from": v}), "from_number"),
    _text("to", lambda c, v: disconnect(c, to=v), "to_number"),
    _text("cause", lambda c, v: disconnect(c, cause=v), "cause"),
    _text("tag", lambda c, v: disconnect(c, tag=v), "tag"),
    _text("errorMessage", lambda c, v: disconnect(c, errorMessage=v), "error_message"),
    _text("errorId", lambda c, v: disconnect(c, errorId=v), "error_id"),
    _text("transferCallerId", lambda c, v: _leg(c, transferCallerId=v), "from_number"),
    _text("transferTo", lambda c, v: _leg(c, transferTo=v), "to_number"),
    _text(
        "callerDisplayName", lambda c, v: initiate(c, callerDisplayName=v), "caller_display_name"
    ),
    _text(
        "stirShaken.verstat",
        lambda c, v: initiate(c, stirShaken={"verstat": v, "attestationIndicator": "A"}),
        "verstat",
    ),
    _text(
        "stirShaken.attestationIndicator",
        lambda c, v: initiate(c, stirShaken={"verstat": "x", "attestationIndicator": v}),
        "attestation",
    ),
    _text(
        "machineDetectionResult.value",
        lambda c, v: machine_detection_complete(c, machineDetectionResult={"value": v}),
        "machine_detection",
    ),
    _text(
        "machineDetectionResult.value",
        lambda c, v: answer(c, machineDetectionResult={"value": v, "duration": "PT1S"}),
        "machine_detection",
    ),
    _text("cause", lambda c, v: transfer_complete(c, cause=v), "transfers.cause"),
    _text("transferTo", lambda c, v: transfer_complete(c, transferTo=v), "transfers.transfer_to"),
    _text(
        "transferCallerId",
        lambda c, v: transfer_complete(c, transferCallerId=v),
        "transfers.transfer_caller_id",
    ),
    _text(
        "errorMessage", lambda c, v: transfer_complete(c, errorMessage=v), "transfers.error_message"
    ),
    _text("errorId", lambda c, v: transfer_complete(c, errorId=v), "transfers.error_id"),
    _id("accountId", lambda c, v: disconnect(c, accountId=v, callUrl=...), "account_id"),
    _id("applicationId", lambda c, v: disconnect(c, applicationId=v), "application_id"),
    _id("parentCallId", lambda c, v: transfer_disconnect(v, c), "parent_call_id"),
    _json(
        "diversion",
        lambda c, v: initiate(c, diversion=v),
        json_object_of_size(MAX_JSON_BYTES + 1),
        WIDE,
    ),
    # Two-byte characters, and an oversized key.
    _json("diversion", lambda c, v: initiate(c, diversion=v), {"k" * MAX_JSON_BYTES: 1}, "\u00e9"),
    # Nested deep inside an array.
    _json(
        "sipHeaders",
        lambda c, v: initiate(c, sipHeaders=v),
        {"X-Deep": [{"a": json_object_of_size(MAX_JSON_BYTES)}]},
        WIDE,
    ),
]
STORED_FIELD_IDS = [
    f"{field.body('c-id', 'v')['eventType']} {field.path} {index}"
    for index, field in enumerate(STORED_FIELDS)
]


@pytest.fixture(scope="module", params=BACKENDS)
def shared_tracker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tracker]:
    """One database per backend for the many stored-field cases: each uses call ids of its own."""
    for url in fresh_database(str(request.param), tmp_path_factory.mktemp("stored")):
        with Tracker(url) as tracker:
            tracker.upgrade()
            yield tracker


@pytest.mark.parametrize("field", STORED_FIELDS, ids=STORED_FIELD_IDS)
def test_a_stored_field_at_its_bound_is_applied_and_read_back_equal(
    shared_tracker: Tracker, field: StoredField
) -> None:
    call_id = new_call_id()
    value = field.at_bound()

    result = shared_tracker.apply(json.dumps(field.body(call_id, value), ensure_ascii=False))

    assert result.outcome is Outcome.APPLIED, result.detail
    assert field.read(shared_tracker, call_id) == value


@pytest.mark.parametrize("field", STORED_FIELDS, ids=STORED_FIELD_IDS)
def test_a_stored_field_over_its_bound_is_invalid_logged_and_stored_nowhere(
    shared_tracker: Tracker, field: StoredField
) -> None:
    call_id = new_call_id()
    body = json.dumps(field.body(call_id, field.over()), ensure_ascii=False).encode()
    calls_before = len(shared_tracker.calls())

    result = shared_tracker.apply(body)

    assert (result.outcome, result.reason) == (Outcome.INVALID, InvalidReason.INVALID_FIELD)
    assert f"field '{field.path}'" in result.detail and field.bound in result.detail
    assert result.call_id == call_id
    (entry,) = shared_tracker.events(call_id=call_id)
    assert (entry.outcome, entry.reason, entry.body) == (Outcome.INVALID, result.reason, body)
    assert shared_tracker.get_call(call_id) is None
    assert len(shared_tracker.calls()) == calls_before


def test_a_call_id_at_its_bound_is_applied_and_read_back_equal(shared_tracker: Tracker) -> None:
    call_id = WIDE * (MAX_ID_LENGTH - 2) + "-c"
    result = shared_tracker.apply(json.dumps(disconnect(call_id, callUrl=...), ensure_ascii=False))
    assert result.outcome is Outcome.APPLIED, result.detail
    call = shared_tracker.get_call(call_id)
    assert call is not None and call.call_id == call_id


# Columns a body does not feed directly: the tracker's own JSON, and ids copied from a stored id.
_NOT_FROM_A_BODY = {"sources", "history", "numbers_leg_id"}


def test_every_column_a_body_feeds_has_a_bound_test() -> None:
    """A text, JSON or id column added to the calls or the transfers gets a case above, so
    that its bound is checked in parsing and proven to fit on every backend."""
    from sqlalchemy import String, Text

    from tracker.storage import JSONText, calls, transfers

    fed = {
        f"{table.name}.{column.name}"
        for table in (calls, transfers)
        for column in table.c
        if isinstance(column.type, Text | JSONText)
        or (isinstance(column.type, String) and column.type.length == MAX_ID_LENGTH)
    }
    fed -= {f"tracker_calls.{name}" for name in _NOT_FROM_A_BODY}
    fed -= {"tracker_calls.call_id", "tracker_transfers.call_id"}  # the call-id test above
    covered = {field.column for field in STORED_FIELDS}
    assert fed - covered == set()
