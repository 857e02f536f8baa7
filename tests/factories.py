"""Small factories for callback bodies: each test states only what it is about."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

_serial = itertools.count(1)

ACCOUNT = "55555555"
APPLICATION = "7fc9698a-b04a-468b-9e8f-91238c0d0086"
BASE_TIME = datetime(2026, 6, 10, 19, 15, 0, tzinfo=UTC)


def new_call_id() -> str:
    return f"c-95ac8d6e-{next(_serial):08x}-b38f-4198-93c1-51633ec68f8d"


def stamp(at: datetime) -> str:
    """Bandwidth's spelling: milliseconds, `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def call_url(call_id: str, account: str = ACCOUNT) -> str:
    return f"https://voice.bandwidth.com/api/v2/accounts/{account}/calls/{call_id}"


def disconnect(
    call_id: str | None = None,
    *,
    start: datetime = BASE_TIME,
    ring: float | None = 3.0,
    talk: float = 60.0,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A `disconnect` body. `ring=None` means never answered; extra keyword arguments override
    or add fields (use their Bandwidth spelling); a value of `...` removes the key."""
    answered, end = _times(start, ring, talk, unanswered=20.0)
    return disconnect_between(start, end, call_id, answered=answered, cause=cause, **fields)


def disconnect_between(
    start: datetime,
    end: datetime,
    call_id: str | None = None,
    *,
    answered: datetime | None = None,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """`disconnect` for a call that ran from `start` to `end`, answered at `answered` (None:
    never): for generators that think in instants rather than ring and talk times."""
    call_id = call_id or new_call_id()
    body: dict[str, Any] = {
        "eventType": "disconnect",
        "eventTime": stamp(end + timedelta(milliseconds=10)),
        "accountId": ACCOUNT,
        "applicationId": APPLICATION,
        "from": "+15551112222",
        "to": "+15553334444",
        "direction": "outbound",
        "callId": call_id,
        "callUrl": call_url(call_id),
        "startTime": stamp(start),
        "endTime": stamp(end),
        "cause": cause,
    }
    return _finish(body, answered, fields)


def transfer_disconnect(
    parent_call_id: str,
    call_id: str | None = None,
    *,
    start: datetime = BASE_TIME + timedelta(seconds=10),
    ring: float | None = 2.0,
    talk: float = 30.0,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A `transferDisconnect` body for a leg of `parent_call_id` (no accountId, as documented)."""
    answered, end = _times(start, ring, talk, unanswered=15.0)
    return transfer_disconnect_between(
        parent_call_id, start, end, call_id, answered=answered, cause=cause, **fields
    )


def transfer_disconnect_between(
    parent_call_id: str,
    start: datetime,
    end: datetime,
    call_id: str | None = None,
    *,
    answered: datetime | None = None,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """`transferDisconnect` for a leg that ran from `start` to `end`, answered at `answered`
    (None: never); see `disconnect_between`."""
    call_id = call_id or new_call_id()
    body: dict[str, Any] = {
        "eventType": "transferDisconnect",
        "eventTime": stamp(end + timedelta(milliseconds=10)),
        "from": "+15551112222",
        "to": "+15553334444",
        "direction": "outbound",
        "callId": call_id,
        "parentCallId": parent_call_id,
        "callUrl": call_url(call_id),
        "transferCallerId": "+15551115555",
        "transferTo": "+15556667777",
        "startTime": stamp(start),
        "endTime": stamp(end),
        "cause": cause,
    }
    return _finish(body, answered, fields)


def _times(
    start: datetime, ring: float | None, talk: float, *, unanswered: float
) -> tuple[datetime | None, datetime]:
    """When the call was answered (None: never) and when it ended."""
    if ring is None:
        return None, start + timedelta(seconds=unanswered)
    answered = start + timedelta(seconds=ring)
    return answered, answered + timedelta(seconds=talk)


def _finish(
    body: dict[str, Any], answered: datetime | None, fields: dict[str, Any]
) -> dict[str, Any]:
    if answered is not None:
        body["answerTime"] = stamp(answered)
    for key, value in fields.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


# --- the live callbacks ----------------------------------------------------------------------


def _common(event_type: str, call_id: str, start: datetime, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventType": event_type,
        "eventTime": stamp(start),
        "accountId": ACCOUNT,
        "applicationId": APPLICATION,
        "from": "+15551112222",
        "to": "+15553334444",
        "callId": call_id,
        "callUrl": call_url(call_id),
        "startTime": stamp(start),
    }
    return _finish(body, None, fields)


def initiate(call_id: str, *, start: datetime = BASE_TIME, **fields: Any) -> dict[str, Any]:
    """An `initiate` body: an inbound call ringing, with the caller facts a live capture has."""
    body = _common("initiate", call_id, start, direction="inbound")
    body.update(
        stirShaken={"verstat": "TN-Validation-Passed", "attestationIndicator": "A"},
        callerDisplayName="ALICE EXAMPLE",
        privacy=False,
    )
    return _finish(body, None, fields)


def answer(
    call_id: str, *, start: datetime = BASE_TIME, ring: float = 3.0, **fields: Any
) -> dict[str, Any]:
    """An `answer` body: an outbound call answered `ring` seconds after it started."""
    answered = start + timedelta(seconds=ring)
    body = _common("answer", call_id, start, direction="outbound", eventTime=stamp(answered))
    return _finish(body, answered, fields)


def transfer_answer(
    parent_call_id: str | None,
    call_id: str,
    *,
    start: datetime = BASE_TIME + timedelta(seconds=10),
    ring: float = 2.0,
    **fields: Any,
) -> dict[str, Any]:
    """A `transferAnswer` body; `parent_call_id=None` leaves the key out, as the SDK does."""
    answered = start + timedelta(seconds=ring)
    body = _common(
        "transferAnswer",
        call_id,
        start,
        direction="outbound",
        eventTime=stamp(answered),
        transferCallerId="+15551115555",
        transferTo="+15556667777",
    )
    if parent_call_id is not None:
        body["parentCallId"] = parent_call_id
    return _finish(body, answered, fields)


def transfer_complete(
    call_id: str,
    *,
    start: datetime = BASE_TIME,
    at: datetime = BASE_TIME + timedelta(seconds=40),
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A `transferComplete` body on the original call: one transfer attempt ended."""
    body = _common(
        "transferComplete",
        call_id,
        start,
        eventTime=stamp(at),
        transferCallerId="+15551115555",
        transferTo="+15556667777",
        cause=cause,
    )
    if cause == "busy":
        body.update(errorMessage="Callee is busy", errorId="4642074b-7b58-478b-96e4-3a60955c6765")
    return _finish(body, None, fields)


def machine_detection_complete(
    call_id: str, *, start: datetime = BASE_TIME, result: str = "human", **fields: Any
) -> dict[str, Any]:
    """A `machineDetectionComplete` body with its result."""
    body = _common(
        "machineDetectionComplete",
        call_id,
        start,
        direction="outbound",
        eventTime=stamp(start + timedelta(seconds=8)),
        machineDetectionResult={"value": result, "duration": "PT4.5S"},
    )
    return _finish(body, None, fields)


def live_events_of(terminal: dict[str, Any], *, legs: int = 0) -> list[dict[str, Any]]:
    """The live callbacks Bandwidth sends before a terminal body, agreeing with it: an
    outbound call's `answer` and machine detection, an inbound call's `initiate`, a leg's
    `transferAnswer`, and for a call with `legs` one `transferComplete` per transfer."""
    shared: dict[str, Any] = {
        key: terminal[key]
        for key in ("accountId", "applicationId", "from", "to", "callUrl", "startTime")
        if key in terminal
    }
    call_id, answered = terminal["callId"], terminal.get("answerTime")
    found: list[dict[str, Any]] = []
    if terminal["eventType"] == "transferDisconnect":
        if answered is not None:
            found.append(
                {
                    **shared,
                    "eventType": "transferAnswer",
                    "eventTime": answered,
                    "direction": "outbound",
                    "callId": call_id,
                    "parentCallId": terminal["parentCallId"],
                    "answerTime": answered,
                    "transferCallerId": terminal.get("transferCallerId"),
                    "transferTo": terminal.get("transferTo"),
                }
            )
        return found
    direction = terminal.get("direction")
    if direction == "inbound":
        found.append({**shared, "eventType": "initiate", "direction": direction, "callId": call_id})
    elif answered is not None:
        found.append(
            {
                **shared,
                "eventType": "answer",
                "eventTime": answered,
                "direction": direction,
                "callId": call_id,
                "answerTime": answered,
            }
        )
        found.append(
            {
                **shared,
                "eventType": "machineDetectionComplete",
                "eventTime": answered,
                "callId": call_id,
                "machineDetectionResult": {"value": "human", "duration": "PT2.1S"},
            }
        )
    for number in range(legs if answered is not None else 0):
        found.append(
            {
                **shared,
                "eventType": "transferComplete",
                "eventTime": stamp(BASE_TIME + timedelta(hours=1, seconds=number)),
                "callId": call_id,
                "answerTime": answered,
                "transferTo": f"+1555000{number:04d}",
                "cause": "hangup" if number == 0 else "busy",
            }
        )
    return [{key: value for key, value in body.items() if value is not None} for body in found]
