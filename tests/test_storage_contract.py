"""The storage promises, on every backend: what `apply` returns is what was stored."""

from __future__ import annotations

import json

from tests.factories import disconnect, transfer_disconnect
from tracker import Outcome, Tracker


def test_applied_call_reads_back_with_every_fact(tracker: Tracker) -> None:
    body = disconnect(tag="vip", errorMessage="", enqueuedTime="2026-06-10T19:14:59.5Z")
    result = tracker.apply(json.dumps(body))
    assert result.outcome is Outcome.APPLIED
    call = tracker.get_call(body["callId"])
    assert call is not None
    assert call.state == "disconnected"
    assert call.tag == "vip"
    assert call.error_message == ""
    assert call.enqueued_time is not None and call.enqueued_time.microsecond == 500000
    assert [(step.source, step.target) for step in call.history] == [
        ("initiated", "answered"),
        ("answered", "disconnected"),
    ]


def test_leg_links_to_placeholder_parent(tracker: Tracker) -> None:
    leg = transfer_disconnect("c-parent")
    assert tracker.apply(leg).outcome is Outcome.APPLIED
    parent = tracker.get_call("c-parent")
    assert parent is not None
    assert parent.legs == (leg["callId"],)
    assert parent.state == "initiated"
