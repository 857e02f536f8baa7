"""Bodies written by Bandwidth's own Python SDK (`bandwidth-sdk`) read as the same facts.

The SDK's models mark every field optional, write `null` for every absent key when a body goes
through `to_dict()`, and `TransferAnswerCallback` has no `parentCallId` (its `model_validate`
drops the key)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from bandwidth.models import (
    AnswerCallback,
    DisconnectCallback,
    InitiateCallback,
    MachineDetectionCompleteCallback,
    TransferAnswerCallback,
    TransferCompleteCallback,
    TransferDisconnectCallback,
)

from tracker import Outcome, Tracker
from tracker.parsing import Unreadable, content_key, read
from tracker.testing import (
    answer,
    disconnect,
    initiate,
    machine_detection_complete,
    new_call_id,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
)

CASES: list[tuple[Any, Any]] = [
    (InitiateCallback, lambda: initiate(new_call_id())),
    (AnswerCallback, lambda: answer(new_call_id())),
    (TransferAnswerCallback, lambda: transfer_answer(new_call_id(), new_call_id())),
    (TransferCompleteCallback, lambda: transfer_complete(new_call_id(), cause="busy")),
    (MachineDetectionCompleteCallback, lambda: machine_detection_complete(new_call_id())),
    (DisconnectCallback, lambda: disconnect(new_call_id(), cause="busy", ring=None)),
    (TransferDisconnectCallback, lambda: transfer_disconnect(new_call_id(), new_call_id())),
]


def sdk_json(model: Any) -> str:
    """What a backend that re-sends an SDK model writes: `to_dict()` as JSON."""
    return json.dumps(
        model.to_dict(),
        default=lambda value: value.isoformat() if isinstance(value, datetime) else value,
    )


@pytest.mark.parametrize(("model", "make"), CASES, ids=[model.__name__ for model, _ in CASES])
def test_a_body_the_sdk_rewrote_is_the_same_delivery(model: Any, make: Any) -> None:
    """Most models spell absent keys as explicit nulls, instants as `+00:00` with microseconds,
    and keep unknown keys aside: none of it changes the delivery."""
    body = make()
    rewritten = sdk_json(model.from_dict(body))
    ours, theirs = read(json.dumps(body)).content, read(rewritten).content
    assert not isinstance(ours, Unreadable) and not isinstance(theirs, Unreadable)
    assert type(theirs) is type(ours)
    assert content_key(theirs) == content_key(ours)


def test_a_leg_answered_through_the_sdk_model_is_linked_by_its_transfer_disconnect(
    sqlite_tracker: Tracker, tmp_path: Any
) -> None:
    parent_id, leg_id = new_call_id(), new_call_id()
    answered = transfer_answer(parent_id, leg_id)
    ended = transfer_disconnect(parent_id, leg_id, ring=2.0)
    dropped = TransferAnswerCallback.model_validate(answered).model_dump_json(by_alias=True)
    assert "parentCallId" not in dropped

    outcomes = [sqlite_tracker.apply(body).outcome for body in (dropped, ended)]

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    with Tracker(f"sqlite:///{tmp_path / 'documented.db'}") as documented:
        documented.upgrade()
        for body in (answered, ended):
            documented.apply(body)
        expected = documented.get_call(leg_id)
    found = sqlite_tracker.get_call(leg_id)
    assert found is not None and expected is not None
    assert (found.parent_call_id, found.state, found.answer_time, found.end_time) == (
        expected.parent_call_id,
        expected.state,
        expected.answer_time,
        expected.end_time,
    )
    assert [(s.source, s.target, s.at, s.event) for s in found.history] == [
        (s.source, s.target, s.at, s.event) for s in expected.history
    ]
