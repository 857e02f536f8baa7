"""Bandwidth callback bodies, one at a time: the builders behind `tracker.testing`.

Each builder returns a new `dict` in Bandwidth's spelling (camelCase keys, instants stamped with
milliseconds and `Z`, keys in the order Bandwidth writes them), valid for the tracker, with
defaults for everything a test is not about. Extra keyword arguments override or add fields in
Bandwidth's spelling (`accountId=...`, `**{"from": ...}`); a value of `...` removes the key.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

ACCOUNT: Final = "55555555"
"""The account every builder uses unless told otherwise."""
APPLICATION: Final = "7fc9698a-b04a-468b-9e8f-91238c0d0086"
"""The application every builder uses unless told otherwise."""
BASE_TIME: Final = datetime(2026, 6, 10, 19, 15, 0, tzinfo=UTC)
"""When a built call starts unless told otherwise."""
CALLER: Final = "+15551112222"
"""The `from` of a built call unless told otherwise."""
CALLED: Final = "+15553334444"
"""The `to` of a built call unless told otherwise."""
TRANSFER_CALLER_ID: Final = "+15551115555"
"""The `transferCallerId` of a built transfer leg unless told otherwise."""
TRANSFER_TO: Final = "+15556667777"
"""The `transferTo` of a built transfer leg unless told otherwise."""

_serial = itertools.count(1)


def new_call_id() -> str:
    """A call id in Bandwidth's shape (`c-<8 hex>-<uuid>`), different on every call in a
    process, so tests never meet each other's calls."""
    return f"c-95ac8d6e-{next(_serial):08x}-b38f-4198-93c1-51633ec68f8d"


def stamp(at: datetime) -> str:
    """`at` as Bandwidth spells an instant: UTC, milliseconds, `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def call_url(call_id: str, account: str = ACCOUNT) -> str:
    """The `callUrl` Bandwidth sends for `call_id` of `account`."""
    return f"https://voice.bandwidth.com/api/v2/accounts/{account}/calls/{call_id}"


def encode(body: Mapping[str, Any]) -> bytes:
    """`body` as Bandwidth sends it: compact JSON, UTF-8."""
    return json.dumps(body, separators=(",", ":")).encode()


# --- the terminal callbacks -------------------------------------------------------------------


def disconnect(
    call_id: str | None = None,
    *,
    start: datetime = BASE_TIME,
    ring: float | None = 3.0,
    talk: float = 60.0,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A `disconnect` body: an original (outbound) call that rang `ring` seconds and talked
    `talk` seconds; `ring=None` means never answered (it ends 20 seconds after `start`)."""
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
    """A `disconnect` body for a call that ran from `start` to `end`, answered at `answered`
    (None: never): for callers that think in instants rather than in ring and talk times."""
    call_id = call_id or new_call_id()
    body: dict[str, Any] = {
        "eventType": "disconnect",
        "eventTime": stamp(end + timedelta(milliseconds=10)),
        "accountId": ACCOUNT,
        "applicationId": APPLICATION,
        "from": CALLER,
        "to": CALLED,
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
    """A `transferDisconnect` body for a leg of `parent_call_id`, without `accountId` as
    Bandwidth's documentation shows it; `ring=None` means never answered."""
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
    """A `transferDisconnect` body for a leg that ran from `start` to `end`, answered at
    `answered` (None: never)."""
    call_id = call_id or new_call_id()
    body: dict[str, Any] = {
        "eventType": "transferDisconnect",
        "eventTime": stamp(end + timedelta(milliseconds=10)),
        "from": CALLER,
        "to": CALLED,
        "direction": "outbound",
        "callId": call_id,
        "parentCallId": parent_call_id,
        "callUrl": call_url(call_id),
        "transferCallerId": TRANSFER_CALLER_ID,
        "transferTo": TRANSFER_TO,
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
    body: dict[str, Any], answered: datetime | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    if answered is not None:
        body["answerTime"] = stamp(answered)
    for key, value in fields.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


# --- the live callbacks -----------------------------------------------------------------------


def _common(event_type: str, call_id: str, start: datetime, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventType": event_type,
        "eventTime": stamp(start),
        "accountId": ACCOUNT,
        "applicationId": APPLICATION,
        "from": CALLER,
        "to": CALLED,
        "callId": call_id,
        "callUrl": call_url(call_id),
        "startTime": stamp(start),
    }
    return _finish(body, None, fields)


def initiate(call_id: str, *, start: datetime = BASE_TIME, **fields: Any) -> dict[str, Any]:
    """An `initiate` body: an inbound call ringing, with the caller facts a live capture has
    (STIR/SHAKEN attestation `A`, verstat, caller display name)."""
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
    """A `transferAnswer` body: a leg of `parent_call_id` answered `ring` seconds after it
    started; `parent_call_id=None` leaves the key out, as Bandwidth's SDK model does."""
    answered = start + timedelta(seconds=ring)
    body = _common(
        "transferAnswer",
        call_id,
        start,
        direction="outbound",
        eventTime=stamp(answered),
        transferCallerId=TRANSFER_CALLER_ID,
        transferTo=TRANSFER_TO,
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
    """A `transferComplete` body on the original call `call_id`: one transfer attempt ended at
    `at` with `cause` (`busy` brings Bandwidth's error message and id). It never ends the call."""
    body = _common(
        "transferComplete",
        call_id,
        start,
        eventTime=stamp(at),
        transferCallerId=TRANSFER_CALLER_ID,
        transferTo=TRANSFER_TO,
        cause=cause,
    )
    if cause == "busy":
        body.update(errorMessage="Callee is busy", errorId="4642074b-7b58-478b-96e4-3a60955c6765")
    return _finish(body, None, fields)


def machine_detection_complete(
    call_id: str, *, start: datetime = BASE_TIME, result: str = "human", **fields: Any
) -> dict[str, Any]:
    """A `machineDetectionComplete` body: the answering-machine detection of an outbound call
    ended with `result` (`human`, `answering-machine`, `silence`, `timeout`, ...)."""
    body = _common(
        "machineDetectionComplete",
        call_id,
        start,
        direction="outbound",
        eventTime=stamp(start + timedelta(seconds=8)),
        machineDetectionResult={"value": result, "duration": "PT4.5S"},
    )
    return _finish(body, None, fields)


def untracked(
    call_id: str, *, event_type: str = "dtmf", start: datetime = BASE_TIME, **fields: Any
) -> dict[str, Any]:
    """A callback of a type the tracker does not track (a `dtmf` digit by default): the
    tracker logs it as `ignored` (`untracked_event_type`)."""
    body = _common(event_type, call_id, start, direction="inbound")
    if event_type == "dtmf":
        body.update(digit="5")
    return _finish(body, None, fields)


def live_events_of(terminal: Mapping[str, Any], *, legs: int = 0) -> list[dict[str, Any]]:
    """The live callbacks Bandwidth sends before the terminal body `terminal`, agreeing with it:
    an outbound call's `answer` and machine detection, an inbound call's `initiate`, a leg's
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
